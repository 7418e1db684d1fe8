"""Seeded random projections P (k × p) that sketch p-dimensional gradients down to k dimensions.

Both projectors satisfy E[<Px, Py>] = <x, y>, and neither ever holds P whole when p is large: P is generated
column-chunk by column-chunk from ``(seed, chunk index)``, so the same seed gives the same P on any device and
for any batch size. Chunks are cached while they fit in ``cache_bytes``.

- :class:`CountSketch` (sparse JL / SJLT): each input coordinate goes to ``nnz`` hashed output rows with random
  signs ±1/sqrt(nnz). Cost O(b · p · nnz), memory O(p · nnz) when cached. The default.
- :class:`GaussianProjection`: dense N(0, 1/k) entries. The textbook JL transform; O(b · p · k), slow for big p.

Two projectors are exact (``exact = True``: every inner product of gradients kept, so sketch error is nil):
:class:`Identity`, and :class:`SoftmaxBasis`, which drops the one direction per class-independent coordinate that
a softmax head's gradients never take.
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
    exact: bool
    """Whether <Px, Py> = <x, y> for every gradient x, y this projector is used for (not only in expectation); an
    exact projector also has ``expand(v)``, (m, out_dim) → (m, in_dim), the gradient that ``v`` projects from."""

    def __call__(self, x: Tensor) -> Tensor:
        """(b, in_dim) -> (b, out_dim) float32."""

    def describe(self) -> dict:
        """JSON-able description (kind, dims, seed) to record beside the sketches."""


class _Chunked:
    kind = ""
    exact = False

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
    exact = True

    def __init__(self, in_dim: int, seed: int = 0):
        self.in_dim = self.out_dim = in_dim
        self.seed = seed

    def __call__(self, x: Tensor) -> Tensor:
        return x.float()

    def expand(self, v: Tensor) -> Tensor:
        """(m, out_dim) → (m, in_dim): the gradient whose projection is ``v`` (itself)."""
        return v

    def describe(self) -> dict:
        return {"kind": self.kind, "in_dim": self.in_dim, "out_dim": self.out_dim, "seed": self.seed}


def contrasts(k: int) -> Tensor:
    """(K, K − 1) float32 Helmert contrasts: orthonormal columns that each sum to 0, a basis of
    {r ∈ R^K: Σ r = 0}."""
    basis = torch.zeros(k, k - 1)
    for j in range(1, k):
        basis[:j, j - 1] = 1.0 / math.sqrt(j * (j + 1))
        basis[j, j - 1] = -j / math.sqrt(j * (j + 1))
    return basis


class SoftmaxBasis:
    """Exact gradients of a linear softmax head in (K − 1)/K of the dimensions: half for two classes.

    The gradient of any function of the logits that adding one constant to every logit leaves unchanged (the
    cross-entropy, TRAK's margin: every function of the probabilities) has logit gradient r (K,) with Σ r = 0, so
    its gradient over the head's weight (K, h) and bias (K,) is r ⊗ [x, 1]. In the basis B (K, K − 1) of
    :func:`contrasts` it is Bᵀr ⊗ [x, 1], with every inner product unchanged. A (K, K) Hessian block structure of
    the same loss keeps such vectors in that subspace too, so an exact curvature solved in parameter space and then
    projected stays exact. ``sizes``: the numel of each selected head parameter in gradient order, each (K, ·)
    row-major; p = Σ sizes, k = p (K − 1) / K.
    """

    kind = "softmax-basis"
    exact = True

    def __init__(self, sizes: list[int], classes: int, seed: int = 0):
        if classes < 2 or any(size % classes for size in sizes):
            raise ValueError(f"parameter sizes {sizes} are not (K = {classes}, ·) blocks")
        self.sizes, self.classes, self.seed = list(sizes), classes, seed
        self.in_dim = sum(sizes)
        self.out_dim = self.in_dim * (classes - 1) // classes
        self._basis = contrasts(classes)

    def _map(self, x: Tensor, rows: int, matrix: Tensor) -> Tensor:
        """Each parameter's (b, rows, d) block of ``x`` → (b, columns of matrix, d) by ``matrix`` (rows, ·)."""
        out, lo = [], 0
        for size in self.sizes:
            width = size * rows // self.classes
            block = x[:, lo:lo + width].reshape(len(x), rows, -1)
            out.append(torch.einsum("brd,rc->bcd", block, matrix.to(x.device)).reshape(len(x), -1))
            lo += width
        return torch.cat(out, 1)

    def __call__(self, x: Tensor) -> Tensor:
        """(b, p) → (b, k) float32."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"projector expects {self.in_dim} inputs, got {x.shape[-1]}")
        return self._map(x.float(), self.classes, self._basis)

    def expand(self, v: Tensor) -> Tensor:
        """(m, k) → (m, p): the gradient (in the subspace) whose projection is ``v``."""
        return self._map(v.float(), self.classes - 1, self._basis.T)

    def describe(self) -> dict:
        return {"kind": self.kind, "in_dim": self.in_dim, "out_dim": self.out_dim, "seed": self.seed,
                "sizes": self.sizes, "classes": self.classes}


PROJECTIONS = {"countsketch": CountSketch, "gaussian": GaussianProjection}


def make_projector(kind: str, in_dim: int, out_dim: int | None = DEFAULT_DIM, seed: int = 0) -> Projector:
    """A projector by name; ``out_dim`` None or ≥ ``in_dim`` gives the identity (no sketch needed)."""
    if out_dim is None or out_dim >= in_dim or kind == "identity":
        return Identity(in_dim, seed)
    if kind not in PROJECTIONS:
        raise ValueError(f"unknown projection {kind!r}; choose one of {', '.join(PROJECTIONS)}")
    return PROJECTIONS[kind](in_dim, out_dim, seed)
