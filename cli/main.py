"""Entry point of the ``lmul-onnx`` command."""

from __future__ import annotations

import sys
from typing import Any

import click
import onnxruntime

import lmul_onnx
from lmul_onnx.cli.convert import convert as convert_command
from lmul_onnx.cli.energy import energy_command
from lmul_onnx.cli.models import models
from lmul_onnx.cli.precision import precision_command
from lmul_onnx.cli.tune import tune_command
from lmul_onnx.cli.validate import validate_command


class OneLineErrors(click.Group):
    """A group whose usage errors print as one line (with where to get help), exit 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.UsageError as error:
            where = error.ctx.command_path if error.ctx else "lmul-onnx"
            click.echo(f"Error: {error.format_message()} (see '{where} --help')", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)


@click.group(
    cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(lmul_onnx.__version__, prog_name="lmul-onnx")
def main() -> None:
    """Rewrite ONNX models to L-Mul, run them in onnxruntime, measure the drift.

    \b
    Typical use:
      lmul-onnx convert model.onnx            # writes model.lmul.onnx
      lmul-onnx validate model.onnx model.lmul.onnx
      lmul-onnx tune model.onnx --min-cosine 0.99 --plan-out plan.json
    """


@main.command()
def info() -> None:
    """Print the versions and the path of the native custom-op library."""
    click.echo(f"lmul-onnx     {lmul_onnx.__version__}")
    click.echo(f"onnxruntime   {onnxruntime.__version__}")
    try:
        click.echo(f"library       {lmul_onnx.get_library_path()}")
    except lmul_onnx.LibraryNotFoundError as error:
        raise click.ClickException(str(error)) from error


main.add_command(convert_command)
main.add_command(validate_command, name="validate")
main.add_command(models)
main.add_command(energy_command)
main.add_command(precision_command)
main.add_command(tune_command)

if __name__ == "__main__":
    main()
