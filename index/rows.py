"""Vectors stored as .npy shards, read without loading them whole.

:class:`StoredRows` is what an index that does not hold the vectors itself (IVF-PQ) reads: the shards in order, one
at a time, to train and fill the index and to measure its recall; and any rows by id, through memory maps, to
re-rank its candidates exactly. Rows by id are read with ``os.pread``, not memory maps, so that what they read
stays page cache and never counts as the process's memory. It also behaves as the (n, D) array where a whole array
is wanted (``np.asarray``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Iterator, Sequence

import numpy as np

OPEN_FILES = 256
"""Shards kept open at once for reading rows by id (the least recently used is closed first)."""


def npy_header(path: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """The shape, dtype and data offset (bytes) of a C-ordered .npy file, from its header alone."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError(f"{path} holds a Fortran-ordered array")
        return shape, dtype, f.tell()


class StoredRows:
    """(n, D) rows held in ``paths``, .npy files of (n_s, D) rows each, concatenated in order (ids 0 … n − 1).

    ``len``, ``shape`` and ``dtype`` as an array's; ``rows[ids]`` for an int array or a slice gives (m, D) float32
    rows (a range of ids in one read per shard it spans); :meth:`chunks` yields the shards in order; ``np.asarray(rows)`` loads them all."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise ValueError("no shards")
        headers = [npy_header(p) for p in self.paths]
        self.offsets = np.concatenate([[0], np.cumsum([shape[0] for shape, _, _ in headers])]).astype(np.int64)
        self.dtype = headers[0][1]
        if any(dtype != self.dtype for _, dtype, _ in headers):
            raise ValueError(f"shards of different dtypes in {self.paths[0]} …")
        self.shape = (int(self.offsets[-1]), int(headers[0][0][1]))
        self._starts = np.array([start for _, _, start in headers], dtype=np.int64)  # data offsets, bytes
        self._files: OrderedDict[int, int] = OrderedDict()

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, ids: np.ndarray | slice) -> np.ndarray:
        size = self.shape[1] * self.dtype.itemsize  # bytes per row (every shard has the first one's dtype)
        if isinstance(ids, slice) and ids.indices(len(self))[2] == 1:  # a range: one read per shard it spans
            lo, hi, _ = ids.indices(len(self))
            spans = [(s, max(lo, int(a)), min(hi, int(b))) for s, (a, b) in
                     enumerate(zip(self.offsets[:-1], self.offsets[1:])) if a < hi and b > lo]
            data = b"".join(os.pread(self._file(s), (b - a) * size, int(self._starts[s]) + (a - int(self.offsets[s]))
                                     * size) for s, a, b in spans)
            count = max(0, hi - lo)
        else:
            ids = np.arange(*ids.indices(len(self))) if isinstance(ids, slice) else np.asarray(ids, dtype=np.int64)
            shard = np.searchsorted(self.offsets, ids, side="right") - 1
            starts = self._starts[shard] + (ids - self.offsets[shard]) * size
            data = b"".join([os.pread(self._file(s), size, at) for s, at in zip(shard.tolist(), starts.tolist())])
            count = len(ids)
        return np.frombuffer(data, dtype=self.dtype).reshape(count, self.shape[1]).astype(np.float32)

    def _file(self, shard: int) -> int:
        if shard in self._files:
            self._files.move_to_end(shard)
        else:
            self._files[shard] = os.open(self.paths[shard], os.O_RDONLY)
            if len(self._files) > OPEN_FILES:
                os.close(self._files.popitem(last=False)[1])
        return self._files[shard]

    def __del__(self) -> None:
        for fd in getattr(self, "_files", {}).values():
            os.close(fd)

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first id, (n_s, D) float32 rows) of each shard in order, each read whole and then let go (a stream
        that never holds more than one shard)."""
        for start, path in zip(self.offsets, self.paths):
            yield int(start), np.load(path).astype(np.float32, copy=False)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = np.concatenate([np.load(p) for p in self.paths])
        return whole if dtype is None else whole.astype(dtype, copy=False)


class ArrayRows:
    """An (n, D) array in memory with :class:`StoredRows`'s reading interface (chunks of ``chunk`` rows)."""

    def __init__(self, array: np.ndarray, chunk: int = 65_536):
        self.array, self.chunk = array, chunk
        self.shape, self.dtype = array.shape, array.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, ids: np.ndarray | slice) -> np.ndarray:
        return np.asarray(self.array[ids], dtype=np.float32)

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(self), self.chunk):
            yield start, np.asarray(self.array[start:start + self.chunk], dtype=np.float32)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self.array, dtype=dtype)
