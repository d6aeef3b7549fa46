"""``lmul-onnx precision``: the error of one product, L-Mul against fp8 and bf16."""

from __future__ import annotations

import click

from lmul_onnx.cli.common import check_outputs, emit_json


@click.command("precision")
@click.option(
    "--pairs",
    type=click.IntRange(min=1000),
    default=1_000_000,
    show_default=True,
    help="Operand pairs drawn from N(0, 1).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--json",
    "json_path",
    metavar="PATH",
    help='Write {row: {"mean_abs_error", "bias"}} (fractions) as JSON to PATH (\'-\' for stdout).',
)
def precision_command(pairs: int, seed: int, json_path: str | None) -> None:
    """Mean |relative error| and mean signed error (bias) of a single product, per arithmetic.

    Pairs whose exact (float64) product is below 2^-6 in magnitude are not counted.
    L-Mul rows round the operands to m mantissa bits (SPEC); lmul_mK_unbiased rows use
    the unbiased offset (SPEC §4); fp8 and bf16 rows round the operands and the product
    to the format.
    """
    check_outputs(("--json", json_path))
    from lmul_onnx.precision import precision_rows

    table = precision_rows(pairs, seed)
    if json_path is not None:
        emit_json(json_path, table)
        if json_path == "-":
            return
    click.echo(f"{'arithmetic':<18} {'mean |rel. error|':>18} {'bias':>9}")
    for name, row in table.items():
        click.echo(f"{name:<18} {100 * row['mean_abs_error']:>17.3f}% {100 * row['bias']:>+8.3f}%")
