"""Sharded work: which shards of the training vectors this process computes, and the glue to torch.distributed.

A method's vectors are cut into fixed shards of rows (:class:`.vectors.Manifest`). The same files come from:

- one process, which computes every missing shard, then finalizes;
- ``--shard I/N`` jobs (a SLURM array, machines sharing a filesystem): job I computes the missing shards s with
  s mod N = I and stops; ``datablame finalize WORKDIR`` then reduces them (manifest, curvature, self-influence)
  and builds the index, refusing while a shard is missing;
- ``torchrun`` with N processes (``-m datablame.cli vectors|index …``): rank I takes the part I of N (gloo on CPU,
  NCCL on GPU; each rank on its own GPU); rank 0 writes the plan before the others start and finalizes after
  they are all done.

A shard is written whole or not at all (temporary name, then rename), so its file is its done marker, and a
worker never touches another's files: killing one and running it again computes only its missing shards.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from dataclasses import dataclass
from typing import Callable, Iterator

from datablame.influence.errors import DatablameError

TIMEOUT = dt.timedelta(hours=6)
"""How long a rank waits at a barrier for the others (a slow shard on another rank is not an error)."""


@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count``: the shards s with s mod count = index."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Part":
        """``"I/N"`` (0 ≤ I < N) → Part(I, N), or a one-line DatablameError."""
        try:
            index, count = (int(x) for x in text.split("/"))
        except ValueError:
            index, count = -1, 0
        if not 0 <= index < count:
            raise DatablameError(f"--shard {text!r} is not I/N with 0 ≤ I < N", "e.g. --shard 0/4 … --shard 3/4")
        return cls(index, count)

    def mine(self, shard: int) -> bool:
        return shard % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def torchrun_part() -> Part | None:
    """This process's part when torchrun started it (``RANK`` and ``WORLD_SIZE`` set, more than one rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Part(int(os.environ.get("RANK", "0")), world) if world > 1 else None


def local_device(device: str) -> str:
    """The device of this rank: its own GPU (``LOCAL_RANK``) under torchrun on a GPU machine, else ``device``."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


@contextlib.contextmanager
def process_group(device: str) -> Iterator[Callable[[], None]]:
    """torch.distributed for the ranks torchrun started (gloo on CPU, NCCL on CUDA); yields the barrier."""
    import torch
    import torch.distributed as dist

    backend = "nccl" if local_device(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_device(device))
    dist.init_process_group(backend, timeout=TIMEOUT)
    try:
        yield dist.barrier
    finally:
        dist.destroy_process_group()
