"""The training set's penultimate features, computed once per encoder and cached on disk.

When gradients are taken over the head only (the default after ``train --freeze-encoder``), nothing below the
head changes, and a training example's penultimate features f_i (the head's input, (h,) float32) are all that its
per-example gradient, the Hessian-vector products of LiSSA and the representer refit need from the encoder.
Checkpoints that differ only in their head share one encoder and so one feature matrix: TracIn over C
checkpoints, the influence vectors and LiSSA's minibatches run the encoder over each training example once in
all, and a later process (``explain``) reads the matrix from disk instead of running the encoder again.

    WORKDIR/cache/features/<key>.npy     (n, h) float32, row i = f_i of training example i
    WORKDIR/cache/features/<key>.shards/rows-<lo>-<hi>.npy    (hi − lo, h) rows lo … hi − 1, from parts

``key`` hashes the training texts, the task (its class, ``max_length`` and pooling) and every parameter and buffer outside
the head (names, shapes, dtypes, bytes), so a changed encoder, tokenization length or dataset never reads stale
features, while checkpoints whose encoders are equal find each other's. Rows live in memory, filled as they are
asked for; the file is written (temporary name, then rename) once every row is known, and read back as a memory
map (copy on write), so a reader of some rows never loads all of them.

Parts of a sharded run (``scan --shard I/N``, torchrun) write a range of rows each
(:meth:`TrainFeatures.compute_range`), atomically, into ``<key>.shards/``. Whoever opens the features next reads
the ranges there: when they cover every row it assembles the file on disk (never all rows in memory) and removes
them; otherwise it holds the rows they give and computes only the others.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .data import Examples
from .task import Task, logits_and_features_of, model_device
from .atomic import atomic_path, atomic_write_bytes
from .workdir import Workdir

Progress = Callable[[int, int], None]
log = logging.getLogger(__name__)


def encoder_digest(task: Task, model: nn.Module) -> str:
    """BLAKE2b hex digest of the names, shapes, dtypes and bytes of every parameter and buffer outside the head."""
    head = task.head_name + "."
    h = hashlib.blake2b(digest_size=20)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if name.startswith(head):
            continue
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\0".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def same_encoder(task: Task, a: nn.Module, b: nn.Module) -> bool:
    """Whether two models have equal parameters and buffers outside the head (then equal features)."""
    if a is b:
        return True
    head = task.head_name + "."
    ta = {n: t for n, t in [*a.named_parameters(), *a.named_buffers()] if not n.startswith(head)}
    tb = {n: t for n, t in [*b.named_parameters(), *b.named_buffers()] if not n.startswith(head)}
    return ta.keys() == tb.keys() and all(
        ta[n].shape == tb[n].shape and ta[n].dtype == tb[n].dtype and torch.equal(ta[n], tb[n]) for n in ta)


def texts_digest(train: Examples) -> str:
    """BLAKE2b hex digest of the training texts, in id order (labels do not change features)."""
    return hashlib.blake2b(json.dumps(train.texts).encode(), digest_size=20).hexdigest()


def _write_npy(path: Path, array: np.ndarray) -> None:
    """``array`` as a .npy file, written atomically."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def _unwritten(n: int, h: int) -> Tensor:
    """(n, h) float32 zeros whose memory is taken only as rows are written (calloc'd pages; ``torch.zeros`` would
    touch all n × h × 4 bytes at once): a part that computes its share of rows holds that share."""
    return torch.from_numpy(np.zeros((n, h), dtype=np.float32))


