"""``lmul-onnx validate``: the accuracy drift of a converted model against its original."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lmul_onnx.baselines import BASELINES, BaselineError
from lmul_onnx.cli.common import InputError, parse_key_value, status
from lmul_onnx.convert import ModelLoadError
from lmul_onnx.inputs import InputError as ModelInputError
from lmul_onnx.ops import DomainError
from lmul_onnx.validate import DEFAULT_ATOL, DEFAULT_RTOL, validate


def _tolerances(option: str, values: tuple[str, ...], default: float) -> tuple[float, dict[str, float]]:
    """``--atol 1e-3 --atol logits:0.5``: a bare number sets the default, NAME:X one output."""
    per_output: dict[str, float] = {}
    for value in values:
        name, sep, number = value.rpartition(":")
        try:
            parsed = float(number)
        except ValueError:
            raise InputError(f"{option} {value!r}: {number!r} is not a number") from None
        if sep:
            per_output[name] = parsed
        else:
            default = parsed
    return default, per_output


def _range(text: str) -> tuple[float, float]:
    low, sep, high = text.partition(":")
    if not sep:
        raise ValueError(text)
    return float(low), float(high)


@click.command()
@click.argument("original", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("converted", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--inputs",
    type=click.Path(dir_okay=False, path_type=Path),
    help="An .npz of inputs keyed by input name (or I/NAME for several samples).",
)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Generated input samples (ignored with --inputs).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated inputs.")
@click.option(
    "--atol",
    multiple=True,
    metavar="[NAME:]X",
    help=f"Absolute tolerance, for all outputs or NAME only (repeatable) [default: {DEFAULT_ATOL}].",
)
@click.option(
    "--rtol",
    multiple=True,
    metavar="[NAME:]X",
    help=f"Relative tolerance, for all outputs or NAME only (repeatable) [default: {DEFAULT_RTOL}].",
)
@click.option(
    "--min-cosine",
    type=click.FloatRange(-1, 1),
    default=None,
    help="Also fail an output whose cosine similarity to the original is below this.",
)
@click.option(
    "--dim", multiple=True, metavar="NAME=N", help="Value of a symbolic input dimension (repeatable)."
)
@click.option(
    "--input-range",
    multiple=True,
    metavar="NAME=LO:HI",
    help="Range of a generated input, e.g. input_ids=0:30000 (repeatable).",
)
@click.option("--per-node", is_flag=True, help="Also report the drift at every converted node's output.")
@click.option(
    "--sort",
    type=click.Choice(["graph", "worst"]),
    default="graph",
    show_default=True,
    help="Order of the --per-node list (worst = lowest cosine first).",
)
@click.option(
    "--compare",
    default="",
    metavar="KIND[,KIND]",
    help=f"Baselines on the same nodes, from: {', '.join(BASELINES)}.",
)
@click.option(
    "--save-inputs", type=click.Path(dir_okay=False, path_type=Path), help="Save the inputs used (.npz)."
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads per session.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Write the report as JSON to this file ('-' for stdout).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
def validate_command(
    original: Path,
    converted: Path,
    inputs: Path | None,
    samples: int,
    seed: int,
    atol: tuple[str, ...],
    rtol: tuple[str, ...],
    min_cosine: float | None,
    dim: tuple[str, ...],
    input_range: tuple[str, ...],
    per_node: bool,
    sort: str,
    compare: str,
    save_inputs: Path | None,
    threads: int | None,
    json_path: str | None,
    quiet: bool,
) -> None:
    """Measure the drift of CONVERTED against ORIGINAL on the same inputs.

    Per output: max_abs, mean_abs, max_rel, rmse, snr_db, cosine, top1_agreement (for
    logit-like outputs) and the fraction of elements outside atol + rtol*|original|.
    Exit status: 0 when every output is within tolerance, 1 when one is not, 2 for bad
    input.
    """
    atol_default, atol_per_output = _tolerances("--atol", atol, DEFAULT_ATOL)
    rtol_default, rtol_per_output = _tolerances("--rtol", rtol, DEFAULT_RTOL)
    dims = dict(parse_key_value("--dim", item, int) for item in dim)
    ranges = dict(parse_key_value("--input-range", item, _range) for item in input_range)
    kinds = [k.strip() for k in compare.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in BASELINES]
    if unknown:
        raise InputError(
            f"--compare: unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}"
        )
    quiet = quiet or json_path == "-"
    try:
        report = validate(
            original,
            converted,
            inputs=inputs,
            samples=samples,
            seed=seed,
            atol=atol_default,
            rtol=rtol_default,
            atol_per_output=atol_per_output,
            rtol_per_output=rtol_per_output,
            min_cosine=min_cosine,
            dims=dims,
            input_ranges=ranges,
            per_node=per_node,
            compare=kinds,
            save_inputs=save_inputs,
            threads=threads,
            progress=lambda message: status(message, quiet),
        )
    except (ModelLoadError, ModelInputError, BaselineError, DomainError) as error:
        raise InputError(str(error)) from None
    if sort == "worst":
        report.nodes.sort(key=lambda node: node["cosine"])
    if json_path == "-":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.format_table())
        if json_path:
            Path(json_path).write_text(json.dumps(report.to_dict(), indent=2))
    sys.exit(0 if report.passed else 1)
