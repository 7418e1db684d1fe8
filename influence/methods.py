"""TracIn, influence functions and representer points; every method reduced to one vector space:
score(i, q) = <v_i, u_q>.

=================== =========================================== ========================================
method              training vector v_i, (D,)                   query vector u_q, (D,)
=================== =========================================== ========================================
TracIn              concat_c sqrt(lr_c) · P g_c(z_i)            concat_c sqrt(lr_c) · P g_c(z_q, ŷ)
influence functions P g(z_i) at the final checkpoint            P (H + λI)^{-1} g(z_q, ŷ)   (exact, LiSSA or
                    (a head: at its damped optimum)             sketch-space curvature)
representer points  α_i ⊗ [f_i, 1]                              e_ŷ ⊗ [f_q, 1]
TRAK (:mod:`.trak`) Q_i · concat_m φ_m(z_i)                     (1/M) concat_m K_m^{-1} φ_m(z_q, ŷ)
=================== =========================================== ========================================

g = ∇_θ cross-entropy over the selected parameters, P a seeded projection (:mod:`.sketch`), ŷ the model's
predicted label for the query, f the penultimate features, α_i = −1/(2λn) ∂L/∂φ_i after the L2 refit of the
head. Sign everywhere: score > 0 means training example i supports the prediction (training on it lowered the
query's loss for the predicted label, or raised its logit for the representer), score < 0 means it opposes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Examples, Text
from .errors import DatablameError, check_choice
from .features import FeatureCache
from .gradients import HeadGradients, gradient_computer, labels_of
from .grads import HEAD, num_params, select_params
from .heads import fit_softmax_head, head_theta, with_bias
from .curvature import EXACT_MAX_PARAMS, make_curvature, mean_eigenvalue
from .optimum import OptimumReport, damped_optimum, fixed_head, optimum_applies, with_head
from .lissa import HessianVectorProducts, LissaConfig, LissaReport, Progress
from .registry import MethodSpec, register
from .settings import QuerySettings
from .sketch import Projector
from .task import Task, forward

if TYPE_CHECKING:
    from .build import BuildContext

@dataclass
class Queries:
    """Query vectors (b, D) float32, with the model's predicted labels (b,) and class probabilities (b, K)."""

    vectors: Tensor
    predictions: Tensor
    probabilities: Tensor


class Method(Protocol):
    """What every method provides; nothing downstream knows which method it holds.

    Optional, for a method whose query side is preconditioned by something computed from all training vectors
    (a curvature): ``finalize(vectors) -> dict[str, ndarray]`` once the (n, D) vectors are finished (stored
    beside them), ``use_finalized(arrays)`` in a query process, and ``query_like(vectors)``, training vectors
    mapped as queries are (where an approximate index measures its recall).

    ``finalize`` and ``self_influence`` get the (n, D) vectors as one tensor, unless the method sets
    ``reads_rows = True``: then they get :class:`Rows`, read a block at a time with :func:`row_blocks` (the
    stored shards, so that memory does not grow with n), as every built-in method does.
    """

    name: str
    dim: int

    def train_vectors(self, batch: Examples) -> Tensor:
        """(b, D) float32 training vectors v_i."""

    def query_vectors(self, texts: Sequence[Text]) -> Queries:
        """Query vectors u_q for the model's predicted labels."""

    def self_influence(self, vectors: Rows, labels: Tensor) -> Tensor:
        """(n,) self-influence of training examples from their (n, D) vectors and (n,) labels."""

    def describe(self) -> dict:
        """JSON-able settings to record beside the vectors."""


ROWS = 8192
"""Training vectors a reduction (Gram matrix, self-influence) takes at a time: its float64 copies stay one block,
not the whole (n, D) set."""


