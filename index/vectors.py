"""Training vectors on disk: sharded, written atomically, resumable.

Layout of ``WORKDIR/vectors/<method>/`` (influence functions' vectors at a head's damped optimum:
``<method>-optimum/``, see :func:`vector_sets`)::

    manifest.json        what the vectors were computed from (the key), n, dim, dtype, shard size, done shards,
                         the scorings whose indexes they serve
    shard-00000.npy …    (shard_size, D) rows in example-id order, float32 or float16
    self_influence.npy   (n,) float32, once every shard is done
    final-<name>.npy     what the method computes once from all vectors (influence: the (k, k) curvature)

A shard is whole or absent (temporary name, then rename), so its file is its done marker: an interrupted run
resumes at the first missing shard. A manifest whose key differs (other data, checkpoints, parameters, projection
or seed) is discarded and the vectors are recomputed. The work is planned (:meth:`VectorStore.plan`), its shards
computed by one or several workers (:meth:`VectorStore.compute_shards`, a :class:`.shards.Part` each), then
reduced once (:meth:`VectorStore.finalize`): see :mod:`.shards`.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from datablame.influence.build import Built, MethodSettings, build_method, key_changes
from datablame.influence.data import Examples
from datablame.influence.errors import DatablameError, check_choice
from datablame.influence.lissa import Progress
from datablame.influence.methods import Method, compute_train_vectors
from datablame.influence.atomic import atomic_write_bytes, atomic_write_json
from datablame.influence.workdir import Workdir

from .rows import StoredRows
from .search import SCORINGS
from .shards import Part

DTYPES = ("float32", "float16")
SHARD_SIZE = 4096
log = logging.getLogger(__name__)


@dataclass
class Manifest:
    key: dict
    n: int
    dim: int
    dtype: str = "float32"
    shard_size: int = SHARD_SIZE
    done: list[int] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # the MethodSettings they are computed with (for finalize)
    scorings: list[str] = field(default_factory=lambda: list(SCORINGS))  # the indexes built from them

    @property
    def shards(self) -> int:
        return -(-self.n // self.shard_size)

    @property
    def complete(self) -> bool:
        return len(self.done) == self.shards


def _save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


class VectorStore:
    """The vectors of one method in one folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    def manifest(self) -> Manifest | None:
        if not self.manifest_path.is_file():
            return None
        return Manifest(**json.loads(self.manifest_path.read_text()))

    def shard_path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.npy"

    def plan(self, key: dict, n: int, dim: int, dtype: str = "float32", shard_size: int = SHARD_SIZE,
             settings: dict | None = None, scorings: Sequence[str] = SCORINGS) -> Manifest:
        """The manifest of n × dim vectors computed under ``key`` in shards of ``shard_size``, serving the indexes
        of ``scorings``: the folder's own when it plans the same (its finished shards are kept, ``done`` read from
        their files), else a new one, written before any shard, the folder's older vectors removed."""
        check_choice("dtype", dtype, DTYPES)
        manifest = self.manifest()
        wanted = Manifest(key=key, n=n, dim=dim, dtype=dtype, shard_size=shard_size, settings=settings or {},
                          scorings=list(scorings))
        same = {"done": [], "key": key, "settings": {}, "scorings": []}
        changed = ["settings"] if manifest is None else \
            key_changes(manifest.key, key) + key_changes(asdict(manifest) | same, asdict(wanted) | same)
        if changed:
            if self.folder.exists():
                log.info("%s: vectors of other %s are replaced", self.folder, ", ".join(changed))
                shutil.rmtree(self.folder)
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.manifest_path, asdict(wanted))
            return wanted
        manifest.done = self.finished(manifest)
        latest = {"settings": settings or manifest.settings, "scorings": list(scorings)}
        if any(getattr(manifest, k) != v for k, v in latest.items()):  # the same vectors' latest use (finalize reads it)
            manifest.settings, manifest.scorings = latest["settings"], latest["scorings"]
            atomic_write_json(self.manifest_path, asdict(manifest))
        if manifest.done:
            log.info("%s: resuming; %d of %d shards already done", self.folder, len(manifest.done), manifest.shards)
        return manifest

    def finished(self, manifest: Manifest) -> list[int]:
        """The shards whose files exist (each is whole: written under a temporary name, then renamed)."""
        return [i for i in range(manifest.shards) if self.shard_path(i).is_file()]

    def compute_shards(self, method: Method, train: Examples, manifest: Manifest, part: Part | None = None,
                       batch_size: int = 32, progress: Progress | None = None) -> list[int]:
        """Compute the missing shards of ``part`` (all of them when None); returns the shards computed. Alone
        (no part), it also records each finished shard in the manifest; a part never writes the manifest, which
        other workers read."""
        log.info("%d examples → %d × %d %s vectors in %d shard(s) of %d%s", len(train), len(train), manifest.dim,
                 manifest.dtype, manifest.shards, manifest.shard_size, f"; part {part}" if part else "")
        todo = [i for i in range(manifest.shards)
                if (part is None or part.mine(i)) and not self.shard_path(i).is_file()]
        size = manifest.shard_size
        for index in todo:
            lo, hi = index * size, min((index + 1) * size, len(train))
            report = None if progress is None else (lambda done, _total, lo=lo: progress(lo + done, len(train)))
            vectors = compute_train_vectors(method, train.subset(range(lo, hi)), batch_size, report)
            _save_npy(self.shard_path(index), vectors.astype(manifest.dtype))
            if part is None:
                manifest.done = sorted(set(manifest.done) | {index})
                atomic_write_json(self.manifest_path, asdict(manifest))
        manifest.done = self.finished(manifest)  # in memory: other workers' shards too
        if progress is not None:
            progress(len(train), len(train))
        return todo

    def finalize(self, method: Method, train: Examples, manifest: Manifest) -> Manifest:
        """Reduce the finished shards: the manifest lists them all, the method's ``finalize`` arrays (influence:
        the curvature) and the self-influence are written. A method that ``reads_rows`` (every built-in one) reads
        the shards a block of rows at a time (:class:`.rows.StoredRows`), so memory does not grow with n beyond
        the (n,) self-influence. Refuses, changing nothing, while a shard is missing."""
        missing = [i for i in range(manifest.shards) if not self.shard_path(i).is_file()]
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (", …" if len(missing) > 10 else "")
            raise DatablameError(f"{len(missing)} of {manifest.shards} vector shards are missing in {self.folder} "
                                 f"(shard {shown})", "run their --shard I/N jobs again (each computes only what it "
                                 "lacks), or the command without --shard, then finalize")
        manifest.done = list(range(manifest.shards))
        atomic_write_json(self.manifest_path, asdict(manifest))
        vectors = self.rows(manifest)
        if not getattr(method, "reads_rows", False):  # a method that wants one tensor (see Method)
            vectors = torch.from_numpy(np.asarray(vectors, dtype=np.float32))
        if hasattr(method, "finalize"):
            for name, array in method.finalize(vectors).items():
                _save_npy(self.folder / f"final-{name}.npy", array)
        self_influence = method.self_influence(vectors, torch.as_tensor(train.labels)).numpy().astype(np.float32)
        _save_npy(self.folder / "self_influence.npy", self_influence)
        return manifest

    def compute(self, method: Method, train: Examples, key: dict, dtype: str = "float32",
                shard_size: int = SHARD_SIZE, batch_size: int = 32, progress: Progress | None = None) -> Manifest:
        """Compute the missing shards, then finalize; returns the finished manifest."""
        manifest = self.plan(key, len(train), method.dim, dtype, shard_size)
        self.compute_shards(method, train, manifest, None, batch_size, progress)
        return self.finalize(method, train, manifest)

    def current(self, key: dict) -> Manifest | None:
        """The manifest when the vectors are finished and were computed under ``key``; else None."""
        manifest = self.manifest()
        return None if manifest is None or not manifest.complete or key_changes(manifest.key, key) else manifest

    def finalized(self, key: dict) -> dict[str, np.ndarray]:
        """The arrays the method's ``finalize`` stored (name → array) when the vectors are finished and were
        computed under ``key``; else none."""
        if self.current(key) is None:
            return {}
        return {p.stem[len("final-"):]: np.load(p) for p in sorted(self.folder.glob("final-*.npy"))}

    def load(self, manifest: Manifest | None = None) -> np.ndarray:
        """(n, D) vectors in id order, in their stored dtype, loaded whole."""
        return np.asarray(self.rows(manifest))

    def rows(self, manifest: Manifest | None = None) -> StoredRows:
        """The (n, D) vectors in id order, read from their shards as needed (:class:`.rows.StoredRows`)."""
        manifest = manifest or self.manifest()
        if manifest is None or not manifest.complete:
            raise DatablameError(f"the vectors in {self.folder} are missing or unfinished",
                                 "run 'datablame vectors' for this method (it resumes where it stopped)")
        return StoredRows([self.shard_path(i) for i in range(manifest.shards)])

    def self_influence(self) -> np.ndarray:
        """(n,) float32 self-influence of every training example."""
        path = self.folder / "self_influence.npy"
        if not path.is_file():
            raise DatablameError(f"no self-influence in {self.folder}", "run 'datablame vectors' for this method")
        return np.load(path)


