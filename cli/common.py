"""Helpers shared by the commands: errors with exit code 2, JSON output, option parsing.

Conventions of every verb (documented once, in the README's "Command-line conventions"):

* ``--json PATH`` writes the report as JSON to PATH, ``--json -`` to stdout (people's
  text then goes to stderr or is left out). Non-finite numbers become ``null`` and are
  named in a ``"nonfinite": {key: "inf" | "-inf" | "nan"}`` entry beside them.
* An option that takes several values is repeated (``--dim a=1 --dim b=2``); options
  whose values are plain names (``--ops``, ``--compare``, ``--logits``) also take a
  comma-separated list.
* Bad input: exit 2 and one line; accuracy failure: exit 1; success: 0.

Only click and the standard library are imported here, so ``--help`` and usage errors
answer without loading numpy, onnx or onnxruntime.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

T = TypeVar("T")


class InputError(click.ClickException):
    """A user mistake (unreadable model, bad option value): one line, exit code 2."""

    exit_code = 2


def json_safe(data: Any) -> Any:
    """``data`` with every non-finite float replaced by ``None``; each dict holding one
    gets ``"nonfinite": {key: "inf" | "-inf" | "nan"}``."""
    if isinstance(data, dict):
        result: dict[str, Any] = {}
        flags: dict[str, str] = {}
        for key, value in data.items():
            if isinstance(value, float) and not math.isfinite(value):
                flags[str(key)] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
                result[key] = None
            else:
                result[key] = json_safe(value)
        if flags:
            result["nonfinite"] = flags
        return result
    if isinstance(data, list | tuple):
        return [None if isinstance(v, float) and not math.isfinite(v) else json_safe(v) for v in data]
    return data


def dumps(data: Any) -> str:
    return json.dumps(json_safe(data), indent=2, default=str, allow_nan=False)


def emit_json(path: str, data: Any) -> None:
    """``--json PATH``: to stdout for ``-``, else atomically to the file."""
    if path == "-":
        click.echo(dumps(data))
        return
    from lmul_onnx.output_paths import OutputPathError, atomic_write_text

    try:
        atomic_write_text(path, dumps(data) + "\n", option="--json")
    except OutputPathError as error:
        raise InputError(str(error)) from None
    except OSError as error:
        raise InputError(f"--json {path}: cannot write ({error.strerror or error})") from None


JSON_HELP = "Write the report as JSON to PATH ('-' for stdout)."


def check_outputs(*outputs: tuple[str, object], reads: Iterable[object] = ()) -> None:
    """Before any work: refuse report/input output paths (``(option, path)``; None and
    ``-`` skipped) that are one of the files the command reads, a symbolic link, a
    folder or in a place that cannot be written."""
    from pathlib import Path

    from lmul_onnx.output_paths import OutputPathError, check_output

    protected = [(Path(str(p)).absolute(), "a file this command reads") for p in reads if p is not None]
    try:
        for option, path in outputs:
            if path is not None and str(path) != "-":
                check_output(str(path), protected=protected, overwrite=True, option=option)
    except OutputPathError as error:
        raise InputError(str(error)) from None


def status(message: str, quiet: bool = False) -> None:
    """Progress for people: on stderr (stdout stays parseable), and only on a terminal
    (a log or a CI job sees the result and, on failure, one error line)."""
    if not quiet and is_tty():
        click.echo(message, err=True)


def parse_key_value(option: str, text: str, convert: Callable[[str], T]) -> tuple[str, T]:
    """Split ``KEY=VALUE`` (split at the last ``=``, so a regex key may contain ``=``);
    ``convert`` raises ``ValueError`` with a message for people."""
    key, sep, value = text.rpartition("=")
    if not sep or not key:
        raise InputError(f"{option} expects KEY=VALUE, got {text!r}")
    try:
        return key, convert(value)
    except ValueError as error:
        raise InputError(f"{option} {text!r}: {error}") from None


def parse_bindings(option: str, items: Iterable[str], convert: Callable[[str], T]) -> dict[str, T]:
    """Repeated ``--option KEY=VALUE`` into a dict; a key given twice is an error."""
    result: dict[str, T] = {}
    for item in items:
        key, value = parse_key_value(option, item, convert)
        if key in result:
            raise InputError(f"{option} {key} is given twice")
        result[key] = value
    return result


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def positive_dim(text: str) -> int:
    """A dimension value: an integer >= 1."""
    value = integer(text)
    if value < 1:
        raise ValueError(f"a dimension must be at least 1, got {value}")
    return value


def split_names(values: Iterable[str]) -> list[str]:
    """A repeated option whose values may also be comma-separated lists of names."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def is_tty() -> bool:
    return sys.stderr.isatty()


