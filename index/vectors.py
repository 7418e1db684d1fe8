"""Training vectors on disk: sharded, written atomically, resumable.

Layout of ``WORKDIR/vectors/<method>/``::

    manifest.json        what the vectors were computed from (the key), n, dim, dtype, shard size, done shards
    shard-00000.npy …    (shard_size, D) rows in example-id order, float32 or float16
    self_influence.npy   (n,) float32, once every shard is done
    final-<name>.npy     what the method computes once from all vectors (influence: the (k, k) curvature)

A shard is whole or absent (temporary name, then rename), and the manifest lists it only after it exists, so an
interrupted run resumes at the first missing shard. A manifest whose key differs (other data, checkpoints,
parameters, projection or seed) is discarded and the vectors are recomputed.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from datablame.influence.build import Built, MethodSettings, build_method, key_changes
from datablame.influence.data import Examples
from datablame.influence.errors import DatablameError, check_choice
from datablame.influence.lissa import Progress
from datablame.influence.methods import Method, compute_train_vectors
from datablame.influence.atomic import atomic_write_bytes, atomic_write_json
from datablame.influence.workdir import Workdir

DTYPES = ("float32", "float16")
log = logging.getLogger(__name__)


@dataclass
class Manifest:
    key: dict
    n: int
    dim: int
    dtype: str = "float32"
    shard_size: int = 4096
    done: list[int] = field(default_factory=list)

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

    def compute(self, method: Method, train: Examples, key: dict, dtype: str = "float32", shard_size: int = 4096,
                batch_size: int = 32, progress: Progress | None = None) -> Manifest:
        """Compute the missing shards, then the self-influence; returns the finished manifest."""
        check_choice("dtype", dtype, DTYPES)
        manifest = self.manifest()
        wanted = Manifest(key=key, n=len(train), dim=method.dim, dtype=dtype, shard_size=shard_size)
        changed = ["settings"] if manifest is None else \
            key_changes(manifest.key, key) + key_changes(asdict(manifest) | {"done": [], "key": key}, asdict(wanted))
        if changed:
            if self.folder.exists():
                log.info("%s: vectors of other %s are replaced", self.folder, ", ".join(changed))
                shutil.rmtree(self.folder)
            manifest = wanted
        elif manifest.done:
            log.info("%s: resuming; %d of %d shards already done", self.folder, len(manifest.done), manifest.shards)
        log.info("%d examples → %d × %d %s vectors in %d shard(s) of %d", len(train), len(train), method.dim, dtype,
                 manifest.shards, shard_size)
        self.folder.mkdir(parents=True, exist_ok=True)
        for index in range(manifest.shards):
            if index in manifest.done and self.shard_path(index).is_file():
                continue
            lo, hi = index * shard_size, min((index + 1) * shard_size, len(train))
            part = train.subset(range(lo, hi))
            report = None if progress is None else (lambda done, _total, lo=lo: progress(lo + done, len(train)))
            vectors = compute_train_vectors(method, part, batch_size, report)
            _save_npy(self.shard_path(index), vectors.astype(dtype))
            manifest.done = sorted(set(manifest.done) | {index})
            atomic_write_json(self.manifest_path, asdict(manifest))
        if progress is not None:
            progress(len(train), len(train))
        vectors = torch.from_numpy(self.load(manifest).astype(np.float32))
        if hasattr(method, "finalize"):
            for name, array in method.finalize(vectors).items():
                _save_npy(self.folder / f"final-{name}.npy", array)
        self_influence = method.self_influence(vectors, torch.as_tensor(train.labels)).numpy().astype(np.float32)
        _save_npy(self.folder / "self_influence.npy", self_influence)
        return manifest

    def finalized(self, key: dict) -> dict[str, np.ndarray]:
        """The arrays the method's ``finalize`` stored (name → array) when the vectors are finished and were
        computed under ``key``; else none."""
        manifest = self.manifest()
        if manifest is None or not manifest.complete or key_changes(manifest.key, key):
            return {}
        return {p.stem[len("final-"):]: np.load(p) for p in sorted(self.folder.glob("final-*.npy"))}

    def load(self, manifest: Manifest | None = None) -> np.ndarray:
        """(n, D) vectors in id order, in their stored dtype."""
        manifest = manifest or self.manifest()
        if manifest is None or not manifest.complete:
            raise DatablameError(f"the vectors in {self.folder} are missing or unfinished",
                                 "run 'datablame vectors' for this method (it resumes where it stopped)")
        return np.concatenate([np.load(self.shard_path(i)) for i in range(manifest.shards)])

    def self_influence(self) -> np.ndarray:
        """(n,) float32 self-influence of every training example."""
        path = self.folder / "self_influence.npy"
        if not path.is_file():
            raise DatablameError(f"no self-influence in {self.folder}", "run 'datablame vectors' for this method")
        return np.load(path)


def compute_vectors(workdir: str | Path, method: str, settings: MethodSettings = MethodSettings(),
                    dtype: str = "float32", batch_size: int = 32,
                    progress: Progress | None = None) -> tuple[Built, VectorStore, Manifest]:
    """Build ``method`` from the workdir's checkpoints and compute its missing vector shards (and self-influence)
    under ``WORKDIR/vectors/<method>/``; returns the built method, its store and the finished manifest."""
    wd = Workdir(workdir)
    built = build_method(wd, method, settings, progress)
    store = VectorStore(wd.vectors_dir(method))
    return built, store, store.compute(built.method, built.train, built.key, dtype, batch_size=batch_size,
                                       progress=progress)