POINTS = ("checkpoint", "optimum")
"""The linearization points one vector set can be taken at (``MethodSettings.at`` besides ``auto``)."""


def vector_sets(built: Built, at: str, scorings: Sequence[str] = SCORINGS) -> dict[str, tuple[str, ...]]:
    """{point: the scorings whose index reads the vectors taken there}, for a method built at the checkpoint.

    ``at="auto"``: influence functions on a linear softmax head take two sets, the raw (counterfactual) scoring's
    at the head's damped optimum and the cosine (similar-effect) scoring's at the checkpoint. Measured in
    ``bench/``: the optimum raises raw's LDS from 0.873 to 0.905 (``faithfulness.py``) and what removing the raw
    top 10 does to a margin (1.40 → 1.47 nats, ``verify.py``), and lowers how well cosine lists name planted
    causes (0.305 → 0.267 per query, ``artifacts.py``). Any other method, or parameters beyond such a head: one
    set at the checkpoint. ``checkpoint`` or ``optimum``: one set there (influence functions only; the other
    methods have no such point and take the checkpoint)."""
    if not hasattr(built.method, "has_optimum"):
        return {"checkpoint": tuple(scorings)}
    if at != "auto":
        return {at: tuple(scorings)}
    if not built.method.has_optimum:
        return {"checkpoint": tuple(scorings)}
    sets = {"checkpoint": tuple(s for s in scorings if s != "raw"), "optimum": tuple(s for s in scorings if s == "raw")}
    return {point: chosen for point, chosen in sets.items() if chosen}


