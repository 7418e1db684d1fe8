"""Turning errors into one line on stderr: user errors exit with status 2, bugs with status 1.

A user error (:class:`DatablameError`) names the problem and its fix. Anything else is a bug in datablame: one
line naming the exception and where to report it, and its traceback too when the command ran with ``-v``.
"""

from __future__ import annotations

import functools
import inspect
import sys
import traceback
from typing import Callable, TypeVar

import typer

from datablame.influence.errors import DatablameError

F = TypeVar("F", bound=Callable)
ISSUES_URL = "https://github.com/datablame/datablame/issues"


def report_errors(fn: F) -> F:
    """Decorate a command: DatablameError → ``error: MESSAGE (HINT)`` and exit 2; Ctrl-C → exit 130; any other
    exception → ``error: unexpected TYPE: MESSAGE (this is a bug …)`` and exit 1, after its traceback when the
    command's ``verbose`` option is set (commands without one just print the line)."""
    has_verbose = "verbose" in inspect.signature(fn).parameters

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
        except Exception as exc:
            if type(exc).__module__.split(".")[0] in ("typer", "click"):
                raise  # the CLI framework's own ways to end a command (exit, abort, usage), not failures
            verbose = bool(kwargs.get("verbose"))
            if verbose:
                traceback.print_exc(file=sys.stderr)
            print(unexpected_error_line(exc, has_verbose, verbose), file=sys.stderr)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def unexpected_error_line(exc: BaseException, has_verbose: bool, traceback_shown: bool) -> str:
    """The one line for an exception that is a bug: its type and message (whitespace collapsed to keep it one
    line), and what to do: report it, with the traceback above or, from a command with ``-v``, after a rerun
    with it."""
    message = " ".join(str(exc).split())
    what = f"unexpected {type(exc).__name__}" + (f": {message}" if message else "")
    todo = "report it with the traceback above" if traceback_shown else \
        "rerun with -v for the traceback and report it" if has_verbose else "report it"
    return f"error: {what} (this is a bug in datablame; {todo} at {ISSUES_URL})"
