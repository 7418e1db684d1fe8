"""Turning user errors into one line on stderr and exit status 2; a traceback means a bug."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import typer

from datablame.influence.errors import DatablameError

F = TypeVar("F", bound=Callable)


def report_errors(fn: F) -> F:
    """Decorate a command: DatablameError → ``error: MESSAGE (HINT)`` and exit 2; Ctrl-C → exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DatablameError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