@dataclass
class VectorSet:
    """One set of a method's vectors: the method built at its point, its store, its manifest."""

    built: Built
    store: VectorStore
    manifest: Manifest

    @property
    def scorings(self) -> list[str]:
        return self.manifest.scorings


def stored_sets(workdir: str | Path, method: str) -> list[VectorStore]:
    """The method's vector folders that hold a manifest, one per point."""
    wd = Workdir(workdir)
    return [store for store in (VectorStore(wd.vectors_dir(method, p)) for p in POINTS) if store.manifest()]


def compute_vector_sets(workdir: str | Path, method: str, settings: MethodSettings = MethodSettings(),
                        dtype: str = "float32", batch_size: int = 32, progress: Progress | None = None,
                        shard_size: int = SHARD_SIZE, part: Part | None = None,
                        planned: Callable[[], None] | None = None,
                        scorings: Sequence[str] = SCORINGS) -> list[VectorSet]:
    """:func:`compute_vectors` for each of :func:`vector_sets` (``settings.at`` may be ``auto``): one set, or for
    influence functions on a head two, each at its point and serving its scorings; a set's scorings are taken
    from the method's other stored set, so that every scoring's index has one source."""
    first = replace(settings, at="checkpoint" if settings.at == "auto" else settings.at)
    built = build_method(Workdir(workdir), method, first, progress)
    sets = []
    for point, chosen in vector_sets(built, settings.at, scorings).items():
        here = replace(settings, at=point)
        for other in stored_sets(workdir, method):
            manifest = other.manifest()
            if other.folder != Workdir(workdir).vectors_dir(method, point) and set(manifest.scorings) & set(chosen):
                manifest.scorings = [s for s in manifest.scorings if s not in chosen]
                atomic_write_json(other.manifest_path, asdict(manifest))
        sets.append(VectorSet(*compute_vectors(workdir, method, here, dtype, batch_size, progress, shard_size, part,
                                               planned, chosen, built if point == first.at else None)))
    return sets


