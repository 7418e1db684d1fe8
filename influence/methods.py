"""TracIn, influence functions and representer points; every method reduced to one vector space:
score(i, q) = <v_i, u_q>.

=================== =========================================== ========================================
method              training vector v_i, (D,)                   query vector u_q, (D,)
=================== =========================================== ========================================
TracIn              concat_c sqrt(lr_c) · P g_c(z_i)            concat_c sqrt(lr_c) · P g_c(z_q, ŷ)
influence functions P g(z_i) at the final checkpoint            P (H + λI)^{-1} g(z_q, ŷ)   (exact, LiSSA or
                                                                sketch-space curvature)
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
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Examples, Text
from .errors import DatablameError
from .features import FeatureCache, same_encoder
from .grads import head_grads, num_params, only_head, per_example_grads
from .heads import fit_softmax_head, with_bias
from .lissa import HessianVectorProducts, LissaConfig, LissaReport, Progress, lissa, top_eigenvalue
from .registry import MethodSpec, register
from .sketch import Identity, Projector
from .task import Task

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
    """

    name: str
    dim: int

    def train_vectors(self, batch: Examples) -> Tensor:
        """(b, D) float32 training vectors v_i."""

    def query_vectors(self, texts: Sequence[Text]) -> Queries:
        """Query vectors u_q for the model's predicted labels."""

    def self_influence(self, vectors: Tensor, labels: Tensor) -> Tensor:
        """(n,) self-influence of training examples from their (n, D) vectors and (n,) labels."""

    def describe(self) -> dict:
        """JSON-able settings to record beside the vectors."""


ROWS = 8192
"""Training vectors a reduction (Gram matrix, self-influence) takes at a time: its float64 copies stay one block,
not the whole (n, D) set."""


def row_blocks(vectors: Tensor) -> list[Tensor]:
    """Consecutive views of at most :data:`ROWS` rows of an (n, D) tensor."""
    return [vectors[i:i + ROWS] for i in range(0, vectors.shape[0], ROWS)]


def gram(vectors: Tensor) -> Tensor:
    """(D, D) float64 VᵀV/n of (n, D) vectors, summed block by block."""
    total = torch.zeros(vectors.shape[1], vectors.shape[1], dtype=torch.float64)
    for block in row_blocks(vectors):
        b = block.double()
        total += b.T @ b
    return total / vectors.shape[0]


@torch.no_grad()
def predict(task: Task, model: nn.Module, texts: Sequence[Text]) -> tuple[Tensor, Tensor]:
    """(b,) predicted labels and (b, K) probabilities, on CPU."""
    model.eval()
    probs = task.logits(model, task.encode(texts)).float().softmax(-1).cpu()
    return probs.argmax(-1), probs


@torch.no_grad()
def predict_with_features(task: Task, model: nn.Module, texts: Sequence[Text]) -> tuple[Tensor, Tensor, Tensor]:
    """(b,) predicted labels and (b, K) probabilities on CPU, and (b, h) penultimate features on the model's
    device, from one forward pass."""
    model.eval()
    logits, f = task.logits_and_features(model, task.encode(texts))
    probs = logits.float().softmax(-1).cpu()
    return probs.argmax(-1), probs, f


