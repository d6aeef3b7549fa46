"""``lmul-onnx tune``: the most energy-saving conversion that keeps the model within a budget."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lmul_onnx.choices import Scope
from lmul_onnx.cli.common import (
    JSON_HELP,
    InputError,
    ProgressBar,
    check_outputs,
    emit_json,
    generated_input_options,
    is_tty,
    parse_generation_bindings,
    parse_tolerances,
    split_names,
)
from lmul_onnx.ops import SUPPORTED_OPS

if TYPE_CHECKING:
    from lmul_onnx.tune import TuneResult


def _widths(text: str) -> tuple[int | None, ...]:
    """``--mantissa-bits 3,4,7,23`` (``full``: the type's own width)."""
    widths: list[int | None] = []
    for item in (part.strip() for part in text.split(",")):
        if item in ("full", ""):
            widths.append(None)
            continue
        try:
            bits = int(item)
        except ValueError:
            raise InputError(f"--mantissa-bits {text!r}: {item!r} is not an integer") from None
        if not 1 <= bits <= 23:
            raise InputError(f"--mantissa-bits {text!r}: {bits} is outside 1..23")
        widths.append(bits)
    return tuple(dict.fromkeys(widths))


class _ProgressBar:
    """``sensitivity [#####.....] 12/32  ETA 0:14`` on stderr (a :class:`ProgressBar` per phase)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.phase = ""
        self.started = time.monotonic()
        self.bar = ProgressBar()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if phase != self.phase:
            if self.phase:
                click.echo("", err=True)
            self.phase, self.started = phase, now
        if not self.bar.due(done, total):
            return
        eta = "--:--"
        if done and total:
            remaining = (now - self.started) / done * (total - done)
            eta = f"{int(remaining) // 60}:{int(remaining) % 60:02d}"
        click.echo(f"\r{phase:<12} {self.bar.draw(done, total)}  ETA {eta}  ", err=True, nl=False)

    def close(self) -> None:
        if self.enabled and self.phase:
            click.echo("", err=True)


def _plot(result: TuneResult, path: Path) -> None:
    """Energy saved against drift along the search, the chosen point marked (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib (pip install matplotlib)") from None
    figure, axis = plt.subplots(figsize=(6, 4))
    steps = [s for s in result.trace if s.get("nsr") is not None]
    axis.scatter(
        [s["nsr"] for s in steps],
        [s["saved_percent"] for s in steps],
        c=["tab:green" if s["passed"] else "tab:red" for s in steps],
        s=14,
        label="verified variants (green: within budget)",
    )
    drift = result.measurement.summary()
    axis.scatter(
        [drift["nsr"]], [result.energy["saved_percent"]], marker="*", s=160, c="black", label="chosen"
    )
    axis.set_xscale("symlog", linthresh=1e-6)
    axis.set_xlabel("drift: noise-to-signal ratio of the worst output")
    axis.set_ylabel("multiplication energy saved (%)")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


@click.command("tune")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Converted model. Default: <input stem>.lmul.onnx beside the input.",
)
@click.option(
    "--plan-out", type=click.Path(dir_okay=False, path_type=Path), help="Write the plan (JSON) here."
)
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing output model (and its .data file) or plan."
)
@click.option("--min-cosine", type=float, default=None, help="Budget: every output's cosine to the original.")
@click.option("--min-snr", type=float, default=None, help="Budget: every output's SNR in dB.")
@click.option("--atol", multiple=True, metavar="[NAME:]X", help="Budget: absolute tolerance, as in validate.")
@click.option("--rtol", multiple=True, metavar="[NAME:]X", help="Budget: relative tolerance, as in validate.")
@click.option(
    "--metric",
    metavar="MODULE:FUNCTION",
    help="Budget: f(original, converted, inputs) -> loss, lists of {name: array} per sample "
    "(MODULE may be a file.py).",
)
@click.option("--max-loss", type=float, default=None, help="Budget: the largest loss --metric may return.")
@click.option(
    "--inputs", type=click.Path(dir_okay=False, path_type=Path), help="An .npz of inputs, as in validate."
)
@generated_input_options()
@click.option(
    "--mantissa-bits",
    default="full",
    show_default=True,
    help="Widths m to try per node, e.g. 3,4,7,23 ('full': the type's own width).",
)
@click.option(
    "--offsets",
    default="paper",
    show_default=True,
    help="Offsets to try per node, e.g. paper,unbiased (as convert --offset takes them).",
)
@click.option("--ops", default=",".join(SUPPORTED_OPS), show_default=True, help="Op types to consider.")
@click.option(
    "--scope",
    type=click.Choice([s.value for s in Scope]),
    default="all",
    show_default=True,
    help="As in convert.",
)
@click.option("--include", multiple=True, metavar="REGEX", help="Only consider matching nodes (repeatable).")
@click.option("--exclude", multiple=True, metavar="REGEX", help="Never convert matching nodes (repeatable).")
@click.option(
    "--every-product", is_flag=True, help="Also consider products by exact powers of two / 0-1 masks."
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes for the per-node runs [default: the core count].",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads per session.")
@click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), help="Plot the search (needs matplotlib)."
)
@click.option("--json", "json_path", metavar="PATH", help=JSON_HELP)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def tune_command(
    model: Path,
    output: Path | None,
    plan_out: Path | None,
    overwrite: bool,
    min_cosine: float | None,
    min_snr: float | None,
    atol: tuple[str, ...],
    rtol: tuple[str, ...],
    metric: str | None,
    max_loss: float | None,
    inputs: Path | None,
    samples: int,
    seed: int,
    dim: tuple[str, ...],
    input_range: tuple[str, ...],
    mantissa_bits: str,
    offsets: str,
    ops: str,
    scope: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    every_product: bool,
    jobs: int | None,
    threads: int | None,
    plot: Path | None,
    json_path: str | None,
    quiet: bool,
) -> None:
    """Convert as many products of MODEL to L-Mul as its quality budget allows.

    Products by exact powers of two / 0-1 masks stay exact (rule); every other candidate
    is converted alone and measured; nodes are then chosen by energy gain per unit of
    drift, verified on the whole model and backed off by bisection until the budget holds.
    Writes the converted model and (--plan-out) a plan that 'lmul-onnx convert --plan'
    re-applies. Exit status: 0 within budget, 2 for bad input or an unreachable budget.
    """
    atol_default, atol_per_output = parse_tolerances("--atol", atol, None)  # type: ignore[arg-type]
    rtol_default, rtol_per_output = parse_tolerances("--rtol", rtol, None)  # type: ignore[arg-type]
    dims, ranges = parse_generation_bindings(dim, input_range)
    check_outputs(("--json", json_path), reads=(model, inputs, output, plan_out))
    as_json = json_path == "-"
    from lmul_onnx.convert import ModelLoadError, default_output_path
    from lmul_onnx.energy import EnergyError
    from lmul_onnx.inputs import InputError as ModelInputError
    from lmul_onnx.tune import Budget, TuneError, tune

    widths = _widths(mantissa_bits)
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib (pip install matplotlib)") from None
    target = output if output is not None else default_output_path(model)
    if target.resolve() == model.resolve():
        raise InputError(f"refusing to write over the input model {model}")
    bar = _ProgressBar(is_tty() and not quiet and not as_json)
    try:
        budget = Budget(
            min_cosine=min_cosine,
            min_snr_db=min_snr,
            atol=atol_default,
            rtol=rtol_default,
            atol_per_output=tuple(atol_per_output.items()),
            rtol_per_output=tuple(rtol_per_output.items()),
            metric=metric,
            max_loss=max_loss,
        )
        result = tune(
            model,
            target,
            budget=budget,
            plan_path=plan_out,
            inputs=inputs,
            samples=samples,
            seed=seed,
            dims=dims,
            input_ranges=ranges,
            mantissa_bits=widths,
            offsets=[o.strip() for o in offsets.split(",") if o.strip()],
            op_types=tuple(split_names([ops])),
            scope=scope,
            nodes_to_include=include,
            nodes_to_exclude=exclude,
            every_product=every_product,
            jobs=jobs or os.cpu_count() or 1,
            threads=threads,
            progress=bar,
            overwrite=overwrite,
        )
    except (TuneError, ModelLoadError, ModelInputError, EnergyError, ValueError) as error:
        bar.close()
        raise InputError(str(error)) from None
    bar.close()
    if plot is not None:
        _plot(result, plot)
    if json_path is not None:
        emit_json(json_path, result.to_dict())
    if not as_json:
        click.echo(result.format_table())
        click.echo(f"wrote {result.output_path}" + (f" and the plan {plan_out}" if plan_out else ""))
    sys.exit(0 if result.passed else 1)
