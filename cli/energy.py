"""``lmul-onnx energy``: what L-Mul would save on a model."""

from __future__ import annotations

from pathlib import Path

import click

from lmul_onnx.cli.common import (
    JSON_HELP,
    InputError,
    check_outputs,
    emit_json,
    parse_bindings,
    positive_dim,
)


@click.command("energy")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--dim", multiple=True, metavar="NAME=N", help="Value of a symbolic input dimension (repeatable)."
)
@click.option(
    "--mantissa-bits",
    type=click.IntRange(1, 23),
    default=None,
    help="Price the L-Mul column at this operand mantissa width [default: each type's own width].",
)
@click.option(
    "--table",
    "table_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Your own energy table (JSON or TOML, {entry: pJ}); unspecified entries keep the defaults.",
)
@click.option("--json", "json_path", metavar="PATH", help=JSON_HELP)
@click.option("--nodes", "show_nodes", is_flag=True, help="Also list every node.")
def energy_command(
    model: Path,
    dim: tuple[str, ...],
    mantissa_bits: int | None,
    table_path: Path | None,
    json_path: str | None,
    show_nodes: bool,
) -> None:
    """Count and price the multiplications/additions of MODEL's MatMul/Gemm/Mul/Conv/ConvTranspose.

    energy_pj.original: every product a float multiplication; lmul: every product an
    L-Mul (an integer addition as wide as sign + exponent + mantissa bits); as_is: the
    model as it stands. Default table: Horowitz 45 nm figures as cited by the paper;
    the report names any assumption its figures rest on.
    """
    dims = parse_bindings("--dim", dim, positive_dim)
    check_outputs(("--json", json_path), reads=(model, table_path))
    from lmul_onnx.convert import ModelLoadError
    from lmul_onnx.energy import EnergyError, energy, load_table

    try:
        report = energy(model, dims=dims, table=load_table(table_path), mantissa_bits=mantissa_bits)
    except (EnergyError, ModelLoadError) as error:
        raise InputError(str(error)) from None
    if json_path is not None:
        emit_json(json_path, report)
        if json_path == "-":
            return
    total = report["total"]
    if not report["nodes"]:
        click.echo("no MatMul/Gemm/Mul node on float tensors: nothing to price")
        return
    if total["unknown_nodes"] and not any(n["multiplications"] is not None for n in report["nodes"]):
        unbound = ", ".join(report["unbound_dims"])
        hint = f"bind {unbound} with --dim NAME=N" if unbound else "the model's shapes could not be inferred"
        raise InputError(f"{total['unknown_nodes']} node(s), all of unknown shape: {hint}")
    click.echo(
        f"{'op':<13} {'nodes':>6} {'multiplications':>16} "
        f"{'original pJ':>14} {'L-Mul pJ':>14} {'as is pJ':>14}"
    )
    for op, entry in report["per_op"].items():
        e = entry["energy_pj"]
        click.echo(
            f"{op:<13} {entry['nodes']:>6} {entry['multiplications']:>16,} {e['original']:>14.4g} "
            f"{e['lmul']:>14.4g} {e['as_is']:>14.4g}"
        )
    if show_nodes:
        for node in report["nodes"]:
            mults = "unknown" if node["multiplications"] is None else f"{node['multiplications']:,}"
            mults += " per iteration" if node["per_iteration"] else ""
            lmul = "lmul " if node["is_lmul"] else "     "
            exact = f"  ({node['exact']})" if node["exact"] else ""
            click.echo(f"  {node['op_type']:<17} {lmul}{mults:>16}  {node['name']}{exact}")
    click.echo(
        f"total: {total['multiplications']:,} multiplications, {total['additions']:,} additions; "
        f"L-Mul everywhere saves {total['lmul_saving_percent']:.1f} % of their energy, "
        f"the model as it is saves {total['saving_percent']:.1f} %"
    )
    if total["converted_multiplications"]:
        click.echo(
            f"converted: {total['converted_multiplications']:,} products, "
            f"{total['converted_saving_percent']:.1f} % less energy than float multiplication"
        )
    exact = total["exact_products"]
    if exact["nodes"]:
        click.echo(
            f"{exact['nodes']} of them ({exact['multiplications']:,} multiplications) multiply by exact "
            "powers of two or 0/1 masks: they need no multiplier and stay exact unless converted "
            "with --every-product"
        )
    if total["per_iteration_nodes"]:
        click.echo(
            f"{total['per_iteration_nodes']} node(s) in loops of unknown trip count: counted per iteration"
        )
    if total["unknown_nodes"]:
        unbound = ", ".join(report["unbound_dims"])
        click.echo(
            f"{total['unknown_nodes']} node(s) with unknown shapes left out"
            + (f": bind {unbound} with --dim NAME=N" if unbound else "")
        )
    for line in report["assumptions"]:
        click.echo(f"note: {line}")