def quiet_libraries() -> None:
    """``-q``: silence the warnings libraries print (onnxruntime's shape inference and
    session logs, onnxscript's notes)."""
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)


def parse_tolerances(option: str, values: tuple[str, ...], default: float) -> tuple[float, dict[str, float]]:
    """``--atol 1e-3 --atol logits:0.5``: a bare number sets the default, NAME:X one output."""
    per_output: dict[str, float] = {}
    for value in values:
        name, sep, number = value.rpartition(":")
        try:
            parsed = float(number)
        except ValueError:
            raise InputError(f"{option} {value!r}: {number!r} is not a number") from None
        if not parsed >= 0 or parsed == float("inf"):
            raise InputError(f"{option} {value!r}: a tolerance must be a finite number >= 0")
        if sep:
            per_output[name] = parsed
        else:
            default = parsed
    return default, per_output


def parse_range(text: str) -> tuple[float, float]:
    """``LO:HI`` (``--input-range NAME=LO:HI``) as two floats."""
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return float(low), float(high)
    except ValueError:
        raise ValueError(f"{text!r} is not LO:HI") from None


def generated_input_options(
    purpose: str = "", ignored_with: str = "--inputs", dim_help: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options of generated inputs, the same in every verb that runs a model:
    ``--samples``, ``--seed``, ``--dim NAME=N`` and ``--input-range NAME=LO:HI``.

    ``purpose`` names what the inputs are for (``"calibration "``), ``ignored_with`` the
    option that supplies real inputs instead. Parse the last two with
    :func:`parse_generation_bindings`.
    """
    options = [
        click.option(
            "--samples",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help=f"Generated {purpose}input samples, made one at a time (ignored with {ignored_with}).",
        ),
        click.option(
            "--seed", type=int, default=0, show_default=True, help=f"Seed of the generated {purpose}inputs."
        ),
        click.option(
            "--dim",
            multiple=True,
            metavar="NAME=N",
            help=dim_help
            or "Value of a symbolic input dimension (repeatable) [default: 1 for batch-like names, else 16].",
        ),
        click.option(
            "--input-range",
            multiple=True,
            metavar="NAME=LO:HI",
            help=f"Range of a generated {purpose}input, e.g. input_ids=0:30000 (repeatable) "
            "[default: integers 0:100].",
        ),
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def parse_generation_bindings(
    dim: Iterable[str], input_range: Iterable[str]
) -> tuple[dict[str, int], dict[str, tuple[float, float]]]:
    """``--dim`` and ``--input-range`` values as ``(dims, ranges)`` dicts."""
    return parse_bindings("--dim", dim, positive_dim), parse_bindings(
        "--input-range", input_range, parse_range
    )


class ProgressBar:
    """``[#####.....] 12/32`` for stderr, redrawn in place at most five times a second
    (the caller adds a label, an ETA, a unit)."""

    width = 30

    def __init__(self) -> None:
        self.shown = 0.0

    def due(self, done: int, total: int) -> bool:
        """True when it is time to redraw: 0.2 s since the last time, or the end."""
        now = time.monotonic()
        if now - self.shown < 0.2 and done < total:
            return False
        self.shown = now
        return True

    def draw(self, done: int, total: int) -> str:
        filled = self.width * done // total if total else self.width
        return f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}"
