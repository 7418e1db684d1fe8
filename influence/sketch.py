"""Seeded random projections P (k × p) that sketch p-dimensional gradients down to k dimensions.

Both projectors satisfy E[<Px, Py>] = <x, y>, and neither ever holds P whole when p is large: P is generated
column-chunk by column-chunk from ``(seed, chunk index)``, so the same seed gives the same P on any device and
for any batch size. Chunks are cached while they fit in ``cache_bytes``.

- :class:`CountSketch` (sparse JL / SJLT): each input coordinate goes to ``nnz`` hashed output rows with random
  signs ±1/sqrt(nnz). Cost O(b · p · nnz), memory O(p · nnz) when cached. The default.
- :class:`GaussianProjection`: dense N(0, 1/k) entries. The textbook JL transform; O(b · p · k), slow for big p.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

DEFAULT_DIM = 256
DEFAULT_CHUNK = 1 << 20  # columns of P generated at a time


class Projector(Protocol):
    in_dim: int
    out_dim: int
    seed: int

    def __call__(self, x: Tensor) -> Tensor:
        """(b, in_dim) -> (b, out_dim) float32."""

    def describe(self) -> dict:
        """JSON-able description (kind, dims, seed) to record beside the sketches."""


class _Chunked:
    kind = ""

    def __init__(self, in_dim: int, out_dim: int = DEFAULT_DIM, seed: int = 0, chunk: int = DEFAULT_CHUNK,
                 cache_bytes: int = 256 << 20):
        if out_dim < 1:
            raise ValueError("projection dimension must be positive")
        self.in_dim, self.out_dim, self.seed, self.chunk = in_dim, out_dim, seed, chunk
        self._cache: dict[tuple[int, str], object] = {}
        self._cache_left = cache_bytes

    def _generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + index)

    def _make(self, index: int, width: int):
        raise NotImplementedError

    def _apply(self, part: Tensor, piece, out: Tensor) -> None:
        raise NotImplementedError

    def _piece(self, index: int, width: int, device: torch.device):
        key = (index, str(device))
        if key in self._cache:
            return self._cache[key]
        piece = tuple(t.to(device) for t in self._make(index, width))
        size = sum(t.numel() * t.element_size() for t in piece)
        if size <= self._cache_left:
            self._cache[key] = piece
            self._cache_left -= size
        return piece

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"projector expects {self.in_dim} inputs, got {x.shape[-1]}")
        x = x.float()
        out = torch.zeros(x.shape[0], self.out_dim, device=x.device, dtype=torch.float32)
        for index, start in enumerate(range(0, self.in_dim, self.chunk)):
            width = min(self.chunk, self.in_dim - start)
            self._apply(x[:, start:start + width], self._piece(index, width, x.device), out)
        return out

    def describe(self) -> dict:
        return {"kind": self.kind, "in_dim": self.in_dim, "out_dim": self.out_dim, "seed": self.seed,
                "chunk": self.chunk}


class CountSketch(_Chunked):
    """Sparse JL transform with ``nnz`` nonzeros (±1/sqrt(nnz)) per input coordinate."""

    kind = "countsketch"

    def __init__(self, in_dim: int, out_dim: int = DEFAULT_DIM, seed: int = 0, nnz: int = 1, **kw):
        super().__init__(in_dim, out_dim, seed, **kw)
        self.nnz = nnz

    def _make(self, index: int, width: int):
        g = self._generator(index)
        rows = torch.randint(self.out_dim, (self.nnz, width), generator=g)
        signs = (torch.randint(2, (self.nnz, width), generator=g) * 2 - 1).float() / math.sqrt(self.nnz)
        return rows, signs

    def _apply(self, part: Tensor, piece, out: Tensor) -> None:
        rows, signs = piece
        for r, s in zip(rows, signs):
            out.index_add_(1, r, part * s)

    def describe(self) -> dict:
        return {**super().describe(), "nnz": self.nnz}


class GaussianProjection(_Chunked):
    """Dense projection with i.i.d. N(0, 1/k) entries."""

    kind = "gaussian"

    def _make(self, index: int, width: int):
        return (torch.randn(width, self.out_dim, generator=self._generator(index)) / math.sqrt(self.out_dim),)

    def _apply(self, part: Tensor, piece, out: Tensor) -> None:
        out += part @ piece[0]


class Identity:
    """No projection (k = p): exact vectors, for small parameter sets and for tests."""

    kind = "identity"

    def __init__(self, in_dim: int, seed: int = 0):
        self.in_dim = self.out_dim = in_dim
        self.seed = seed

    def __call__(self, x: Tensor) -> Tensor:
        return x.float()

    def describe(self) -> dict:
        return {"kind": self.kind, "in_dim": self.in_dim, "out_dim": self.out_dim, "seed": self.seed}


PROJECTIONS = {"countsketch": CountSketch, "gaussian": GaussianProjection}


def make_projector(kind: str, in_dim: int, out_dim: int | None = DEFAULT_DIM, seed: int = 0) -> Projector:
    """A projector by name; ``out_dim`` None or ≥ ``in_dim`` gives the identity (no sketch needed)."""
    if out_dim is None or out_dim >= in_dim or kind == "identity":
        return Identity(in_dim, seed)
    if kind not in PROJECTIONS:
        raise ValueError(f"unknown projection {kind!r}; choose one of {', '.join(PROJECTIONS)}")
    return PROJECTIONS[kind](in_dim, out_dim, seed)
