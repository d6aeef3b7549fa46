"""``lmul-onnx convert``: rewrite a model's products into L-Mul ops."""

from __future__ import annotations

import time
from pathlib import Path

import click

from lmul_onnx.cli.common import InputError, echo_json, is_tty, parse_key_value, status
from lmul_onnx.convert import ModelLoadError, convert_file
from lmul_onnx.ops import SUPPORTED_OPS
from lmul_onnx.passes.offsets import OffsetOptions
from lmul_onnx.passes.selection import Scope, SelectionOptions
from lmul_onnx.plan import PlanError, load_plan

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


def _split_ops(text: str) -> tuple[str, ...]:
    return tuple(op.strip() for op in text.split(",") if op.strip())


@click.command()
@click.argument("input_model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output model. Default: <input stem>.lmul.onnx beside the input.",
)
@click.option(
    "--ops", default=",".join(SUPPORTED_OPS), show_default=True, help="Comma-separated op types to rewrite."
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
    metavar="paper|unbiased|VALUE",
    help="SPEC §4 offset of every converted node: paper (no attribute, the paper's 2^-l(m)); "
    "unbiased (a constant per m that zeroes the mean product error of N(0,1)-like operands); "
    "an integer 0..8388607 (the attribute) or a fraction in [0, 1) such as 0.0625.",
)
@click.option(
    "--offset-for",
    multiple=True,
    metavar="REGEX=CHOICE",
    help="Per-node offset (paper|unbiased|VALUE); the first matching REGEX wins (repeatable).",
)
@click.option(
    "--dim",
    multiple=True,
    metavar="NAME=N",
    help="Bind a symbolic input dimension for the energy estimate (repeatable).",
)
@click.option(
    "--every-product",
    is_flag=True,
    help="Also convert products whose constant operand is exactly 0, ±2^k or a 0/1 mask "
    "(the paper's 'every multiplication'; by default they stay exact: L-Mul only adds error there).",
)
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Apply a plan written by 'lmul-onnx tune --plan-out' (replaces the selection options).",
)
@click.option("--dry-run", is_flag=True, help="List what would change; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
def convert(
    input_model: Path,
    output: Path | None,
    ops: str,
    scope: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    mantissa_bits: int | None,
    mantissa_bits_for: tuple[str, ...],
    offset: str,
    offset_for: tuple[str, ...],
    dim: tuple[str, ...],
    every_product: bool,
    plan_path: Path | None,
    dry_run: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Rewrite MatMul/Gemm/Mul/Conv/ConvTranspose nodes of INPUT_MODEL into the `lmul` op domain.

    Only float32/float16/bfloat16 nodes are rewritten; node names, inputs, outputs,
    initializers, metadata, IR and opset versions stay as exported. Subgraphs
    (If/Loop/Scan) and model-local functions are walked. Converting twice changes
    nothing.
    """
    overrides = tuple(parse_key_value("--mantissa-bits-for", item, int) for item in mantissa_bits_for)
    offset_overrides = tuple(parse_key_value("--offset-for", item) for item in offset_for)
    dims = dict(parse_key_value("--dim", item, int) for item in dim)
    selection_given = [
        f"--{name.replace('_', '-')}"
        for name in _SELECTION_OPTIONS
        if click.get_current_context().get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    ]
    if plan_path is not None and selection_given:
        raise InputError(f"--plan replaces the selection options; drop {', '.join(selection_given)}")
    try:
        if plan_path is not None:
            plan = load_plan(plan_path)
            options, offsets = plan.selection_options(), plan.offset_options()
        else:
            options = SelectionOptions(
                ops=_split_ops(ops),
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

    quiet = quiet or as_json
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
            input_model, output, options, dry_run=dry_run, progress=progress, dims=dims, offsets=offsets
        )
    except (ModelLoadError, ValueError) as error:
        raise InputError(str(error)) from None
    estimate = report.energy
    if as_json:
        echo_json({**report.to_dict(), "energy": estimate and estimate["total"]})
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
        click.echo(f"wrote {report.output_path} ({time.monotonic() - start:.1f} s)")
        click.echo(_energy_line(estimate))


def _energy_line(estimate: dict | None) -> str:
    if estimate is None:
        return "energy: no estimate (shape inference failed)"
    total = estimate["total"]
    if total["multiplications"] == 0:
        return "energy: no estimate (shapes unknown: bind symbolic dimensions with --dim NAME=N)"
    unknown = (
        f"; {total['unknown_nodes']} node(s) of unknown shape left out" if total["unknown_nodes"] else ""
    )
    loops = (
        f"; {total['per_iteration_nodes']} node(s) in loops of unknown trip count counted once"
        if total["per_iteration_nodes"]
        else ""
    )
    return (
        f"energy (Horowitz 45 nm table): the {total['converted_multiplications']:,} converted products "
        f"use {total['converted_saving_percent']:.1f} % less energy than float multiplication; "
        f"all {total['multiplications']:,} of the model's multiplications "
        f"{total['saving_percent']:.1f} % less{unknown}{loops}"
    )
