"""``lmul-onnx convert``: rewrite a model's products into L-Mul ops."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from lmul_onnx.choices import Scope
from lmul_onnx.cli.common import (
    JSON_HELP,
    InputError,
    check_outputs,
    emit_json,
    generated_input_options,
    integer,
    is_tty,
    parse_bindings,
    parse_generation_bindings,
    quiet_libraries,
    split_names,
    status,
)
from lmul_onnx.ops import SUPPORTED_OPS

# Embedded weights from this size on get convert's memory hint (below that, onnxruntime's
# extra copy is small next to the ~66 MiB a session adds anyway).
EMBEDDED_WEIGHTS_HINT_BYTES = 16 << 20

_SELECTION_OPTIONS = (
    "ops",
    "scope",
    "include",
    "exclude",
    "mantissa_bits",
    "mantissa_bits_for",
    "offset",
    "offset_for",
    "every_product",
)


@click.command()
@click.argument("input_model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output model. Default: <input stem>.lmul.onnx beside the input.",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing output file (and its <output>.data file)."
)
@click.option(
    "--external-data",
    is_flag=True,
    help="Write the weights to <output>.data even when the input embeds them "
    "(less resident memory when run: onnxruntime memory-maps them).",
)
@click.option(
    "--ops",
    multiple=True,
    metavar="OP[,OP]",
    help=f"Op types to rewrite (repeatable) [default: {','.join(SUPPORTED_OPS)}].",
)
@click.option(
    "--scope",
    type=click.Choice([s.value for s in Scope]),
    default="all",
    show_default=True,
    help="all; attention = products of two activations (Q·Kᵀ, probabilities·V); "
    "weights = products with a constant operand.",
)
@click.option(
    "--include", multiple=True, metavar="REGEX", help="Only convert nodes whose name matches (repeatable)."
)
@click.option(
    "--exclude", multiple=True, metavar="REGEX", help="Never convert nodes whose name matches (repeatable)."
)
@click.option(
    "--mantissa-bits",
    type=click.IntRange(1, 23),
    default=None,
    help="Operand mantissa width m for every converted node [default: the tensor type's own width].",
)
@click.option(
    "--mantissa-bits-for",
    multiple=True,
    metavar="REGEX=N",
    help="Per-node mantissa width; the first matching REGEX wins (repeatable).",
)
@click.option(
    "--offset",
    default="paper",
    show_default=True,
    metavar="paper|unbiased|auto|VALUE",
    help="SPEC §4 offset of every converted node: paper (no attribute, the paper's 2^-l(m)); "
    "unbiased (a constant per m that zeroes the mean product error of N(0,1)-like operands); "
    "auto (per node, zeroing the mean error of its own products on calibration data); "
    "an integer 0..8388607 (the attribute) or a fraction in [0, 1) such as 0.0625.",
)
@click.option(
    "--offset-for",
    multiple=True,
    metavar="REGEX=CHOICE",
    help="Per-node offset (paper|unbiased|auto|VALUE); the first matching REGEX wins (repeatable).",
)
@click.option(
    "--calibration",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Inputs for --offset auto: an .npz keyed by input name (or I/NAME for several samples) "
    "[default: generated as validate generates them].",
)
@generated_input_options(
    purpose="calibration ",
    ignored_with="--calibration; used by --offset auto",
    dim_help="Bind a symbolic input dimension, for the energy estimate and generated calibration "
    "inputs (repeatable).",
)
@click.option(
    "--portable",
    is_flag=True,
    help="Also write each lmul op's body in standard ONNX ops (opset 26), so that onnxruntime >= 1.30 "
    "runs the model without the custom-op library.",
)
@click.option(
    "--every-product",
    is_flag=True,
    help="Also convert products whose constant operand is exactly 0, ±2^k or a 0/1 mask "
    "(the paper's 'every multiplication'; by default they stay exact: L-Mul only adds error there).",
)
@click.option(
    "--fold-pad/--no-fold-pad",
    default=False,
    show_default=True,
    help="Fold zero Pad nodes into the pads of the LMulConv nodes they feed and remove them (same "
    "outputs, faster: onnxruntime fuses Pad only into its own Conv; off by default because SPEC §3 "
    "keeps every node of the exported graph).",
)
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Apply a plan written by 'lmul-onnx tune --plan-out' (replaces the selection options).",
)
@click.option("--dry-run", is_flag=True, help="List what would change; write nothing.")
@click.option("--json", "json_path", metavar="PATH", help=JSON_HELP)
@click.option("-q", "--quiet", is_flag=True, help="No progress messages, no library warnings.")
def convert(
    input_model: Path,
    output: Path | None,
    overwrite: bool,
    external_data: bool,
    ops: tuple[str, ...],
    scope: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    mantissa_bits: int | None,
    mantissa_bits_for: tuple[str, ...],
    offset: str,
    offset_for: tuple[str, ...],
    calibration: Path | None,
    samples: int,
    seed: int,
    input_range: tuple[str, ...],
    dim: tuple[str, ...],
    portable: bool,
    every_product: bool,
    fold_pad: bool,
    plan_path: Path | None,
    dry_run: bool,
    json_path: str | None,
    quiet: bool,
) -> None:
    """Rewrite MatMul/Gemm/Mul/Conv/ConvTranspose nodes of INPUT_MODEL into the `lmul` op domain.

    Only float32/float16/bfloat16 nodes are rewritten; node names, inputs, outputs,
    initializers, metadata, IR and opset versions stay as exported (with --fold-pad, zero Pad
    nodes that feed only converted Convs are folded into their pads and removed). Subgraphs
    (If/Loop/Scan) and model-local functions are walked. Converting twice changes
    nothing. The output is never the input or a file it reads; an existing output is
    replaced only with --overwrite; every file written is named.
    """
    overrides = tuple(parse_bindings("--mantissa-bits-for", mantissa_bits_for, integer).items())
    offset_overrides = tuple(parse_bindings("--offset-for", offset_for, str).items())
    dims, ranges = parse_generation_bindings(dim, input_range)
    check_outputs(("--json", json_path), reads=(input_model, output, plan_path, calibration))
    quiet = quiet or json_path == "-"
    if quiet:
        quiet_libraries()
    selection_given = [
        f"--{name.replace('_', '-')}"
        for name in _SELECTION_OPTIONS
        if click.get_current_context().get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    ]
    if plan_path is not None and selection_given:
        raise InputError(f"--plan replaces the selection options; drop {', '.join(selection_given)}")

    from lmul_onnx.calibration import CalibrationOptions
    from lmul_onnx.convert import ModelLoadError, convert_file
    from lmul_onnx.output_paths import OutputPathError
    from lmul_onnx.passes.offsets import OffsetOptions
    from lmul_onnx.passes.selection import SelectionOptions
    from lmul_onnx.plan import PlanError, load_plan

    calibration_options = CalibrationOptions(
        inputs=calibration, samples=samples, seed=seed, dims=dims, ranges=ranges
    )

    if ops and not split_names(ops):
        raise InputError("--ops: no op type given")
    try:
        if plan_path is not None:
            plan = load_plan(plan_path)
            options, offsets = plan.selection_options(), plan.offset_options()
        else:
            options = SelectionOptions(
                ops=tuple(split_names(ops)) or SUPPORTED_OPS,
                scope=Scope(scope),
                include=include,
                exclude=exclude,
                mantissa_bits=mantissa_bits,
                mantissa_bits_for=overrides,
                every_product=every_product,
            )
            offsets = OffsetOptions(offset, offset_overrides)
    except (PlanError, ValueError) as error:
        raise InputError(str(error)) from None

    shown = {"last": 0.0}

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if is_tty() and not quiet and (now - shown["last"] > 0.2 or done == total):
            shown["last"] = now
            click.echo(f"\rexamining nodes {done}/{total}", err=True, nl=done == total)

    status(f"loading {input_model}", quiet)
    start = time.monotonic()
    try:
        report = convert_file(
            input_model,
            output,
            options,
            dry_run=dry_run,
            progress=progress,
            dims=dims,
            offsets=offsets,
            calibration=calibration_options,
            portable=portable,
            overwrite=overwrite,
            external_data=external_data,
            fold_pads=fold_pad,
        )
    except (ModelLoadError, OutputPathError, ValueError) as error:
        raise InputError(str(error)) from None
    except OSError as error:
        raise InputError(f"cannot write {output or 'the output'}: {error.strerror or error}") from None
    estimate = report.energy
    if json_path is not None:
        emit_json(json_path, {**report.to_dict(), "energy": _energy_json(estimate)})
        if json_path == "-":
            return
    click.echo(report.format_table())
    if dry_run:
        for record in report.converted:
            bits = f" m={record.decision.mantissa_bits}" if record.decision.mantissa_bits else ""
            bits += f" offset={record.decision.offset:#x}" if record.decision.offset is not None else ""
            click.echo(
                f"  {record.op_type} -> {record.new_op_type}{bits}  {record.name}  [{record.location}]"
            )
    else:
        if report.portable:
            click.echo(f"portable: {report.portable}")
        click.echo(f"wrote {', '.join(report.written)} ({time.monotonic() - start:.1f} s)")
        if report.embedded_weight_bytes >= EMBEDDED_WEIGHTS_HINT_BYTES:
            click.echo(
                f"memory: {report.embedded_weight_bytes / 2**20:.1f} MiB of converted weights embedded:"
                " onnxruntime keeps its own copy beside the kernels' packed one when run;"
                " --external-data stores them in a file it memory-maps instead"
            )
    if not dry_run:
        click.echo(_energy_line(report, estimate, dims))


def _energy_json(estimate: dict | None) -> dict | None:
    return None if estimate is None else {**estimate["total"], "unbound_dims": estimate["unbound_dims"]}


def _energy_line(report: Any, estimate: dict | None, dims: dict[str, int] | None = None) -> str:
    if not report.converted:
        return "energy: nothing converted, nothing saved"
    if estimate is None:
        return "energy: no estimate (shape inference failed)"
    total = estimate["total"]
    if total["multiplications"] == 0 and total["unknown_nodes"]:
        unbound = ", ".join(estimate["unbound_dims"]) or "of the model's inputs"
        return f"energy: no estimate: the shapes depend on dimensions {unbound}; bind them with --dim NAME=N"
    unknown = (
        f"; {total['unknown_nodes']} node(s) of unknown shape left out" if total["unknown_nodes"] else ""
    )
    loops = (
        f"; {total['per_iteration_nodes']} node(s) in loops of unknown trip count counted once"
        if total["per_iteration_nodes"]
        else ""
    )
    # the shapes it counts for, where --dim bound them (the estimate depends on them)
    bound = "".join(f", {name}={size}" for name, size in (dims or {}).items())
    return (
        f"energy (Horowitz 45 nm table{bound}): "
        f"the {total['converted_multiplications']:,} converted products "
        f"use {total['converted_saving_percent']:.1f} % less energy than float multiplication; "
        f"all {total['multiplications']:,} of the model's multiplications "
        f"{total['saving_percent']:.1f} % less{unknown}{loops}"
    )
