"""What one process of a ``vectors``, ``index`` or ``finalize`` job does: alone, as a ``--shard I/N`` part, or as
one rank of torchrun (see :mod:`.shards`). The CLI and notebooks call these; they print nothing."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from datablame.influence.build import MethodSettings
from datablame.influence.errors import DatablameError
from datablame.influence.lissa import Progress

from .explain import build_indexes
from .search import IndexMeta
from .shards import Part, local_device, process_group, torchrun_part
from .vectors import SHARD_SIZE, Manifest, compute_vectors, finalize_vectors


@dataclass
class Job:
    """What a process did: the vectors' manifest and folder, whether it finished them (finalized; every shard
    done), the part it computed (None: all), and the indexes it built (with ``scorings``)."""

    manifest: Manifest
    folder: Path
    finished: bool
    part: Part | None
    indexes: list[IndexMeta]


def run_vectors(workdir: str | Path, method: str, settings: MethodSettings = MethodSettings(),
                dtype: str = "float32", batch_size: int = 32, progress: Progress | None = None,
                shard_size: int = SHARD_SIZE, part: Part | None = None, scorings: Sequence[str] = (),
                approximate: bool = False) -> Job:
    """Compute the method's vectors, or this process's part of them (``part``, or its torchrun rank's), then,
    where this process finishes them (alone, or rank 0 once every rank is done), finalize them and build one
    index per scoring in ``scorings``."""
    launched = torchrun_part()
    if launched is not None and part is not None:
        raise DatablameError(f"--shard {part} under torchrun", "torchrun gives each rank its part; drop --shard")
    if launched is None:
        built, store, manifest = compute_vectors(workdir, method, settings, dtype, batch_size, progress, shard_size,
                                                 part)
        finished = part is None
    else:
        settings = replace(settings, device=local_device(settings.device))
        with process_group(settings.device) as barrier:
            built, store, manifest = compute_vectors(workdir, method, settings, dtype, batch_size, progress,
                                                     shard_size, launched, planned=barrier)
            barrier()  # every rank's shards are written
            finished = launched.index == 0
            if finished:
                manifest = store.finalize(built.method, built.train, manifest)
    indexes = build_indexes(workdir, method, settings, built, store, manifest, scorings, approximate) \
        if finished and scorings else []
    return Job(manifest, store.folder, finished, part or launched, indexes)


def run_finalize(workdir: str | Path, method: str, device: str = "auto", progress: Progress | None = None,
                 scorings: Sequence[str] = (), approximate: bool = False) -> Job:
    """Finalize the vectors that ``--shard`` jobs computed and build one index per scoring in ``scorings``, with
    the settings the jobs recorded; refused while a shard is missing."""
    built, store, manifest = finalize_vectors(workdir, method, device, progress)
    settings = MethodSettings.from_dict(manifest.settings, device)
    indexes = build_indexes(workdir, method, settings, built, store, manifest, scorings, approximate)
    return Job(manifest, store.folder, True, None, indexes)
