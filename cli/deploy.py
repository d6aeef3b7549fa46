"""``lmul-onnx library-path`` and ``lmul-onnx doctor``: the native library for other hosts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from lmul_onnx.cli.common import JSON_HELP, check_outputs, emit_json


def _library_path() -> str:
    from lmul_onnx.runtime import LibraryNotFoundError, get_library_path

    try:
        return get_library_path()
    except LibraryNotFoundError as error:
        raise click.ClickException(str(error)) from None


@click.command("library-path")
def library_path_command() -> None:
    """Print the path of the custom-op library (for scripts and build systems).

    \b
    Register it in any onnxruntime host, e.g. C++:
      session_options.RegisterCustomOpsLibrary("$(lmul-onnx library-path)");
    """
    click.echo(_library_path())


def _physical_cores(cpus: set[int]) -> int | None:
    """Distinct physical cores among the CPUs this process may use (Linux sysfs)."""
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            return None
    return len(cores) or None


def _self_test() -> str:
    """Run one LMul node through onnxruntime with the library: SPEC's 1.5 x 1.5 = 2.125."""
    import numpy as np

    from lmul_onnx.runtime import InferenceSession
    from lmul_onnx.testing import single_op_model

    try:
        session = InferenceSession(single_op_model("LMul", [np.float32] * 2).SerializeToString())
        (out,) = session.run(None, {"in0": np.float32([1.5]), "in1": np.float32([1.5])})
    except Exception as error:
        return f"failed: {str(error).strip().splitlines()[0]}"
    return "ok" if out[0] == np.float32(2.125) else f"failed: LMul(1.5, 1.5) gave {out[0]}, expected 2.125"


_THREADS = "onnxruntime's default: one per physical core; set intra_op_num_threads to change"
_ENVIRONMENT = ("LMUL_ONNX_LIBRARY", "LMUL_SIMD")


def _portable_check() -> str:
    """Whether this onnxruntime runs portable models alone (it needs BitCast, opset 26)."""
    import numpy as np
    import onnxruntime

    from lmul_onnx.portable import PortableError, add_portable_functions
    from lmul_onnx.testing import single_op_model

    try:
        model, _ = add_portable_functions(single_op_model("LMul", [np.float32] * 2))
    except PortableError as error:
        return f"no: {error}"
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {"in0": np.float32([1.5]), "in1": np.float32([1.5])})
    except Exception:
        return "no: this onnxruntime lacks BitCast (opset 26); portable models need onnxruntime >= 1.30"
    return "ok" if out[0] == np.float32(2.125) else f"failed: LMul(1.5, 1.5) gave {out[0]}, expected 2.125"


def doctor_report() -> dict[str, Any]:
    """Everything a bug report about running the library needs."""
    import onnxruntime

    import lmul_onnx
    from lmul_onnx.runtime import cpu_name, library_api_version, simd_level

    path = _library_path()
    runtime_api = int(onnxruntime.__version__.split(".")[1])  # onnxruntime 1.N offers C API N
    needed = library_api_version()
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    return {
        "lmul_onnx": lmul_onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_c_api": runtime_api,
        "library": path,
        "library_c_api": needed,
        "compatible": runtime_api >= needed,
        "simd": simd_level(),
        "cpu": cpu_name(),
        "cpus_available": len(cpus),
        "physical_cores": _physical_cores(set(cpus)),
        "intra_op_threads": _THREADS,
        "environment": {name: os.environ[name] for name in _ENVIRONMENT if name in os.environ},
        "self_test": _self_test(),
        "portable_models": _portable_check(),
    }


@click.command("doctor")
@click.option("--json", "json_path", metavar="PATH", help=JSON_HELP)
def doctor_command(json_path: str | None) -> None:
    """Print what a bug report needs: onnxruntime and C API versions, the library's path,
    the kernels' SIMD level on this CPU, threads, a one-node self-test, and whether this
    onnxruntime runs portable models without the library.

    Exit status 1 when the library is missing, needs a newer onnxruntime or fails its test.
    """
    check_outputs(("--json", json_path))
    report = doctor_report()
    if json_path:
        emit_json(json_path, report)
    if json_path != "-":
        rows = [
            ("lmul-onnx", report["lmul_onnx"]),
            ("onnxruntime", f"{report['onnxruntime']} (C API {report['onnxruntime_c_api']})"),
            ("library", report["library"]),
            (
                "needs",
                f"C API {report['library_c_api']} (onnxruntime >= 1.{report['library_c_api']}): "
                + ("ok" if report["compatible"] else "this onnxruntime is too old"),
            ),
            ("simd", report["simd"]),
            ("cpu", report["cpu"]),
            ("cpus", f"{report['cpus_available']} available, {report['physical_cores'] or '?'} physical"),
            ("threads", report["intra_op_threads"]),
            *((name, value) for name, value in report["environment"].items()),
            ("self-test", report["self_test"]),
            ("portable", report["portable_models"]),
        ]
        for name, value in rows:
            click.echo(f"{name:<13} {value}")
    if not report["compatible"] or report["self_test"] != "ok":
        raise SystemExit(1)
