"""The one exception type for user errors: a message naming the problem and a hint naming the fix."""

from __future__ import annotations


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
