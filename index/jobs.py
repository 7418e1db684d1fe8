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
from .search import SCORINGS, IndexMeta
from .shards import Part, local_device, process_group, torchrun_part
from .vectors import SHARD_SIZE, Manifest, VectorSet, compute_vector_sets, finalize_vectors


@dataclass
class Job:
    """What a process did: the vectors' manifest and folder (of each vector set: influence functions may take two,
    see :func:`.vectors.vector_sets`), whether it finished them (finalized; every shard done), the part it computed
    (None: all), and the indexes it built (with ``scorings``)."""

    manifests: list[Manifest]
    folders: list[Path]
    finished: bool
    part: Part | None
    indexes: list[IndexMeta]


def run_vectors(workdir: str | Path, method: str, settings: MethodSettings = MethodSettings(),
                dtype: str = "float32", batch_size: int = 32, progress: Progress | None = None,
                shard_size: int = SHARD_SIZE, part: Part | None = None, scorings: Sequence[str] = (),
                approximate: bool = False) -> Job:
    """Compute the method's vectors (each set of :func:`.vectors.vector_sets` for ``scorings``, all of them when
    none are given), or this process's part of them (``part``, or its torchrun rank's), then, where this process
    finishes them (alone, or rank 0 once every rank is done), finalize them and build one index per scoring in
    ``scorings``."""
    launched = torchrun_part()
    if launched is not None and part is not None:
        raise DatablameError(f"--shard {part} under torchrun", "torchrun gives each rank its part; drop --shard")
    serves = tuple(scorings) or SCORINGS
    if launched is None:
        sets = compute_vector_sets(workdir, method, settings, dtype, batch_size, progress, shard_size, part,
                                   scorings=serves)
        finished = part is None
    else:
        settings = replace(settings, device=local_device(settings.device))
        with process_group(settings.device) as barrier:
            sets = compute_vector_sets(workdir, method, settings, dtype, batch_size, progress, shard_size,
                                       launched, planned=barrier, scorings=serves)
            barrier()  # every rank's shards are written
            finished = launched.index == 0
            if finished:
                for s in sets:
                    s.manifest = s.store.finalize(s.built.method, s.built.train, s.manifest)
    return _job(workdir, method, sets, finished, part or launched, scorings, approximate)


def run_finalize(workdir: str | Path, method: str, device: str = "auto", progress: Progress | None = None,
                 scorings: Sequence[str] = (), approximate: bool = False) -> Job:
    """Finalize the vectors that ``--shard`` jobs computed and build one index per scoring in ``scorings``, with
    the settings the jobs recorded; refused while a shard is missing."""
    return _job(workdir, method, finalize_vectors(workdir, method, device, progress), True, None, scorings,
                approximate)


def _job(workdir: str | Path, method: str, sets: list[VectorSet], finished: bool, part: Part | None,
         scorings: Sequence[str], approximate: bool) -> Job:
    """The job of ``sets``, with the indexes of ``scorings`` built from the set that serves each (when finished)."""
    indexes = [meta for s in sets if finished
               for meta in build_indexes(workdir, method, s, [x for x in scorings if x in s.scorings], approximate)]
    return Job([s.manifest for s in sets], [s.store.folder for s in sets], finished, part, indexes)
