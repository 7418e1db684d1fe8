"""TRAK (Park et al. 2023, "TRAK: Attributing Model Behavior at Scale") in datablame's one vector space (the
table of every method is in :mod:`.methods`):

    v_i = Q_i · concat_m φ_m(z_i)        u_q = (1/M) concat_m K_m^{-1} φ_m(z_q, ŷ)

so that score(i, q) = <v_i, u_q> = τ(q, i) = Q_i · (1/M) Σ_m φ_m(q)ᵀ K_m^{-1} φ_m(i), where, over the M
checkpoints m of the workdir (D = M·k):

- f(z, y) = log p_y − log(1 − p_y) = z_y − logsumexp_{j≠y} z_j, the margin (log-odds, nats) of label y, from the
  logits z (:func:`margin`);
- φ_m(z, y) = P ∇_θ f(z, y) at checkpoint m, (k,): the projected margin gradient over the selected parameters
  (``--params``; the head's from cached penultimate features when possible), for the training label y_i or the
  query's predicted label ŷ (the last checkpoint's prediction);
- Q_i = (1/M) Σ_m (1 − p_{y_i}(z_i; θ_m)), the out-to-loss weight (∂ cross-entropy / ∂ margin = −(1 − p_y)),
  floored at :data:`Q_FLOOR`;
- K_m = Φ_mᵀ Φ_m + λI, (k, k), with Φ_m the (n, k) unweighted training φ_m and λ = :data:`DAMPING`.

Sign: a step of gradient descent on training example i moves θ by −η ∇ CE = η (1 − p_{y_i}) ∇f(z_i), which
raises the query's margin for ŷ by about η Q_i φ(q)ᵀ φ(i); so τ > 0 means i *supports* the prediction, as for
every method (see :mod:`.methods`).

The kernels need the training set's unweighted Φ_m, which only exists once every training vector does:
:meth:`TRAK.finalize` recovers it from the finished vectors as Φ = V / Q (Q recomputed from the training set:
one head forward per checkpoint over cached features, else one forward pass per checkpoint) and stores the
inverse kernels and Q beside the vectors; a query process reads them back (:meth:`TRAK.use_finalized`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .data import Examples, Text
from .errors import DatablameError
from .features import FeatureCache
from .gradients import Inputs, gradient_computer, labels_of
from .methods import Queries, Rows, per_row, row_blocks
from .registry import MethodSpec, register
from .sketch import Projector
from .task import Task

if TYPE_CHECKING:
    from .build import BuildContext

DAMPING = 0.01
"""λ, the ridge of every kernel K_m = Φ_mᵀΦ_m + λI, in the units of Φ_mᵀΦ_m (squared margin gradients, summed,
not averaged, over the n training examples). It keeps K_m invertible when k > n or Φ_m is rank-deficient and
is otherwise tiny next to ΦᵀΦ's leading eigenvalues, which grow with n; dattri's ridge, 0.01 on the unnormalised
ΦᵀΦ, measured best on this task (LDS 0.88)."""
Q_FLOOR = 1e-6
"""The least out-to-loss weight Q_i: an example fit with mean p_{y_i} > 1 − 1e-6 over the checkpoints (its
score and self-influence are then about 1e-6 of a typical example's either way) counts as 1 − 1e-6, so that
its unweighted φ stays recoverable as v_i / Q_i from the stored float32 vectors (cosine scoring, which divides
by ‖v_i‖, does not see Q at all). float16 vectors store v_i to 11 bits and, below 6e-5, to a fixed step of
6e-8 that the division by a small Q_i magnifies: index TRAK in float32 (the default)."""
WEIGHTS_BATCH = 64


def margin(logits: Tensor, labels: Tensor) -> Tensor:
    """(b,) log p_y − log(1 − p_y) = z_y − logsumexp_{j≠y} z_j (nats of log-odds) from (b, K) logits and (b,)
    labels; differentiable, usable under ``torch.func.vmap``."""
    own = torch.arange(logits.shape[-1], device=logits.device) == labels[:, None]
    return (logits * own).sum(-1) - logits.masked_fill(own, float("-inf")).logsumexp(-1)


def out_to_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """(b,) float64 1 − p_y = sigmoid(−margin), accurate (no cancellation) as p_y → 1, from (b, K) logits."""
    return torch.sigmoid(-margin(logits.double(), labels.to(logits.device))).cpu()


class TRAK:
    """TRAK over checkpoints (``models``, in order; the last one predicts ŷ); see the module docstring.

    ``projector``: P, (k × p), shared by the checkpoints; ``train``: the training set (``finalize`` recomputes Q
    from it); ``features``: its penultimate features (head parameters, see :mod:`.features`). Queries over head
    parameters run the encoder once per distinct encoder (once in all after frozen-encoder training).
    """

    name = "trak"
    reads_rows = True  # finalize and self_influence read blocks of rows (row_blocks)

    def __init__(self, task: Task, models: Sequence[nn.Module], names: Sequence[str], projector: Projector,
                 train: Examples, features: FeatureCache | None = None, damping: float = DAMPING):
        if not models:
            raise DatablameError("TRAK needs at least one checkpoint", "train with --checkpoints 1 or more")
        self.task, self.models, self.names, self.projector = task, list(models), list(names), projector
        self.train, self.damping = train, damping
        self.k = projector.out_dim
        self.dim = self.k * len(self.models)
        self.inverse_kernels: Tensor | None = None  # (M, k, k) float64 K_m^{-1}, once finalized
        self.weights: Tensor | None = None  # (n,) float64 Q, once finalized
        self.gradients = gradient_computer(task, self.models, names, features)

    # ---- per checkpoint ----

    def _phi(self, model: nn.Module, inputs: Inputs, labels: Tensor) -> Tensor:
        """(b, k) float32 φ_m on CPU: projected margin gradients for ``labels`` on the model's inputs."""
        return self.projector(self.gradients.grads(model, inputs, labels, objective=margin)).cpu()

    # ---- training side ----

    def train_vectors(self, batch: Examples) -> Tensor:
        """(b, M·k) float32 v_i = Q_i · concat_m φ_m(z_i, y_i)."""
        labels = labels_of(batch)
        parts, q = [], torch.zeros(len(batch), dtype=torch.float64)
        for model in self.models:
            inputs = self.gradients.train_inputs(model, batch)
            parts.append(self._phi(model, inputs, labels))
            q += out_to_loss(self.gradients.logits(model, inputs), labels)
        weights = (q / len(self.models)).clamp_min(Q_FLOOR)
        return (weights[:, None] * torch.cat(parts, dim=1).double()).float()

    def out_to_loss_weights(self, examples: Examples) -> Tensor:
        """(n,) float64 Q_i = max(Q_FLOOR, (1/M) Σ_m (1 − p_{y_i}(z_i; θ_m))) of ``examples``, in order."""
        rows = []
        for batch in examples.batches(WEIGHTS_BATCH):
            labels = labels_of(batch)
            rows.append(sum(out_to_loss(self.gradients.logits(m, self.gradients.train_inputs(m, batch)), labels)
                            for m in self.models) / len(self.models))
        return torch.cat(rows).clamp_min(Q_FLOOR)

    def _blocks(self, vectors: Tensor) -> Tensor:
        """(n, M·k) → (M, n, k) float64."""
        return vectors.double().reshape(vectors.shape[0], len(self.models), self.k).transpose(0, 1)

    def finalize(self, vectors: Rows) -> dict[str, np.ndarray]:
        """From the finished (n, M·k) training vectors (in id order): ``weights``, (n,) float64 Q (recomputed
        from the training set), and ``inverse_kernels``, (M, k, k) float64 K_m^{-1} = (Φ_mᵀΦ_m + λI)^{-1} with
        Φ_m = V_m / Q, from the eigendecomposition of Φ_mᵀΦ_m (never fails, however ill-conditioned)."""
        if vectors.shape[0] != len(self.train):
            raise ValueError(f"finalize needs the vectors of all {len(self.train)} training examples, "
                             f"got {vectors.shape[0]}")
        self.weights = self.out_to_loss_weights(self.train)
        kernels = torch.zeros(len(self.models), self.k, self.k, dtype=torch.float64)  # Φ_mᵀΦ_m, block by block
        lo = 0
        for rows in row_blocks(vectors):
            phi = self._blocks(rows) / self.weights[lo:lo + len(rows), None]
            kernels += phi.transpose(1, 2) @ phi
            lo += len(rows)
        inverses = []
        for kernel in kernels:
            s, u = torch.linalg.eigh(kernel)  # ΦᵀΦ is PSD: eigenvalues below 0 are rounding
            inverses.append((u / (s.clamp_min(0) + self.damping)) @ u.T)
        self.inverse_kernels = torch.stack(inverses)
        return {"inverse_kernels": self.inverse_kernels.numpy(), "weights": self.weights.numpy()}

    def use_finalized(self, arrays: dict[str, np.ndarray]) -> None:
        """Take the arrays :meth:`finalize` made (read back from beside the vectors)."""
        self.inverse_kernels = torch.from_numpy(arrays["inverse_kernels"])
        self.weights = torch.from_numpy(arrays["weights"])

    def _require_finalized(self) -> tuple[Tensor, Tensor]:
        if self.inverse_kernels is None or self.weights is None:
            raise DatablameError("the trak vectors' kernels are missing or stale",
                                 "rebuild with 'datablame index WORKDIR --method trak'")
        return self.inverse_kernels, self.weights

    def _through_kernels(self, phis: Tensor) -> Tensor:
        """(b, M·k) concat_m φ_m → (b, M·k) float32 (1/M) concat_m K_m^{-1} φ_m."""
        inverses, _ = self._require_finalized()
        blocks = self._blocks(phis)
        return (torch.einsum("mij,mbj->bmi", inverses, blocks) / len(self.models)).reshape(len(phis), -1).float()

    def query_like(self, vectors: Tensor) -> Tensor:
        """(b, M·k) training vectors as queries see them: (1/M) concat_m K_m^{-1} v_m. This is Q_i times the query
        vector of (z_i, y_i); the rows come without ids, so Q_i stays, and a positive factor changes no search's
        neighbours (raw or cosine), which is all an approximate index's recall is measured on."""
        return self._through_kernels(vectors)

    def self_influence(self, vectors: Rows, labels: Tensor) -> Tensor:
        """(n,) τ(i, i) = Q_i · (1/M) Σ_m φ_m(i)ᵀ K_m^{-1} φ_m(i) = (1/(M Q_i)) Σ_m v_mᵀ K_m^{-1} v_m, from
        the (n, M·k) training vectors (after :meth:`finalize`)."""
        inverses, weights = self._require_finalized()
        return per_row(vectors, lambda rows, lo: torch.einsum("mbi,mij,mbj->b", self._blocks(rows), inverses,
                                                               self._blocks(rows))
                       / (len(self.models) * weights[lo:lo + len(rows)]))

    # ---- query side ----

    def query_vectors(self, texts: Sequence[Text]) -> Queries:
        """u_q = (1/M) concat_m K_m^{-1} φ_m(z_q, ŷ) for the last checkpoint's prediction ŷ (after finalize)."""
        self._require_finalized()
        q = self.gradients.queries(texts)
        phis = [self._phi(model, x, q.predictions) for model, x in zip(self.models, q.inputs)]
        return Queries(self._through_kernels(torch.cat(phis, dim=1)), q.predictions, q.probabilities)

    def describe(self) -> dict:
        return {"method": self.name, "params": self.names, "projection": self.projector.describe(),
                "damping": self.damping, "weight_floor": Q_FLOOR}


def _build_trak(ctx: "BuildContext") -> TRAK:
    names = ctx.params()
    return TRAK(ctx.task, [m for m, _ in ctx.loaded], names, ctx.projector(names), ctx.train, ctx.features)


register(MethodSpec("trak", "TRAK: margin gradients through each checkpoint's kernel (ΦᵀΦ + λI)⁻¹, weighted by "
                    "the training example's 1 − p", "all", _build_trak,
                    lambda _: "one margin gradient per checkpoint + one k × k kernel product each"))
