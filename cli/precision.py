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
    help="Write {row: mean |relative error|} (fractions) as JSON to PATH ('-' for stdout).",
)
def precision_command(pairs: int, seed: int, json_path: str | None) -> None:
    """Mean |relative error| of a single product, per arithmetic.

    Pairs whose exact (float64) product is below 2^-6 in magnitude are not counted.
    L-Mul rows round the operands to m mantissa bits (SPEC); fp8 and bf16 rows round
    the operands and the product to the format.
    """
    check_outputs(("--json", json_path))
    from lmul_onnx.precision import precision_table

    table = precision_table(pairs, seed)
    if json_path is not None:
        emit_json(json_path, table)
        if json_path == "-":
            return
    click.echo(f"{'arithmetic':<10} {'mean |rel. error|':>18}")
    for name, value in table.items():
        click.echo(f"{name:<10} {100 * value:>17.3f}%")
