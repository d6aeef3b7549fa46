"""Entry point of the ``lmul-onnx`` command.

Nothing heavy is imported here or by the command modules at import time, so ``--help``
and usage errors answer at once; each verb imports what it needs when it runs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

import lmul_onnx
from lmul_onnx.cli.convert import convert as convert_command
from lmul_onnx.cli.deploy import doctor_command, library_path_command
from lmul_onnx.cli.energy import energy_command
from lmul_onnx.cli.models import models
from lmul_onnx.cli.precision import precision_command
from lmul_onnx.cli.tune import tune_command
from lmul_onnx.cli.validate import validate_command

DEBUG_ENV = "LMUL_ONNX_DEBUG"
INTERNAL_ERROR = 3


class OneLineErrors(click.Group):
    """A group whose errors print as one line: usage errors and bad input exit 2 (with
    where to get help), an unexpected error (a bug) exits 3 naming it; ``--debug`` (or
    ``LMUL_ONNX_DEBUG=1``) shows its traceback instead."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.UsageError as error:
            where = error.ctx.command_path if error.ctx else "lmul-onnx"
            click.echo(f"Error: {error.format_message()} (see '{where} --help')", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            click.echo(f"Error: {' '.join(error.format_message().split())}", err=True)
            sys.exit(error.exit_code)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except (click.exceptions.Abort, KeyboardInterrupt):
            click.echo("Aborted!", err=True)
            sys.exit(130)
        except Exception as error:
            if os.environ.get(DEBUG_ENV):
                raise
            message = " ".join(str(error).split())[:300]
            click.echo(
                f"Error: internal error {type(error).__name__}: {message} "
                f"(a bug: please report it; --debug shows the traceback)",
                err=True,
            )
            sys.exit(INTERNAL_ERROR)


def _debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        os.environ[DEBUG_ENV] = "1"


@click.group(
    cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(lmul_onnx.__version__, prog_name="lmul-onnx")
@click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_debug,
    help="Show the Python traceback of an unexpected error.",
)
def main() -> None:
    """Rewrite ONNX models to L-Mul, run them in onnxruntime, measure the drift.

    \b
    Typical use:
      lmul-onnx convert model.onnx            # writes model.lmul.onnx
      lmul-onnx validate model.onnx model.lmul.onnx
      lmul-onnx tune model.onnx --min-cosine 0.99 --plan-out plan.json

    \b
    Conventions: --json PATH writes a verb's report as JSON ('-': stdout); an option
    taking several values is repeated (--dim a=1 --dim b=2), name lists may also be
    comma-separated (--compare fp8-e4m3,bf16). Exit status 0 success, 1 accuracy
    failure, 2 bad input, 3 internal error.
    """


@main.command(hidden=True, deprecated=True)
@click.pass_context
def info(ctx: click.Context) -> None:
    """Replaced by ``doctor``, which prints the same versions and library path and more."""
    ctx.invoke(doctor_command)


main.add_command(convert_command)
main.add_command(validate_command, name="validate")
main.add_command(models)
main.add_command(energy_command)
main.add_command(precision_command)
main.add_command(tune_command)
main.add_command(library_path_command)
main.add_command(doctor_command)

if __name__ == "__main__":
    main()
