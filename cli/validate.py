"""``lmul-onnx validate``: the accuracy drift of a converted model against its original."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lmul_onnx.choices import BASELINE_TYPES, DEFAULT_ATOL, DEFAULT_RTOL
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
    quiet_libraries,
    split_names,
)


class Progress:
    """On a terminal's stderr only: phases as lines, samples as a :class:`ProgressBar`."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = ProgressBar()

    def __call__(self, message: str, done: int | None = None, total: int | None = None) -> None:
        if self.quiet or not is_tty():
            return
        if done is None or total is None:
            click.echo(message, err=True)
        elif total > 1 and self.bar.due(done, total):
            click.echo(f"\r{self.bar.draw(done, total)} samples", err=True, nl=done == total)


@click.command()
@click.argument("original", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("converted", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--inputs",
    type=click.Path(dir_okay=False, path_type=Path),
    help="An .npz of inputs keyed by input name (or I/NAME for several samples).",
)
@generated_input_options()
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
    "--logits",
    multiple=True,
    metavar="NAME[,NAME]",
    help="Outputs that are class scores: report top-1 agreement for them [default: float outputs "
    "named *logit*, *prob*, *score* or *class*].",
)
@click.option("--per-node", is_flag=True, help="Also report the drift at every converted node's output.")
@click.option(
    "--sort",
    type=click.Choice(["graph", "worst"]),
    default="graph",
    show_default=True,
    help="Order of the --per-node list (worst = lowest SNR first, NaN first of all).",
)
@click.option(
    "--compare",
    multiple=True,
    metavar="KIND[,KIND]",
    help=f"Baselines on the same nodes (repeatable), from: {', '.join(BASELINE_TYPES)}.",
)
@click.option(
    "--save-inputs", type=click.Path(dir_okay=False, path_type=Path), help="Save the inputs used (.npz)."
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads per session.")
@click.option("--json", "json_path", metavar="PATH", help=JSON_HELP)
@click.option("-q", "--quiet", is_flag=True, help="No progress messages, no library warnings.")
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
    logits: tuple[str, ...],
    per_node: bool,
    sort: str,
    compare: tuple[str, ...],
    save_inputs: Path | None,
    threads: int | None,
    json_path: str | None,
    quiet: bool,
) -> None:
    """Measure the drift of CONVERTED against ORIGINAL on the same inputs.

    Per output: max_abs, mean_abs, max_rel, rmse, snr_db, cosine, top1_agreement (for
    class-score outputs) and the fraction of elements outside atol + rtol*|original|.
    Per node (--per-node): the same drift metrics, for diagnosis only (no tolerance).
    Exit status: 0 when every output is within tolerance, 1 when one is not or the
    converted model fails at run time, 2 for bad input.
    """
    atol_default, atol_per_output = parse_tolerances("--atol", atol, DEFAULT_ATOL)
    rtol_default, rtol_per_output = parse_tolerances("--rtol", rtol, DEFAULT_RTOL)
    dims, ranges = parse_generation_bindings(dim, input_range)
    kinds = split_names(compare)
    unknown = [k for k in kinds if k not in BASELINE_TYPES]
    if unknown:
        raise InputError(
            f"--compare: unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINE_TYPES)}"
        )
    quiet = quiet or json_path == "-"
    if quiet:
        quiet_libraries()
    check_outputs(("--json", json_path), ("--save-inputs", save_inputs), reads=(original, converted, inputs))
    from lmul_onnx.baselines import BaselineError
    from lmul_onnx.convert import ModelLoadError
    from lmul_onnx.inputs import InputError as ModelInputError
    from lmul_onnx.output_paths import OutputPathError
    from lmul_onnx.validate import validate

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
            compare=list(dict.fromkeys(kinds)),
            logits=split_names(logits) or None,
            save_inputs=save_inputs,
            threads=threads,
            progress=Progress(quiet),
        )
    except (ModelLoadError, ModelInputError, BaselineError, OutputPathError) as error:
        raise InputError(str(error)) from None
    except OSError as error:
        raise InputError(f"{error.filename or 'file'}: {error.strerror or error}") from None
    report.sort_nodes(sort)
    if json_path is not None:
        emit_json(json_path, report.to_dict())
    if json_path != "-":
        click.echo(report.format_table())
    sys.exit(0 if report.passed else 1)