class Rows(Protocol):
    """(n, D) training vectors read a block of rows at a time: a Tensor in memory, or the finished shards on disk
    (:class:`datablame.index.rows.StoredRows`, whose ranges are read as float32 arrays), so that a reduction over
    millions of vectors never holds them all."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, rows: slice) -> Tensor | np.ndarray: ...


def row_blocks(vectors: Rows) -> Iterator[Tensor]:
    """Consecutive blocks of at most :data:`ROWS` rows of (n, D) vectors, each read when it is reached (views of a
    tensor)."""
    for i in range(0, vectors.shape[0], ROWS):
        yield torch.as_tensor(vectors[i:i + ROWS])


def per_row(vectors: Rows, fn: Callable[[Tensor, int], Tensor]) -> Tensor:
    """(n,) float32: ``fn(block, lo)`` → (b,) for each block of rows (``lo``: its first row id), written into one
    array made up front. A small tensor kept per block instead sits between the blocks' large freed temporaries,
    and glibc then never returns those: 3 GB held after 10M rows of dimension 256 (measured), against none."""
    out, lo = torch.empty(vectors.shape[0], dtype=torch.float32), 0
    for block in row_blocks(vectors):
        out[lo:lo + len(block)] = fn(block, lo)
        lo += len(block)
    return out


def gram(vectors: Rows) -> Tensor:
    """(D, D) float64 VᵀV/n of (n, D) vectors: each block's product in float32 (the vectors' own precision; its
    sums of at most :data:`ROWS` terms differ from float64's by about 1e-7 relative), the blocks summed in float64.
    Half the time of float64 products: 0.14 s against 0.32 s for 67,349 × 385 on one thread."""
    total = torch.zeros(vectors.shape[1], vectors.shape[1], dtype=torch.float64)
    for block in row_blocks(vectors):
        b = block.float()
        total += (b.T @ b).double()
    return total / vectors.shape[0]


class TracIn:
    """TracInCP: score(z, z') = Σ_c lr_c <g_c(z), g_c(z')>, over checkpoints c (models with learning rates).

    Gradients come from the checkpoints' :mod:`.gradients` computer: over head parameters, training examples'
    from ``features`` (the training set's feature cache, shared by checkpoints with equal encoders), and a query
    runs the encoder once per distinct encoder (once in all after frozen-encoder training).
    """

    name = "tracin"
    reads_rows = True  # finalize and self_influence read blocks of rows (row_blocks)

    def __init__(self, task: Task, checkpoints: Sequence[tuple[nn.Module, float]], names: Sequence[str],
                 projector: Projector, features: FeatureCache | None = None):
        if not checkpoints:
            raise DatablameError("TracIn needs at least one checkpoint", "train with --checkpoints 1 or more")
        self.task, self.checkpoints, self.names, self.projector = task, list(checkpoints), list(names), projector
        self.dim = projector.out_dim * len(self.checkpoints)
        self.gradients = gradient_computer(task, [m for m, _ in self.checkpoints], names, features)

    def encoder_groups(self) -> list[int]:
        """For each checkpoint, the index of the first checkpoint whose encoder (everything below the head)
        is equal to its own."""
        return self.gradients.encoder_groups()

    def _weighted(self, grads: Sequence[Tensor]) -> Tensor:
        """(b, C·k) concat_c sqrt(lr_c) · P g_c from each checkpoint's (b, p) gradients."""
        return torch.cat([math.sqrt(lr) * self.projector(g).cpu() for (_, lr), g in zip(self.checkpoints, grads)],
                         dim=1)

    def train_vectors(self, batch: Examples) -> Tensor:
        return self._weighted([self.gradients.train_grads(m, batch) for m, _ in self.checkpoints])

    def query_vectors(self, texts: Sequence[Text]) -> Queries:
        q = self.gradients.queries(texts)
        return Queries(self._weighted([self.gradients.grads(m, x, q.predictions)
                                       for (m, _), x in zip(self.checkpoints, q.inputs)]),
                       q.predictions, q.probabilities)

    def self_influence(self, vectors: Rows, labels: Tensor) -> Tensor:
        """Σ_c lr_c ‖P g_c(z_i)‖², the sketch of Σ_c lr_c ‖g_c(z_i)‖²."""
        return per_row(vectors, lambda b, _: b.float().pow(2).sum(1))

    def describe(self) -> dict:
        return {"method": self.name, "params": self.names, "projection": self.projector.describe(),
                "learning_rates": [lr for _, lr in self.checkpoints]}


class InfluenceFunctions:
    """Koh & Liang influence: score(i, q) = g(z_q)ᵀ (H + λI)^{-1} g(z_i) = −I_up,loss(z_i, z_q).

    H is the Hessian of the mean training loss at ``model`` (the final checkpoint). Training vectors are the
    projected gradients P g(z_i); the query side is the :mod:`.curvature` part named by ``curvature``: ``lissa``
    (per query, ``lissa.depth × repeats`` Hessian-vector products for the whole batch of queries), ``sketch``
    (u_q = (VᵀV/n + λI)^{-1} P g(z_q), a (k × k) solve) or ``exact`` (the explicit (p, p) Hessian over at most
    :data:`.curvature.EXACT_MAX_PARAMS` selected parameters, e.g. the head: u_q = P (H + λI)^{-1} g(z_q)). What a
    curvature computes once is computed when the training vectors are finished (:meth:`finalize`), stored beside
    them, and handed back to a query process (:meth:`use_finalized`).

    ``at="optimum"`` (a linear softmax head's weight and bias) takes the gradients and H at the head's damped
    optimum instead of the trained head (:mod:`.optimum`; :attr:`linearized`); the trained model still predicts.

    Self-influence g_iᵀ H^{-1} g_i is approximated in sketch space by the damped Gauss-Newton (empirical Fisher)
    matrix, as TRAK does: v_iᵀ (VᵀV/n + λI)^{-1} v_i with V the (n, k) training sketches.
    """

    name = "influence"
    reads_rows = True  # finalize and self_influence read blocks of rows (row_blocks)

    def __init__(self, task: Task, model: nn.Module, names: Sequence[str], projector: Projector,
                 train: Examples, config: LissaConfig = LissaConfig(), features: FeatureCache | None = None,
                 curvature: str = "lissa", at: str = "checkpoint"):
        self.task, self.model, self.names, self.projector = task, model, list(names), projector
        self.train, self.config, self.at = train, config, at
        check_choice("linearization point", at, ("checkpoint", "optimum"), "--at")
        self.gradients = gradient_computer(task, [model], names, features)  # features: the training set's cache
        if at == "optimum" and not self.has_optimum:
            raise DatablameError("--at optimum needs the weight and bias of a linear softmax head selected",
                                 "use --params head, or --at checkpoint")
        self.dim = projector.out_dim
        self.optimum: OptimumReport | None = None
        self._linearized = model if at == "checkpoint" else None  # at the optimum: made on first use
        self.curvature = make_curvature(curvature, config, self._products, num_params(model, self.names),
                                        lambda: self.gradients.loss_hessian(self.linearized, self.train),
                                        projector.in_dim if projector.exact else projector.out_dim)

    @property
    def has_optimum(self) -> bool:
        """Whether ``at="optimum"`` applies: the selected parameters are a linear softmax head's weight and bias."""
        return optimum_applies(self.task, self.model, self.names)

    @property
    def linearized(self) -> nn.Module:
        """The model whose gradients and Hessian the scores use: ``model`` (``at="checkpoint"``), or with
        ``at="optimum"`` the same encoder with the head moved to the minimiser of the damped objective
        (:func:`.optimum.damped_optimum`, λ the mean eigenvalue of the Hessian at the trained head; that λ is then
        the exact curvature's automatic damping, so H + λI is the Hessian of what the head minimises)."""
        if self._linearized is None:
            hessian = self.gradients.loss_hessian(self.model, self.train)
            lam = mean_eigenvalue(hessian)
            self._linearized, self.optimum = damped_optimum(
                self.task, self.model, self._feature_blocks,
                lambda m: self.gradients.loss_hessian(m, self.train), lam, hessian)
            self.curvature.objective_damping = lam
        return self._linearized

    def _feature_blocks(self) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass over the training features and labels, :data:`ROWS` examples at a time."""
        for batch in self.train.batches(ROWS):
            yield self.gradients.train_inputs(self.model, batch), labels_of(batch)

    def _products(self, batch_size: int | None) -> HessianVectorProducts:
        return HessianVectorProducts(self.task, self.linearized, self.names, self.train, batch_size,
                                     self.config.seed, self.gradients.features)

    # what the curvature part holds, read through
    @property
    def query_curvature(self) -> str:
        return self.curvature.name

    @property
    def hessian(self) -> Tensor | None:
        """(p, p) float64 Hessian (curvature ``exact``), once finalized."""
        return self.curvature.finalized.get("hessian")

    @property
    def hvp(self) -> HessianVectorProducts | None:
        """LiSSA's Hessian-vector products, kept between queries (curvature ``lissa``)."""
        return getattr(self.curvature, "hvp", None)

    @property
    def last_report(self) -> LissaReport | None:
        """The convergence of the last LiSSA run (curvature ``lissa``)."""
        return getattr(self.curvature, "last_report", None)

    def damping(self, matrix: Tensor | None = None) -> float:
        """λ added to ``matrix`` (see :meth:`.curvature.Curvature.damping`)."""
        return self.curvature.damping(matrix)

    def inverse_hvp(self, grads: Tensor) -> Tensor:
        """(m, p) → (m, p): (H + λI)^{-1} applied to each row by LiSSA (curvature ``lissa``)."""
        return self.curvature.inverse_hvp(grads)

    def finalize(self, vectors: Rows) -> dict[str, np.ndarray]:
        """What the finished (n, k) training sketches give once for all queries, undamped (the damping λ is a
        query-side setting): ``gram``, (k, k) float64 VᵀV/n, and what the curvature adds (``exact``: the
        ``hessian``, (p, p) float64); at the optimum also ``optimum_head``, (K, h+1) float64 [W | b], and
        ``optimum_damping``, (1,) λ, so that a query process need not fit the head again."""
        arrays = self.curvature.finalize(gram(vectors))
        if self.at == "optimum":
            arrays["optimum_head"] = head_theta(self.task.head(self.linearized)).numpy()
            arrays["optimum_damping"] = np.array([self.curvature.objective_damping])
        return arrays

    def use_finalized(self, arrays: dict[str, np.ndarray]) -> None:
        """Take the arrays :meth:`finalize` made (read back from beside the vectors)."""
        arrays = dict(arrays)
        head, lam = arrays.pop("optimum_head", None), arrays.pop("optimum_damping", None)
        if self.at == "optimum" and head is not None:
            self._linearized = with_head(self.task, self.model, fixed_head(head, self.task.head(self.model)))
            self.curvature.objective_damping = float(lam[0])
        self.curvature.use_finalized(arrays)

    def query_like(self, vectors: Tensor) -> Tensor:
        """(m, k) training vectors as queries see them (finalized first)."""
        return self.curvature.query_like(vectors, self.projector)

    def train_vectors(self, batch: Examples) -> Tensor:
        return self.projector(self.gradients.train_grads(self.linearized, batch)).cpu()

    def query_vectors(self, texts: Sequence[Text]) -> Queries:
        q = self.gradients.queries(texts)  # the trained model's predictions, the gradients at the linearized head
        g = self.gradients.grads(self.linearized, q.inputs[0], q.predictions)
        return Queries(self.curvature.query(g, self.projector), q.predictions, q.probabilities)

    def self_influence(self, vectors: Rows, labels: Tensor) -> Tensor:
        """vᵢᵀ (VᵀV/n + λI)⁻¹ vᵢ, block by block (one factorization)."""
        m = gram(vectors)
        lam = self.curvature.damping(m, self.curvature.gram_dims)
        lu, pivots = torch.linalg.lu_factor(m + lam * torch.eye(m.shape[0], dtype=m.dtype))
        return per_row(vectors, lambda b, _: (b.double() * torch.linalg.lu_solve(lu, pivots, b.double().T).T).sum(1))

    def describe(self) -> dict:
        return {"method": self.name, "params": self.names, "projection": self.projector.describe(),
                "lissa": vars(self.config).copy(), **({"at": self.at} if self.at != "checkpoint" else {})}


@dataclass
class RefitReport:
    """The L2 refit of the head: λ, the final objective (nats + penalty), the gradient norm at the end, the
    training accuracy of the refit head against the original head's."""

    lam: float
    objective: float
    grad_norm: float
    accuracy: float = float("nan")
    original_accuracy: float = float("nan")


class Representer:
    """Representer points (Yeh et al. 2018) on the penultimate features.

    ``fit`` refits the head W (K × (h+1), bias as a constant feature) on the training features by L-BFGS to
    stationarity of (1/n) Σ_i CE(W f̃_i, y_i) + λ‖W‖², where f̃ = [f, 1]. Stationarity gives
    W = Σ_i α_i f̃_iᵀ with α_i = −1/(2λn) ∂L/∂φ_i, so the logit of class c for a query is Σ_i α_ic <f̃_i, f̃_q>:
    the scores sum exactly to the refit head's logits. ``features`` (a :class:`.features.FeatureCache`) spares
    the encoder for training examples whose features are already known.
    """

    name = "representer"
    reads_rows = True  # finalize and self_influence read blocks of rows (row_blocks)

    def __init__(self, task: Task, model: nn.Module, lam: float = 1e-3, batch_size: int = 64,
                 features: FeatureCache | None = None):
        self.task, self.model, self.lam, self.batch_size = task, model, lam, batch_size
        self.gradients = HeadGradients(task, [model], select_params(model, task, [HEAD]), features)
        self.weight: Tensor | None = None  # (K, h+1) float64, after fit
        self.n = 0
        self.report: RefitReport | None = None
        head = task.head(model)
        self.dim = head.out_features * (head.in_features + 1)

    def features(self, texts: Sequence[Text]) -> tuple[Tensor, Tensor]:
        """(b, K) model logits and (b, h+1) float64 features [f, 1], on CPU."""
        logits, f = forward(self.task, self.model, self.task.encode(texts))
        return logits.float().cpu(), with_bias(f.double().cpu())

    def train_features(self, batch: Examples) -> tuple[Tensor, Tensor]:
        """:meth:`features` of training examples, from the feature cache when it holds this training set."""
        f = self.gradients.train_inputs(self.model, batch)
        return self.gradients.logits(self.model, f).float().cpu(), with_bias(f.double().cpu())

    def fit(self, train: Examples, progress: Progress | None = None, max_iter: int = 500) -> RefitReport:
        feats, orig_logits = [], []
        for i, batch in enumerate(train.batches(self.batch_size)):
            logits, f = self.train_features(batch)
            feats.append(f)
            orig_logits.append(logits)
            if progress is not None:
                progress(min((i + 1) * self.batch_size, len(train)), len(train))
        x = torch.cat(feats)
        y = labels_of(train)
        head = self.task.head(self.model)
        w0 = torch.cat([head.weight.detach().double().cpu().reshape(head.out_features, -1),
                        (head.bias.detach().double().cpu() if head.bias is not None
                         else torch.zeros(head.out_features, dtype=torch.float64))[:, None]], 1)
        w = fit_softmax_head(x, y, head.out_features, self.lam, max_iter, init=w0, tolerance_grad=1e-12,
                             tolerance_change=1e-16, history_size=50).requires_grad_(True)
        loss = F.cross_entropy(x @ w.T, y) + self.lam * w.pow(2).sum()
        loss.backward()
        grad_norm = float(w.grad.norm())
        self.weight, self.n = w.detach(), len(train)
        self.report = RefitReport(self.lam, float(loss.detach()), grad_norm,
                                  accuracy=float(((x @ self.weight.T).argmax(1) == y).double().mean()),
                                  original_accuracy=float((torch.cat(orig_logits).argmax(1) == y).double().mean()))
        return self.report

    def _require_fit(self) -> Tensor:
        if self.weight is None:
            raise RuntimeError("Representer.fit(train) must run before vectors are computed")
        return self.weight

    def alphas(self, feats: Tensor, labels: Tensor) -> Tensor:
        """(b, K) float64 α_i = −1/(2λn) (softmax(W f̃_i) − onehot(y_i))."""
        w = self._require_fit()
        dl = (feats @ w.T).softmax(-1) - F.one_hot(labels, w.shape[0]).double()
        return -dl / (2 * self.lam * self.n)

    def train_vectors(self, batch: Examples) -> Tensor:
        _, f = self.train_features(batch)
        a = self.alphas(f, labels_of(batch))
        return (a[:, :, None] * f[:, None, :]).reshape(len(batch), -1).float()

    def query_vectors(self, texts: Sequence[Text]) -> Queries:
        """e_ŷ ⊗ [f_q, 1] for the model's prediction ŷ; needs no refit (the training side holds the α)."""
        logits, f = self.features(texts)
        probs = logits.softmax(-1)
        pred = probs.argmax(-1)
        onehot = F.one_hot(pred, logits.shape[1]).double()
        return Queries((onehot[:, :, None] * f[:, None, :]).reshape(len(texts), -1).float(), pred, probs)

    def refit_logits(self, texts: Sequence[Text]) -> Tensor:
        """(b, K) float64 logits of the refit head."""
        return self.features(texts)[1] @ self._require_fit().T

    def self_influence(self, vectors: Rows, labels: Tensor) -> Tensor:
        """|α_{i, y_i}|: read from v_i = α_i ⊗ [f_i, 1], whose last feature is the constant 1."""
        k, labels = self._require_fit().shape[0], torch.as_tensor(np.asarray(labels), dtype=torch.long)
        return per_row(vectors, lambda b, lo: b.reshape(len(b), k, -1)[torch.arange(len(b)),
                                                                         labels[lo:lo + len(b)], -1].abs())

    def describe(self) -> dict:
        return {"method": self.name, "lambda": self.lam}


def compute_train_vectors(method: Method, train: Examples, batch_size: int = 32,
                          progress: Progress | None = None) -> np.ndarray:
    """(n, D) float32 training vectors of every example, in id order; ``batch_size`` examples per call, or more
    where the method's gradient computer takes more (head gradients on cached features)."""
    out = np.empty((len(train), method.dim), dtype=np.float32)
    done = 0
    gradients = getattr(method, "gradients", None)
    for batch in train.batches(batch_size if gradients is None else gradients.train_batch(batch_size)):
        out[done:done + len(batch)] = method.train_vectors(batch).numpy()
        done += len(batch)
        if progress is not None:
            progress(done, len(train))
    return out


def scores(method: Method, train_vectors: np.ndarray | Tensor, texts: Sequence[Text]) -> tuple[Tensor, Queries]:
    """(b, n) scores of every training example for each query (brute force), and the queries."""
    q = method.query_vectors(texts)
    return q.vectors @ torch.as_tensor(np.asarray(train_vectors)).T, q


def _build_tracin(ctx: "BuildContext") -> TracIn:
    names = ctx.params()
    return TracIn(ctx.task, ctx.models, names, ctx.projector(names), ctx.features)


INFLUENCE_SKETCH_DIM = 2048
"""Influence's automatic sketch dimension beyond a head (the others take :data:`.sketch.DEFAULT_DIM`, 256): with
the last encoder layer and the head fine-tuned, the non-convex setting of ``bench/faithfulness.py`` measured an
LDS of 0.339 at 256 dimensions, 0.445 at 1,024, 0.478 at 2,048 and 0.467 at 4,096 (TracIn and TRAK gained nothing
from more). 8 KB per training example in float32."""


def _build_influence(ctx: "BuildContext") -> InfluenceFunctions:
    names = ctx.params()
    projector = ctx.projector(names, INFLUENCE_SKETCH_DIM)
    curvature = ctx.settings.curvature
    if curvature == "auto":  # measured in bench/faithfulness.py: exact on exact gradients, else the sketch's
        exact = projector.exact and num_params(ctx.model, names) <= EXACT_MAX_PARAMS
        curvature = "exact" if exact else "sketch"
    return InfluenceFunctions(ctx.task, ctx.model, names, projector, ctx.train, ctx.settings.lissa, ctx.features,
                              curvature, "checkpoint" if ctx.settings.at == "auto" else ctx.settings.at)


def _build_representer(ctx: "BuildContext") -> Representer:
    method = Representer(ctx.task, ctx.model, ctx.settings.lam, features=ctx.features)
    if ctx.fit:
        method.fit(ctx.train, ctx.progress)
    return method


register(MethodSpec("tracin", "TracIn: learning-rate-weighted gradient products summed over checkpoints (fastest)",
                    "all", _build_tracin, lambda _: "one gradient per checkpoint"))
register(MethodSpec("influence", "influence functions: the query's gradient through the inverse Hessian (LiSSA, or "
                    "the sketch-space curvature); names planted causes best in bench/artifacts.py",
                    "last", _build_influence, lambda m: m.curvature.cost, query=QuerySettings))
register(MethodSpec("representer", "representer points: the refit head's logit split over training examples",
                    "last", _build_representer, lambda _: "one forward pass"))
