"""Curvatures: the optional part that preconditions an influence query, u_q = (curvature + λI)⁻¹ applied to the
query's gradient g (p,), so that score(i, q) = <v_i, u_q> stays one inner product with the training vector v_i.

============== ====================== ============================================== ===============
curvature      query vector u_q       computed once, when the vectors are finished   per query
============== ====================== ============================================== ===============
:class:`Lissa` P (H + λI)⁻¹ g (LiSSA) VᵀV/n (only for ``query_like``)                 depth × HVPs
:class:`Sketch` (VᵀV/n + λI)⁻¹ P g    VᵀV/n, (k, k): the damped Gauss-Newton          one k × k solve
                                      (empirical Fisher) of the sketches V, as TRAK's
:class:`Exact` P (H + λI)⁻¹ g         H, (p, p), from p Hessian-vector products      one p × p solve
============== ====================== ============================================== ===============

H is the Hessian of the mean training loss (nats) over the selected parameters at the final checkpoint, P the
method's projection, λ the damping: the configured one, or (auto) the mean eigenvalue of the matrix it damps.
Finalized matrices are stored undamped (λ is a query-side setting) beside the vectors and handed back to a
query process with :meth:`Curvature.use_finalized`. Another curvature (EK-FAC, say) is one more subclass: what it
finalizes, and how it maps gradients to query vectors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .errors import DatablameError, check_choice
from .lissa import HessianVectorProducts, LissaConfig, LissaReport, lissa, top_eigenvalue
from .sketch import Projector

EXACT_MAX_PARAMS = 4096
"""The most selected parameters the exact curvature takes: a (p, p) float64 Hessian of 128 MB, p HVPs to build;
also the most for which ``curvature="auto"`` chooses it and an automatic sketch dimension keeps exact gradients."""
LISSA_AUTO_DAMPING = 0.01
"""LiSSA's λ under ``damping=None`` (auto): chosen for the convergence of its series, not measured for accuracy."""
MIN_AUTO_DAMPING = 1e-8
"""The least automatic λ (a curvature that is all zeros still gets a solvable system)."""


def mean_eigenvalue(matrix: Tensor, dims: int | None = None) -> float:
    """The automatic λ: trace(M)/d, the mean eigenvalue of M over d dimensions (``dims``, else M's size), at least
    :data:`MIN_AUTO_DAMPING`."""
    return max(float(torch.trace(matrix)) / (dims or matrix.shape[0]), MIN_AUTO_DAMPING)

HESSIAN_CHUNK = 128
"""Basis vectors per Hessian-vector product call when the exact Hessian is built (p / 128 passes over the data)."""

Products = Callable[[int | None], HessianVectorProducts]
"""minibatch size (None: the whole training set) → Hessian-vector products of the mean training loss."""


class Curvature(ABC):
    """What answers influence queries. ``config``: LiSSA's settings, whose ``damping`` (None: auto) every
    curvature adds; ``products``: the Hessian-vector products of the model's training loss, made on demand."""

    name: str
    cost: str
    """What one query costs beyond its gradient (the timing line)."""

    def __init__(self, config: LissaConfig, products: Products, gram_dims: int | None = None):
        self.config, self.products, self.gram_dims = config, products, gram_dims
        self.finalized: dict[str, Tensor] = {}  # undamped float64 matrices by name, once finalized
        self.objective_damping: float | None = None  # λ of the damped optimum the Hessian is taken at, if any
        self._factors: dict[str, Tensor] = {}  # Cholesky factors of the damped matrices, made on first use

    def damping(self, matrix: Tensor | None = None, dims: int | None = None) -> float:
        """λ: the configured damping, or with ``damping=None`` (auto) the mean eigenvalue trace(M)/d of the
        matrix M it damps (:data:`LISSA_AUTO_DAMPING` for LiSSA, which has no M in hand). d: ``dims``, else M's
        size; the Gram matrix of exact vectors in a :class:`.sketch.SoftmaxBasis` (k, k) is damped as the (p, p)
        Gram of the unprojected gradients, whose eigenvalues it has, plus p − k zeros (``gram_dims`` = p)."""
        if self.config.damping is not None:
            return self.config.damping
        if matrix is None:
            return LISSA_AUTO_DAMPING
        return mean_eigenvalue(matrix, dims)

    def damping_for(self, name: str) -> float:
        """λ added to the finalized matrix ``name``: the configured damping; under auto, for the exact ``hessian``
        taken at a damped optimum (:mod:`.optimum`), that optimum's own λ (H + λI is then the Hessian of the
        objective the head minimises), else :meth:`damping` of the matrix."""
        if self.config.damping is None and name == "hessian" and self.objective_damping is not None:
            return self.objective_damping
        return self.damping(self.finalized[name], self.gram_dims if name == "gram" else None)

    def finalize(self, gram: Tensor) -> dict[str, np.ndarray]:
        """Keep ``gram``, the (k, k) float64 VᵀV/n of the finished training sketches, and whatever else this
        curvature computes once; returns every matrix (undamped), to store beside the vectors."""
        self.finalized, self._factors = {"gram": gram, **self.computed_once()}, {}
        return {name: m.numpy() for name, m in self.finalized.items()}

    def computed_once(self) -> dict[str, Tensor]:
        """Matrices besides the Gram matrix that :meth:`finalize` computes (none here)."""
        return {}

    def use_finalized(self, arrays: dict[str, np.ndarray]) -> None:
        """Take the arrays :meth:`finalize` made (read back from beside the vectors)."""
        self.finalized, self._factors = {name: torch.from_numpy(a) for name, a in arrays.items()}, {}

    def solve(self, name: str, rows: Tensor) -> Tensor:
        """(m, d) → (m, d) float64 (M + λI)⁻¹ x for each row x, M the finalized matrix ``name``."""
        if name not in self.finalized:
            what, flag = ("sketch-space curvature", "") if name == "gram" else ("exact Hessian", " --curvature exact")
            raise DatablameError(f"the influence vectors' {what} is missing or stale",
                                 f"rebuild with 'datablame index WORKDIR --method influence{flag}'")
        if name not in self._factors:
            matrix, lam = self.finalized[name], self.damping_for(name)
            damped = matrix + lam * torch.eye(matrix.shape[0], dtype=torch.float64)
            self._factors[name] = torch.linalg.cholesky(damped)
        return torch.cholesky_solve(rows.double().cpu().T, self._factors[name]).T

    @abstractmethod
    def query(self, grads: Tensor, projector: Projector) -> Tensor:
        """(m, p) query gradients → (m, D) float32 query vectors on CPU."""

    def query_like(self, vectors: Tensor, projector: Projector) -> Tensor:
        """(m, D) training vectors as queries see them (where an approximate index measures its recall): through
        the sketch-space curvature."""
        return self.solve("gram", vectors).float()


