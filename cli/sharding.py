"""The options of work split into shards (``vectors``, ``index``, ``scan``): the shard size and ``--shard I/N``,
checked before anything loads."""

from __future__ import annotations

from typing import Optional

import typer

SHARD_ROWS = typer.Option(4096, "--shard-size", help="Training examples per shard: the unit of work, of resuming "
                          "and of --shard parts.")


def part_of(shard: Optional[str], shard_size: int):
    """The --shard part (None without it), and --shard-size checked."""
    from datablame.index.shards import Part
    from datablame.influence.errors import DatablameError

    if shard_size < 1:
        raise DatablameError(f"--shard-size {shard_size} is not a positive number of examples",
                             "e.g. --shard-size 4096")
    return Part.parse(shard) if shard else None
