"""Helpers shared by the commands: errors with exit code 2, JSON output, key=value options."""

from __future__ import annotations

import json
import sys
from typing import Any

import click


class InputError(click.ClickException):
    """A user mistake (unreadable model, bad option value): one line, exit code 2."""

    exit_code = 2


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def status(message: str, quiet: bool = False) -> None:
    """Progress for people, on stderr, so stdout stays parseable."""
    if not quiet:
        click.echo(message, err=True)


def parse_key_value(option: str, text: str, convert: type = str) -> tuple[str, Any]:
    """Split ``KEY=VALUE`` (split at the last ``=``, so a regex key may contain ``=``)."""
    key, sep, value = text.rpartition("=")
    if not sep or not key:
        raise InputError(f"{option} expects KEY=VALUE, got {text!r}")
    try:
        return key, convert(value)
    except ValueError:
        raise InputError(f"{option} {text!r}: {value!r} is not a valid {convert.__name__}") from None


def parse_range(text: str) -> tuple[float, float]:
    """``LO:HI`` as two floats (the ``--input-range`` values)."""
    low, sep, high = text.partition(":")
    if not sep:
        raise ValueError(text)
    return float(low), float(high)


parse_range.__name__ = "range LO:HI"  # parse_key_value's message names the expected form


def is_tty() -> bool:
    return sys.stderr.isatty()
