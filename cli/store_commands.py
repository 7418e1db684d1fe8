"""Commands over the store: scan, flags, export (filled in by issue 9)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the store's commands to the ``datablame`` app."""