class SharedEncoders:
    """Checkpoints grouped by equal encoders (everything below the head): queries over head parameters run each
    distinct encoder once (once in all after frozen-encoder training), not once per checkpoint."""

    def __init__(self, task: Task, models: Sequence[nn.Module]):
        self.task, self.models = task, list(models)
        self._groups: list[int] | None = None

    def groups(self) -> list[int]:
        """For each checkpoint, the index of the first checkpoint whose encoder equals its own."""
        if self._groups is None:
            self._groups = [next(j for j in range(i + 1) if same_encoder(self.task, self.models[j], m))
                            for i, m in enumerate(self.models)]
        return self._groups

    def features(self, texts: Sequence[Text]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(b,) predictions and (b, K) probabilities of the last checkpoint, and for each checkpoint the (b, h)
        penultimate features of the texts."""
        groups, feats = self.groups(), {}
        pred, probs, feats[groups[-1]] = predict_with_features(self.task, self.models[-1], texts)
        for c, model in enumerate(self.models):
            if groups[c] not in feats:
                feats[groups[c]] = predict_with_features(self.task, model, texts)[2]
        return pred, probs, [feats[g] for g in groups]


def _labels(x) -> Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.long)


def train_grads(task: Task, model: nn.Module, batch: Examples, names: Sequence[str],
                features: FeatureCache | None = None) -> Tensor:
    """(b, p) per-example gradients of training examples for their labels: from cached penultimate features when
    the parameters are the head's and ``features`` holds this training set, else through the model."""
    labels = _labels(batch.labels)
    if features is not None and only_head(task, names):
        f = features.rows(task, model, batch)
        if f is not None:
            return head_grads(task, model, f, labels, names)
    return per_example_grads(task, model, task.encode(batch.texts), labels, names)


class TracIn:
    """TracInCP: score(z, z') = Σ_c lr_c <g_c(z), g_c(z')>, over checkpoints c (models with learning rates).

    ``features``: the training set's penultimate features, shared by checkpoints with equal encoders (used for
    training vectors over head parameters; see :mod:`.features`). Over head parameters, a query runs the encoder
    once per distinct encoder (once in all after frozen-encoder training), not once per checkpoint.
    """

    name = "tracin"

    def __init__(self, task: Task, checkpoints: Sequence[tuple[nn.Module, float]], names: Sequence[str],
                 projector: Projector, features: FeatureCache | None = None):
        if not checkpoints:
            raise DatablameError("TracIn needs at least one checkpoint", "train with --checkpoints 1 or more")
        self.task, self.checkpoints, self.names, self.projector = task, list(checkpoints), list(names), projector
        self.features = features
        self.dim = projector.out_dim * len(self.checkpoints)
        self.encoders = SharedEncoders(task, [m for m, _ in self.checkpoints])

    def encoder_groups(self) -> list[int]:
        """For each checkpoint, the index of the first checkpoint whose encoder (everything below the head)
        is equal to its own."""
        return self.encoders.groups()

    def _vectors(self, texts: Sequence[Text], labels: Tensor) -> Tensor:
        batch = self.task.encode(texts)
        parts = [math.sqrt(lr) * self.projector(per_example_grads(self.task, m, batch, labels, self.names)).cpu()
                 for m, lr in self.checkpoints]
        return torch.cat(parts, dim=1)

    def train_vectors(self, batch: Examples) -> Tensor:
        return torch.cat([math.sqrt(lr) * self.projector(train_grads(self.task, m, batch, self.names,
                                                                     self.features)).cpu()
                          for m, lr in self.checkpoints], dim=1)

    def query_vectors(self, texts: Sequence[Text]) -> Queries:
        if not only_head(self.task, self.names):
            pred, probs = predict(self.task, self.checkpoints[-1][0], texts)
            return Queries(self._vectors(texts, pred), pred, probs)
        pred, probs, feats = self.encoders.features(texts)
        parts = [math.sqrt(lr) * self.projector(head_grads(self.task, m, f, pred, self.names)).cpu()
                 for (m, lr), f in zip(self.checkpoints, feats)]
        return Queries(torch.cat(parts, dim=1), pred, probs)

    def self_influence(self, vectors: Tensor, labels: Tensor) -> Tensor:
        """Σ_c lr_c ‖P g_c(z_i)‖², the sketch of Σ_c lr_c ‖g_c(z_i)‖²."""
        return torch.cat([b.float().pow(2).sum(1) for b in row_blocks(vectors)])

    def describe(self) -> dict:
        return {"method": self.name, "params": self.names, "projection": self.projector.describe(),
                "learning_rates": [lr for _, lr in self.checkpoints]}


EXACT_MAX_PARAMS = 4096
"""The most selected parameters the exact curvature takes: a (p, p) float64 Hessian of 128 MB, p HVPs to build;
also the most for which ``curvature="auto"`` chooses it and an automatic sketch dimension keeps exact gradients."""
LISSA_AUTO_DAMPING = 0.01
"""LiSSA's λ under ``damping=None`` (auto): chosen for the convergence of its series, not measured for accuracy."""
MIN_AUTO_DAMPING = 1e-8
"""The least automatic λ (a curvature that is all zeros still gets a solvable system)."""


class InfluenceFunctions:
    """Koh & Liang influence: score(i, q) = g(z_q)ᵀ (H + λI)^{-1} g(z_i) = −I_up,loss(z_i, z_q).

    H is the Hessian of the mean training loss at ``model`` (the final checkpoint). Query vectors cost one LiSSA
    run (``lissa.depth × repeats`` Hessian-vector products for the whole batch of queries); the last run's
    convergence report is kept in ``last_report``.

    Self-influence g_iᵀ H^{-1} g_i is approximated in sketch space by a damped Gauss-Newton (empirical Fisher)
    matrix, as TRAK does: v_iᵀ (VᵀV/n + λI)^{-1} v_i with V the (n, k) training sketches. The same matrix can
    stand in for LiSSA on the query side (``curvature="sketch"``): u_q = (VᵀV/n + λI)^{-1} P g(z_q), a (k × k)
    solve per query instead of ``depth`` Hessian-vector products. ``curvature="exact"`` (at most
    :data:`EXACT_MAX_PARAMS` selected parameters, e.g. the head) answers with the explicit Hessian of the mean
    training loss over the selected parameters, (p, p), built from p Hessian-vector products over the whole
    training set: u_q = P (H + λI)^{-1} g(z_q), exact up to the damping λ. Both matrices are computed once, when
    the training vectors are finished (:meth:`finalize`), stored beside them, and handed back to a query process
    (:meth:`use_finalized`).
    """

    name = "influence"

    def __init__(self, task: Task, model: nn.Module, names: Sequence[str], projector: Projector,
                 train: Examples, config: LissaConfig = LissaConfig(), features: FeatureCache | None = None,
                 curvature: str = "lissa"):
        self.task, self.model, self.names, self.projector = task, model, list(names), projector
        self.train, self.config, self.query_curvature = train, config, curvature
        self.features = features  # the training set's penultimate features (head parameters), see .features
        self.dim = projector.out_dim
        self.last_report: LissaReport | None = None
        self.gram: Tensor | None = None  # (k, k) float64 VᵀV/n of the training sketches, once finalized
        self.hessian: Tensor | None = None  # (p, p) float64 Hessian (curvature "exact"), once finalized
        self._factors: dict[str, Tensor] = {}  # Cholesky factors of the damped matrices, made on first use
        self.hvp: HessianVectorProducts | None = None  # kept between queries (it caches head features)
        self.scale: float | None = config.scale  # LiSSA's scale: estimated once (power iteration), then kept

    def damping(self, matrix: Tensor | None = None) -> float:
        """λ: the configured damping, or with ``damping=None`` (auto) the mean eigenvalue trace(M)/d of the
        curvature M it damps (:data:`LISSA_AUTO_DAMPING` for LiSSA, which has no M in hand)."""
        if self.config.damping is not None:
            return self.config.damping
        if matrix is None:
            return LISSA_AUTO_DAMPING
        return max(float(torch.trace(matrix)) / matrix.shape[0], MIN_AUTO_DAMPING)

    def sketch_curvature(self, vectors: Tensor) -> Tensor:
        """(k, k) float64 VᵀV/n + λI from the (n, k) training sketches V."""
        m = gram(vectors)
        return m + self.damping(m) * torch.eye(m.shape[0], dtype=m.dtype)

    def finalize(self, vectors: Tensor) -> dict[str, np.ndarray]:
        """What the finished (n, k) training sketches give once for all queries, undamped (the damping λ is a
        query-side setting): ``gram``, (k, k) float64 VᵀV/n, and with ``curvature="exact"`` the ``hessian``,
        (p, p) float64."""
        self.gram, self._factors = gram(vectors), {}
        arrays = {"gram": self.gram.numpy()}
        if self.query_curvature == "exact":
            self.hessian = self.exact_hessian()
            arrays["hessian"] = self.hessian.numpy()
        return arrays

    def use_finalized(self, arrays: dict[str, np.ndarray]) -> None:
        """Take the arrays :meth:`finalize` made (read back from beside the vectors)."""
        self.gram, self._factors = torch.from_numpy(arrays["gram"]), {}
        if "hessian" in arrays:
            self.hessian = torch.from_numpy(arrays["hessian"])

    def _solve(self, name: str, rows: Tensor) -> Tensor:
        """(m, d) → (m, d) float64 (M + λI)^{-1} x for each row x, M the finalized ``gram`` or ``hessian``."""
        matrix = getattr(self, name)
        if matrix is None:
            what, flag = ("sketch-space curvature", "") if name == "gram" else ("exact Hessian", " --curvature exact")
            raise DatablameError(f"the influence vectors' {what} is missing or stale",
                                 f"rebuild with 'datablame index WORKDIR --method influence{flag}'")
        if name not in self._factors:
            damped = matrix + self.damping(matrix) * torch.eye(matrix.shape[0], dtype=torch.float64)
            self._factors[name] = torch.linalg.cholesky(damped)
        return torch.cholesky_solve(rows.double().cpu().T, self._factors[name]).T

    def exact_hessian(self, chunk: int = 128) -> Tensor:
        """(p, p) float64 Hessian of the mean training loss over the selected parameters: p Hessian-vector
        products over the whole training set (head parameters: on cached features), symmetrised."""
        p = num_params(self.model, self.names)
        features = self.features if self.features is not None and self.features.train is self.train else None
        hvp = HessianVectorProducts(self.task, self.model, self.names, self.train, None, self.config.seed, features)
        eye = torch.eye(p)
        h = torch.cat([hvp(eye[i:i + chunk]).double().cpu() for i in range(0, p, chunk)])
        return (h + h.T) / 2

    def query_like(self, vectors: Tensor) -> Tensor:
        """(m, k) training vectors as queries see them: through the exact Hessian when queries use it and the
        vectors are unprojected gradients, else through the sketch-space curvature (finalized first)."""
        if self.query_curvature == "exact" and isinstance(self.projector, Identity):
            return self._solve("hessian", vectors).float()
        return self._solve("gram", vectors).float()

    def train_vectors(self, batch: Examples) -> Tensor:
        return self.projector(train_grads(self.task, self.model, batch, self.names, self.features)).cpu()

    def inverse_hvp(self, grads: Tensor) -> Tensor:
        """(m, p) → (m, p): (H + λI)^{-1} applied to each row by LiSSA (the same minibatches and scale for every
        call, so a query's answer does not depend on the queries before it)."""
        if self.hvp is None:
            features = self.features if self.features is not None and self.features.train is self.train else None
            self.hvp = HessianVectorProducts(self.task, self.model, self.names, self.train, self.config.batch_size,
                                             self.config.seed, features)
        config = replace(self.config, damping=self.damping())
        if self.scale is None:
            self.hvp.reset()
            self.scale = 2.0 * (top_eigenvalue(self.hvp, grads.shape[1], seed=config.seed) + config.damping)
        self.hvp.reset()
        ihvp, self.last_report = lissa(self.hvp, grads, replace(config, scale=self.scale))
        return ihvp

    def query_vectors(self, texts: Sequence[Text]) -> Queries:
        pred, probs, f = predict_with_features(self.task, self.model, texts)
        if only_head(self.task, self.names):
            g = head_grads(self.task, self.model, f, pred, self.names)
        else:
            g = per_example_grads(self.task, self.model, self.task.encode(texts), pred, self.names)
        if self.query_curvature == "sketch":
            return Queries(self._solve("gram", self.projector(g).cpu()).float(), pred, probs)
        if self.query_curvature == "exact":
            return Queries(self.projector(self._solve("hessian", g).float()).cpu(), pred, probs)
        return Queries(self.projector(self.inverse_hvp(g)).cpu(), pred, probs)

    def self_influence(self, vectors: Tensor, labels: Tensor) -> Tensor:
        """vᵢᵀ (VᵀV/n + λI)⁻¹ vᵢ, block by block (one factorization)."""
        lu, pivots = torch.linalg.lu_factor(self.sketch_curvature(vectors))
        return torch.cat([(b.double() * torch.linalg.lu_solve(lu, pivots, b.double().T).T).sum(1)
                          for b in row_blocks(vectors)]).float()

    def describe(self) -> dict:
        return {"method": self.name, "params": self.names, "projection": self.projector.describe(),
                "lissa": vars(self.config).copy()}


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

    def __init__(self, task: Task, model: nn.Module, lam: float = 1e-3, batch_size: int = 64,
                 features: FeatureCache | None = None):
        self.task, self.model, self.lam, self.batch_size = task, model, lam, batch_size
        self.features_cache = features
        self.weight: Tensor | None = None  # (K, h+1) float64, after fit
        self.n = 0
        self.report: RefitReport | None = None
        head = task.head(model)
        self.dim = head.out_features * (head.in_features + 1)

    @torch.no_grad()
    def features(self, texts: Sequence[Text]) -> tuple[Tensor, Tensor]:
        """(b, K) model logits and (b, h+1) float64 features [f, 1], on CPU."""
        self.model.eval()
        logits, f = self.task.logits_and_features(self.model, self.task.encode(texts))
        return logits.float().cpu(), with_bias(f.double().cpu())

    @torch.no_grad()
    def train_features(self, batch: Examples) -> tuple[Tensor, Tensor]:
        """:meth:`features` of training examples, from the feature cache when it holds this training set."""
        f = None if self.features_cache is None else self.features_cache.rows(self.task, self.model, batch)
        if f is None:
            return self.features(batch.texts)
        self.model.eval()
        logits = self.task.head(self.model)(f).float().cpu()
        return logits, with_bias(f.double().cpu())

    def fit(self, train: Examples, progress: Progress | None = None, max_iter: int = 500) -> RefitReport:
        feats, orig_logits = [], []
        for i, batch in enumerate(train.batches(self.batch_size)):
            logits, f = self.train_features(batch)
            feats.append(f)
            orig_logits.append(logits)
            if progress is not None:
                progress(min((i + 1) * self.batch_size, len(train)), len(train))
        x = torch.cat(feats)
        y = _labels(train.labels)
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
        a = self.alphas(f, _labels(batch.labels))
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

    def self_influence(self, vectors: Tensor, labels: Tensor) -> Tensor:
        """|α_{i, y_i}|: read from v_i = α_i ⊗ [f_i, 1], whose last feature is the constant 1."""
        k = self._require_fit().shape[0]
        v = vectors.reshape(vectors.shape[0], k, -1)
        return v[torch.arange(v.shape[0]), _labels(labels), -1].abs().float()

    def describe(self) -> dict:
        return {"method": self.name, "lambda": self.lam}


def compute_train_vectors(method: Method, train: Examples, batch_size: int = 32,
                          progress: Progress | None = None) -> np.ndarray:
    """(n, D) float32 training vectors of every example, in id order."""
    out = np.empty((len(train), method.dim), dtype=np.float32)
    done = 0
    for batch in train.batches(batch_size):
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
    return TracIn(ctx.task, ctx.models, names, ctx.projector(names), ctx.head_features(names))


def _build_influence(ctx: "BuildContext") -> InfluenceFunctions:
    names = ctx.params()
    projector = ctx.projector(names)
    curvature = ctx.settings.curvature
    if curvature == "auto":  # measured in bench/faithfulness.py: exact on exact gradients, else the sketch's
        exact = isinstance(projector, Identity) and num_params(ctx.model, names) <= EXACT_MAX_PARAMS
        curvature = "exact" if exact else "sketch"
    if curvature == "exact" and num_params(ctx.model, names) > EXACT_MAX_PARAMS:
        raise DatablameError(f"the exact curvature needs at most {EXACT_MAX_PARAMS} selected parameters, not "
                             f"{num_params(ctx.model, names)}", "use --params head, or --curvature sketch or lissa")
    return InfluenceFunctions(ctx.task, ctx.model, names, projector, ctx.train, ctx.settings.lissa,
                              ctx.head_features(names), curvature)


def _build_representer(ctx: "BuildContext") -> Representer:
    method = Representer(ctx.task, ctx.model, ctx.settings.lam, features=ctx.features)
    if ctx.fit:
        method.fit(ctx.train, ctx.progress)
    return method


def _influence_cost(method: InfluenceFunctions) -> str:
    if method.query_curvature == "exact":
        return "gradient + exact damped Hessian solve"
    if method.query_curvature == "sketch":
        return "gradient + sketch-space curvature solve"
    return f"gradient + LiSSA ({method.config.depth} Hessian-vector products per query)"


register(MethodSpec("tracin", "TracIn: learning-rate-weighted gradient products summed over checkpoints (fastest)",
                    "all", _build_tracin, lambda _: "one gradient per checkpoint"))
register(MethodSpec("influence", "influence functions: the query's gradient through the inverse Hessian (LiSSA, or "
                    "the sketch-space curvature); names planted causes best in bench/artifacts.py",
                    "last", _build_influence, _influence_cost, query_fields=("lissa", "curvature")))
register(MethodSpec("representer", "representer points: the refit head's logit split over training examples",
                    "last", _build_representer, lambda _: "one forward pass"))
