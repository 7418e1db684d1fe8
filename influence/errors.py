"""The one exception type for user errors: a message naming the problem and a hint naming the fix."""

from __future__ import annotations

from typing import Iterable


class DatablameError(Exception):
    """A problem with the user's input or setup, not a bug.

    The CLI prints it as one line (``error: MESSAGE (HINT)``) and exits with status 2.
    """

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def check_choice(what: str, value: object, choices: Iterable[str], option: str | None = None) -> None:
    """Refuse a ``value`` outside ``choices`` in one line: ``unknown WHAT 'VALUE'``, and the choices as the fix
    (``give OPTION one of …`` naming the command-line option, when there is one). None (unset) passes."""
    choices = list(choices)
    if value is not None and value not in choices:
        give = f"give {option} one of" if option else "choose one of"
        raise DatablameError(f"unknown {what} {value!r}", f"{give} {', '.join(choices)}")