class TrainFeatures:
    """(n, h) float32 penultimate features of one training set under one encoder (any model that has it).

    ``rows(ids)`` returns (b, h) features on the model's device, running the encoder only on rows never seen
    before (by this object, or by an earlier process that left the file).
    """

    def __init__(self, task: Task, model: nn.Module, train: Examples, key: str, path: Path | None = None,
                 batch_size: int = 64):
        self.task, self.model, self.train, self.key, self.path = task, model, train, key, path
        self.batch_size = batch_size
        self.encoded = 0  # training rows run through the encoder by this object
        self._rows: Tensor | None = None  # (n, h) float32 on CPU, once the width is known
        self._known = np.zeros(len(train), dtype=bool)
        if path is not None and not path.is_file():
            self._read_ranges()
        if path is not None and path.is_file():
            rows = torch.from_numpy(np.load(path, mmap_mode="c"))  # pages read as rows are asked for
            if rows.shape[0] == len(train):
                self._rows, self._known[:] = rows, True
                log.info("training features %s read from %s", tuple(rows.shape), path)

    @property
    def ranges_folder(self) -> Path | None:
        """Where the parts of a sharded run write their ranges of rows (None without a file)."""
        return None if self.path is None else self.path.with_name(self.path.stem + ".shards")

    def compute_range(self, lo: int, hi: int, progress: Progress | None = None) -> bool:
        """Compute rows lo … hi − 1 and write them to their own file, unless the whole matrix or that range is
        on disk already; whether it computed. Holds these rows only (a part of a sharded run)."""
        if self.path is None:
            raise ValueError("ranges of rows need a cache folder")
        target = self.ranges_folder / f"rows-{lo:010d}-{hi:010d}.npy"
        if self.path.is_file() or target.is_file():
            return False
        _, f = logits_and_features_of(self.task, self.model, self.train.subset(np.arange(lo, hi)),
                                      self.batch_size, progress)
        _write_npy(target, f.float().cpu().numpy())
        self.encoded += hi - lo
        return True

    def _read_ranges(self) -> None:
        """Take the ranges of rows that parts wrote: assembled into the file when they cover every row, else held
        in memory as known rows."""
        folder = self.ranges_folder
        if folder is None or not folder.is_dir():
            return
        found = []
        for path in sorted(folder.glob("rows-*.npy")):
            match = re.fullmatch(r"rows-(\d+)-(\d+)\.npy", path.name)
            rows = np.load(path, mmap_mode="r")
            lo, hi = (int(match.group(1)), int(match.group(2))) if match else (0, -1)
            if 0 <= lo < hi <= len(self.train) and rows.ndim == 2 and rows.shape[0] == hi - lo:
                found.append((lo, hi, rows))
        covered = np.zeros(len(self.train), dtype=bool)
        for lo, hi, _ in found:
            covered[lo:hi] = True
        if found and covered.all():
            with atomic_path(self.path) as tmp:
                whole = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                                  shape=(len(self.train), found[0][2].shape[1]))
                for lo, hi, rows in found:
                    whole[lo:hi] = rows
                whole.flush()
                del whole
            shutil.rmtree(folder, ignore_errors=True)
            log.info("training features assembled from %d ranges into %s", len(found), self.path)
            return
        for lo, hi, rows in found:
            if self._rows is None:
                self._rows = _unwritten(len(self.train), rows.shape[1])
            self._rows[lo:hi] = torch.from_numpy(np.array(rows, dtype=np.float32))
            self._known[lo:hi] = True

    @property
    def complete(self) -> bool:
        return bool(self._known.all())

    @property
    def nbytes(self) -> int:
        """Bytes the (n, h) matrix takes in memory (0 before its width is known)."""
        return 0 if self._rows is None else self._rows.numel() * self._rows.element_size()

    def rows(self, ids: Sequence[int] | np.ndarray, progress: Progress | None = None) -> Tensor:
        """(b, h) float32 features of the training examples with these ids, on the model's device."""
        ids = np.asarray(ids, dtype=np.int64)
        missing = np.unique(ids[~self._known[ids]])
        if len(missing):
            _, f = logits_and_features_of(self.task, self.model, self.train.subset(missing), self.batch_size,
                                          progress)
            f = f.float().cpu()
            if self._rows is None:
                self._rows = _unwritten(len(self.train), f.shape[1])
            self._rows[torch.from_numpy(missing)] = f
            self._known[missing] = True
            self.encoded += len(missing)
            if self.complete:
                self._save()
        assert self._rows is not None
        return self._rows[torch.from_numpy(ids)].to(model_device(self.model))

    def put(self, features: Tensor) -> None:
        """Record (n, h) features of every training example computed elsewhere (e.g. by frozen training)."""
        self._rows, self._known[:] = features.detach().float().cpu().clone(), True
        self._save()

    def _save(self) -> None:
        if self.path is None or self.path.is_file():
            return
        _write_npy(self.path, self._rows.numpy())
        shutil.rmtree(self.ranges_folder, ignore_errors=True)  # the parts' ranges it took


class FeatureCache:
    """The feature matrices of one training set, one per distinct encoder, in ``folder`` (None: memory only).

    ``of(task, model)`` gives the :class:`TrainFeatures` for the model's encoder; models with equal encoders (the
    checkpoints of frozen-encoder training) get the same object. ``rows(task, model, batch)`` answers for a batch
    of training examples, or None when the batch is not part of this training set (then compute directly).
    """

    def __init__(self, train: Examples, folder: str | Path | None = None):
        self.train = train
        self.folder = Path(folder) if folder is not None else None
        self._texts = texts_digest(train)
        self._by_key: dict[str, TrainFeatures] = {}
        self._by_model: list[tuple[nn.Module, TrainFeatures]] = []

    def key(self, task: Task, model: nn.Module) -> str:
        """Hex digest of (training texts, task class, max_length and pooling, encoder weights)."""
        pooling = getattr(task, "pooling", "cls")  # cls enters no key: caches made before pooling stay valid
        parts = [self._texts, type(task).__name__, str(getattr(task, "max_length", None)),
                 *([pooling] if pooling != "cls" else []), encoder_digest(task, model)]
        return hashlib.blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()

    def of(self, task: Task, model: nn.Module) -> TrainFeatures:
        for m, features in self._by_model:
            if m is model:
                return features
        key = self.key(task, model)
        if key not in self._by_key:
            path = self.folder / f"{key}.npy" if self.folder is not None else None
            self._by_key[key] = TrainFeatures(task, model, self.train, key, path)
        self._by_model.append((model, self._by_key[key]))
        return self._by_key[key]

    @property
    def nbytes(self) -> int:
        """Bytes the feature matrices of the encoders seen so far take in memory."""
        return sum(f.nbytes for f in self._by_key.values())

    def covers(self, batch: Examples) -> bool:
        """Whether every example of ``batch`` is the training example its id names."""
        n, texts = len(self.train), self.train.texts
        return all(0 <= i < n and texts[i] == t for i, t in zip(batch.ids.tolist(), batch.texts))

    def rows(self, task: Task, model: nn.Module, batch: Examples) -> Tensor | None:
        """(b, h) features of a batch of training examples, or None when the batch is not from this set."""
        if not self.covers(batch):
            return None
        return self.of(task, model).rows(batch.ids)


def features_folder(root: str | Path) -> Path:
    """Where a workdir keeps its feature matrices (:attr:`.workdir.Workdir.features_cache`)."""
    return Workdir(root).features_cache