def compute_vectors(workdir: str | Path, method: str, settings: MethodSettings = MethodSettings(),
                    dtype: str = "float32", batch_size: int = 32, progress: Progress | None = None,
                    shard_size: int = SHARD_SIZE, part: Part | None = None,
                    planned: Callable[[], None] | None = None, scorings: Sequence[str] = SCORINGS,
                    built: Built | None = None) -> tuple[Built, VectorStore, Manifest]:
    """Build ``method`` from the workdir's checkpoints (or take ``built``, the same) and compute its missing vector
    shards under its folder (``WORKDIR/vectors/<method>/``, see :meth:`.Workdir.vectors_dir`), recorded as
    serving the indexes of ``scorings``; returns the built method, its store and the manifest.

    Alone (``part`` None) the vectors are then finalized (manifest, curvature, self-influence). A part computes
    its own shards only and leaves them for :func:`finalize_vectors`. ``planned``: a barrier shared by the workers
    (torchrun): part 0 writes the plan before it, the others read it after it."""
    wd = Workdir(workdir)
    built = built or build_method(wd, method, settings, progress)
    store = VectorStore(wd.vectors_dir(method, settings.at))

    def plan() -> Manifest:
        return store.plan(built.key, len(built.train), built.method.dim, dtype, shard_size, settings.to_dict(),
                          scorings)

    first = planned is None or part is None or part.index == 0
    manifest = plan() if first else None
    if planned is not None:
        planned()
    manifest = manifest or plan()
    store.compute_shards(built.method, built.train, manifest, part, batch_size, progress)
    if part is None:
        manifest = store.finalize(built.method, built.train, manifest)
    return built, store, manifest


def finalize_vectors(workdir: str | Path, method: str, device: str = "auto",
                     progress: Progress | None = None) -> list[VectorSet]:
    """Finalize the vector sets that ``--shard`` jobs computed (those serving an index): each method is built with
    the settings they recorded, refused when the workdir changed since (other data or weights), and nothing is
    computed but the reduction."""
    stores = [s for s in stored_sets(workdir, method) if s.manifest().scorings]
    if not stores:
        raise DatablameError(f"no {method} vectors in {Workdir(workdir).vectors_dir(method)} to finalize",
                             f"compute them first: 'datablame index {workdir} --method {method} --shard I/N'")
    sets = []
    for store in stores:
        manifest = store.manifest()
        built = build_method(Workdir(workdir), method, MethodSettings.from_dict(manifest.settings, device), progress)
        changed = key_changes(manifest.key, built.key)
        if changed:
            raise DatablameError(f"the {method} vectors in {store.folder} were computed from other "
                                 f"{', '.join(changed)}", "compute them again with their --shard jobs, or without "
                                 "--shard")
        sets.append(VectorSet(built, store, store.finalize(built.method, built.train, manifest)))
    return sets
