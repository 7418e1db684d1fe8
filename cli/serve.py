"""``datablame serve WORKDIR``: the review loop in a browser (see :mod:`datablame.cli.web`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .errors import report_errors
from .progress import QUIET, VERBOSE, console, log_verbosely
from .store_commands import DB, WORKDIR


@report_errors
def serve(
    workdir: Path = WORKDIR,
    db: Optional[str] = DB,
    host: str = typer.Option("127.0.0.1", help="Address to listen on. Anything but a loopback address (e.g. "
                             "0.0.0.0 for a team) requires the access token that is printed."),
    port: int = typer.Option(8765, help="Port to listen on."),
    user: Optional[str] = typer.Option(None, "--user", help="Reviewer name for every action (default: each "
                                       "browser is asked for a name on its first visit)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="DATABLAME_TOKEN",
                                        help="Access token to require (default: a new one when the host is not "
                                        "loopback, none on loopback)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda: where explanations are computed."),
    quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> None:
    """Review flags, explain predictions and export in a browser: a local web app over the store and the index.

    Every asset is served by the app itself (no network). Keys on the flags page: j/k move, a accept, r reject,
    1-9 relabel, u undo, ? help."""
    import uvicorn

    from .web.app import create_app
    from .web.guard import LOOPBACK_NAMES, is_loopback, new_token

    log_verbosely(verbose)
    _leave_a_core_to_the_server()
    local = is_loopback(host)
    if not local and token is None:
        token = new_token()
    app = create_app(workdir, db, user, token, LOOPBACK_NAMES if local else None, device)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}/flags" + (f"?token={token}" if token else "")
    if not quiet:
        console.print(f"serving {workdir} on [bold]{url}[/bold] (Ctrl-C stops)", highlight=False, soft_wrap=True)
    uvicorn.run(app, host=host, port=port, log_level="info" if verbose else "warning")


def _leave_a_core_to_the_server() -> None:
    """Explanations use one CPU core fewer than there are, so that the server answers while the model runs
    (on 2 cores, torch's two threads against the event loop made evidence times erratic: 25 ms to 650 ms)."""
    import os

    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``datablame`` app."""
    app.command()(serve)