class Lissa(Curvature):
    """(H + λI)⁻¹ g by LiSSA per query, in parameter space: the same minibatches and scale for every call, so a
    query's answer does not depend on the queries before it; the last run's convergence is ``last_report``."""

    name = "lissa"

    def __init__(self, config: LissaConfig, products: Products, gram_dims: int | None = None):
        super().__init__(config, products, gram_dims)
        self.hvp: HessianVectorProducts | None = None  # kept between queries (it caches head features)
        self.scale: float | None = config.scale  # estimated once (power iteration), then kept
        self.last_report: LissaReport | None = None

    @property
    def cost(self) -> str:
        return f"gradient + LiSSA ({self.config.depth} Hessian-vector products per query)"

    def inverse_hvp(self, grads: Tensor) -> Tensor:
        """(m, p) → (m, p): (H + λI)⁻¹ applied to each row."""
        if self.hvp is None:
            self.hvp = self.products(self.config.batch_size)
        config = replace(self.config, damping=self.damping())
        if self.scale is None:
            self.hvp.reset()
            self.scale = 2.0 * (top_eigenvalue(self.hvp, grads.shape[1], seed=config.seed) + config.damping)
        self.hvp.reset()
        ihvp, self.last_report = lissa(self.hvp, grads, replace(config, scale=self.scale))
        return ihvp

    def query(self, grads: Tensor, projector: Projector) -> Tensor:
        return projector(self.inverse_hvp(grads)).cpu()


class Sketch(Curvature):
    """The damped Gauss-Newton matrix of the training sketches: u_q = (VᵀV/n + λI)⁻¹ P g."""

    name = "sketch"
    cost = "gradient + sketch-space curvature solve"

    def query(self, grads: Tensor, projector: Projector) -> Tensor:
        return self.solve("gram", projector(grads).cpu()).float()


class Exact(Curvature):
    """The explicit Hessian over the selected parameters (at most :data:`EXACT_MAX_PARAMS`), built once:
    u_q = P (H + λI)⁻¹ g, exact up to the damping λ."""

    name = "exact"
    cost = "gradient + exact damped Hessian solve"

    def __init__(self, config: LissaConfig, products: Products, params: int,
                 closed_form: Callable[[], Tensor | None] | None = None, gram_dims: int | None = None):
        super().__init__(config, products, gram_dims)
        self.params, self.closed_form = params, closed_form

    def computed_once(self) -> dict[str, Tensor]:
        return {"hessian": self.hessian()}

    def hessian(self, chunk: int = HESSIAN_CHUNK) -> Tensor:
        """(p, p) float64 Hessian of the mean training loss: in closed form where ``closed_form`` gives one (a
        linear head's cross-entropy), else from p Hessian-vector products over the whole training set (head
        parameters: on cached features), symmetrised."""
        closed = self.closed_form() if self.closed_form is not None else None
        if closed is not None:
            return closed
        hvp, eye = self.products(None), torch.eye(self.params)
        h = torch.cat([hvp(eye[i:i + chunk]).double().cpu() for i in range(0, self.params, chunk)])
        return (h + h.T) / 2

    def query(self, grads: Tensor, projector: Projector) -> Tensor:
        return projector(self.solve("hessian", grads).float()).cpu()

    def query_like(self, vectors: Tensor, projector: Projector) -> Tensor:
        """Through the exact Hessian when the vectors are exact gradients (``projector.exact``), else the sketch's
        curvature."""
        if projector.exact:
            return projector(self.solve("hessian", projector.expand(vectors)).float())
        return super().query_like(vectors, projector)


def make_curvature(name: str, config: LissaConfig, products: Products, params: int,
                   closed_form: Callable[[], Tensor | None] | None = None,
                   gram_dims: int | None = None) -> Curvature:
    """The curvature ``name`` (``lissa``, ``sketch`` or ``exact``; ``auto`` is resolved by the method's builder)
    over ``params`` selected parameters; ``closed_form``: the exact Hessian without Hessian-vector products, where
    the gradient computer has one; ``gram_dims``: the eigenvalues the training vectors' Gram matrix stands for
    (see :meth:`Curvature.damping`)."""
    if name == "exact":
        if params > EXACT_MAX_PARAMS:
            raise DatablameError(f"the exact curvature needs at most {EXACT_MAX_PARAMS} selected parameters, not "
                                 f"{params}", "use --params head, or --curvature sketch or lissa")
        return Exact(config, products, params, closed_form, gram_dims)
    check_choice("curvature", name, ("lissa", "sketch", "exact"))
    return {"lissa": Lissa, "sketch": Sketch}[name](config, products, gram_dims)
