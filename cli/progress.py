"""Rich progress bars for the library's ``progress(done, total, ...)`` callbacks."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars or messages.")
VERBOSE = typer.Option(False, "--verbose", "-v", help="Also log what each step does (sizes, settings, reuse).")


@contextlib.contextmanager
def progress_bar(description: str, quiet: bool = False) -> Iterator:
    """Yields ``update(done, total, *extra)``; the first extra value, if any, is shown as the loss.

    The bar appears at the first update, so a command that fails while loading shows only its error.
    """
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    task = bar.add_task(description, total=None, info="")
    started = False

    def update(done: int, total: int, *extra) -> None:
        nonlocal started
        if quiet:
            return
        if not started:
            bar.start()
            started = True
        bar.update(task, completed=done, total=total, info=f"loss {extra[0]:.4f}" if extra else "")

    try:
        yield update
    finally:
        if started:
            bar.stop()


def log_verbosely(verbose: bool) -> None:
    """With ``verbose``, show the ``datablame`` loggers' INFO messages (what each step does) on stderr."""
    if verbose:
        logger = logging.getLogger("datablame")
        logger.setLevel(logging.INFO)
        if not logger.handlers:
            logger.addHandler(RichHandler(console=console, show_path=False, show_time=False))
