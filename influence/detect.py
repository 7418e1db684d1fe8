"""Finding mislabeled training examples: rank every example by how likely its label is wrong, suggest a label.

A small functional API in the spirit of cleanlab, over plain arrays:

- :func:`rank_label_issues` combines any of these signals, each turned into a score in (0, 1] by its rank
  (so that nats, squared gradient norms and probabilities mix without scaling):

  ========================= ===================================================================================
  signal                    suspicion grows with
  ========================= ===================================================================================
  ``probabilities``         1 − p(given label) of the trained model, in-sample (n, K)
  ``cv_probabilities``      1 − p(given label) of copies of the head refit on the other folds (n, K), out of sample
  ``cv_mlp_probabilities``  the same from one-hidden-layer MLPs fitted on the other folds (n, K)
  ``knn_probabilities``     the share of each label among the example's nearest other examples (n, K)
  ``stacked_probabilities`` 1 − p(given label) of a softmax head stacked on the three above, out of sample (n, K)
  ``self_influence``        each method's self-influence (n,): how much an example pulls on its own loss
  ========================= ===================================================================================

- :func:`cross_validated_probabilities` refits an L2-regularised softmax head on the model's penultimate
  features, fold by fold (L-BFGS to stationarity), and predicts each example from the folds it was not in,
  averaged over several seeded partitions. Its L2 penalty is chosen from :data:`CV_LAMBDAS` by the given labels
  alone (no clean labels): the one whose out-of-fold probabilities give them the least cross-entropy.
  :func:`cross_validated_mlp_probabilities` does the same with small MLPs (:func:`.heads.fit_mlp_head`, early
  stopping on a held-out tenth), the strong simple baseline of Chong, Hong & Manning (2022).
  :func:`neighbour_label_probabilities` asks each example's nearest neighbours instead (Bahri et al. 2020).
- :func:`cross_validated_signals` computes all of them for a scan, and :func:`stacked_probabilities` the default's
  signal: each kind of evidence finds other flips (the linear heads systematic ones, the MLPs and the neighbours
  uniform ones, ``bench/detection.py``), and how much to trust each, class by class, is learnt from the given
  labels by a head stacked on their out-of-sample log-probabilities, itself cross-validated. No clean label is
  needed, and the class-prior confound of the neighbours (a small class is rare among anyone's neighbours) is
  learnt away with it. Last, the label noise is estimated by anchor points (:func:`noise_transition`) and, where the
  estimate is trustworthy (:func:`diagonally_dominant`), Bayes' rule turns the stack's probabilities into those of
  the true class given the given label (:func:`clean_label_posterior`): systematic noise, one class relabelled as
  another, is then expected where it is found.
- :func:`probabilities_and_features` runs a model over examples once.

The suggested label is the most probable label other than the given one (the stacked head's when given, else
out-of-sample probabilities, averaged over the linear and MLP heads when both are, else the model's own).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .data import Examples
from .errors import DatablameError, check_choice
from .features import FeatureCache
from .heads import fit_mlp_head, fit_softmax_head, with_bias
from .registry import method_names, method_spec
from .lissa import Progress
from .task import Task, logits_and_features_of

log = logging.getLogger(__name__)


SCAN_METHODS: dict[str, dict[str, float]] = {
    "loss": {"loss": 1.0},
    "cv": {"stacked": 1.0},
    "cv-mean": {"cv": 1.0, "cv_mlp": 1.0},
    "cv-linear": {"cv": 1.0},
    "cv-mlp": {"cv_mlp": 1.0},
    "cv-knn": {"knn": 1.0},
    **{name: {f"self_influence:{name}": 1.0} for name in method_names() if method_spec(name).self_influence},
    "combined": {"cv": 1.0, "self_influence:tracin": 1.0},
    "aum": {"aum": 1.0},
}
"""Scan methods: the signals each one weighs (see :func:`rank_label_issues`); one per registered attribution
method that gives self-influence (:mod:`.registry`)."""
DEFAULT_SCAN = "cv"
"""The scan method that detects best in ``bench/detection.py``: a head stacked on cross-validated linear heads, MLPs
(both in two rounds, :func:`cleaned_cross_validation`) and nearest neighbours (:func:`cross_validated_signals`).
``cv-mean``, the rank mean of the linear heads and the MLPs, was the default before session 14."""
DEFAULT_REPEATS = 3
CLEANING_SHARE = 0.1
"""The share of most suspicious examples (after a first round of cross-validation) that the second round's heads
are fitted without (:func:`cleaned_cross_validation`). Measured in ``bench/detection.py`` at the same number of
fits: systematic noise AUROC 0.787 → 0.813 (SST-2) and 0.551 → 0.565 (drug reviews), uniform noise within
±0.005."""
NEIGHBOURS = 30
"""k of :func:`neighbour_label_probabilities`. Measured on SST-2 and the drug reviews (``bench/detection.py``'s
settings): stacked, 100 neighbours detect as 30 do (±0.007 AUROC); alone, 10 lose 0.02–0.04 AUROC against 30."""
EXACT_NEIGHBOURS_UP_TO = 200_000
"""Up to this many examples :func:`neighbour_label_probabilities` searches exactly (n² · h multiply-adds: 11.8 s at
67k × 384 on 2 cores, so about 45 minutes at 1M, extrapolated); beyond, an HNSW graph (M :data:`NEIGHBOUR_HNSW_M`,
efSearch :data:`NEIGHBOUR_EF_SEARCH`). On the 67k SST-2 MiniLM features it finds 97.3% of the exact 31 nearest
(5.0 s to build, 6.4 s to search all), and it grows as n log n. On unclustered random vectors its recall falls to
0.14 (200k), which is why small sets stay exact."""
NEIGHBOUR_HNSW_M = 32
NEIGHBOUR_EF_SEARCH = 64
STACK_LAMBDA = 0.1
"""The stacked head's L2 penalty (:func:`stacked_probabilities`). Measured as :data:`NEIGHBOURS`: 0.01 loses 0.016
AUROC under systematic noise; 1 gains 0.03 there and loses 0.03–0.04 under the drug reviews' uniform noise."""
ANCHOR_PERCENTILE = 97
"""Anchors of a class, for :func:`noise_transition`: the examples at or above this percentile of its probability.
Measured offline on ``bench/detection.py``'s SST-2 settings: 97 and 90 detect alike (systematic noise 0.911 and
0.903 AUROC with Bayes' rule through T⁻¹)."""
CV_LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0)
"""The L2 penalties (on standardised features; the objective is the mean cross-entropy + λ‖W‖²) that
:func:`cross_validated_probabilities` chooses from. Measured (``bench/detection.py``): 6,000 SST-2 sentences
choose 0.1 and 67k choose 1e-3; 600 long drug reviews choose 0.1–1. The penalty fixed at 1e-3 before lost
0.01–0.05 AUROC wherever the data were few."""


@dataclass
class LabelIssues:
    """order: (n,) int64 positions, most suspicious first; score: (n,) float64 in (0, 1], higher = more likely
    mislabeled; suggested: (n,) int64 suggested labels; label_probability: (n,) float64 probability of the given
    label (out of sample when cross-validated probabilities were given); parts: each signal's own (n,) score."""

    order: np.ndarray
    score: np.ndarray
    suggested: np.ndarray
    label_probability: np.ndarray
    parts: dict[str, np.ndarray] = field(default_factory=dict)


def scan_weights(method: str) -> dict[str, float]:
    """The signal weights of a scan method."""
    check_choice("scan method", method, SCAN_METHODS)
    return SCAN_METHODS[method]


def self_influence_methods(weights: Mapping[str, float]) -> list[str]:
    """The attribution methods whose self-influence these weights use."""
    return [name.split(":", 1)[1] for name, w in weights.items() if name.startswith("self_influence:") and w]


def rank_scores(x: np.ndarray) -> np.ndarray:
    """(n,) → (n,) float64 in (0, 1]: the fraction of values ≤ each value (ties share their mean rank)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse] / len(x)


def given_label_probability(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """(n,) probability each row gives to its given label."""
    return np.asarray(probabilities, dtype=np.float64)[np.arange(len(labels)), labels]


def suggest_labels(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """(n,) int64: the most probable label other than the given one."""
    p = np.array(probabilities, dtype=np.float64)
    if p.shape[1] < 2:
        raise DatablameError("a single class: no other label to suggest", "train on data with two or more labels")
    p[np.arange(len(labels)), labels] = -np.inf
    return p.argmax(1).astype(np.int64)


def rank_label_issues(labels: Sequence[int], probabilities: np.ndarray | None = None,
                      cv_probabilities: np.ndarray | None = None,
                      self_influence: Mapping[str, np.ndarray] | None = None,
                      weights: Mapping[str, float] | None = None,
                      area_under_margin: np.ndarray | None = None,
                      cv_mlp_probabilities: np.ndarray | None = None,
                      knn_probabilities: np.ndarray | None = None,
                      stacked_probabilities: np.ndarray | None = None) -> LabelIssues:
    """Rank examples by how likely their label is wrong, combining the signals given.

    labels: (n,) given labels; probabilities, cv_probabilities, cv_mlp_probabilities, knn_probabilities,
    stacked_probabilities: (n, K); self_influence: method name → (n,); area_under_margin: (n,) AUM from training
    dynamics (:func:`.retrain.area_under_margin`; low = suspicious). Signals are named ``loss``, ``cv``, ``cv_mlp``,
    ``knn``, ``stacked``, ``self_influence:<method>`` and ``aum``;
    the score is their weighted mean rank score. ``weights`` by name; None weighs every signal given 1, otherwise a
    signal it does not name weighs 0 (it is still reported in ``parts``). At least one probability matrix is
    needed.
    """
    y = np.asarray(labels, dtype=np.int64)
    parts = {name: rank_scores(-given_label_probability(y, p))
             for name, p in (("loss", probabilities), ("cv", cv_probabilities), ("cv_mlp", cv_mlp_probabilities),
                             ("knn", knn_probabilities), ("stacked", stacked_probabilities)) if p is not None}
    for name, values in (self_influence or {}).items():
        values = np.asarray(values, dtype=np.float64)
        if values.shape != y.shape or not np.isfinite(values).all():
            raise DatablameError(f"self-influence of {name} has shape {values.shape} or non-finite values for "
                                 f"{len(y)} examples", "recompute it with 'datablame vectors'")
        parts[f"self_influence:{name}"] = rank_scores(values)
    if area_under_margin is not None:
        parts["aum"] = rank_scores(-np.asarray(area_under_margin, dtype=np.float64))
    out_of_sample = [p for p in (cv_probabilities, cv_mlp_probabilities) if p is not None]
    reference = stacked_probabilities if stacked_probabilities is not None else \
        np.mean(out_of_sample, axis=0) if out_of_sample else probabilities
    if reference is None or not parts:
        raise DatablameError("no probabilities to rank label issues with",
                             "give the model's probabilities or cross-validated ones")
    w = {name: 1.0 if weights is None else float(weights.get(name, 0.0)) for name in parts}
    if sum(w.values()) <= 0:
        raise DatablameError(f"no weighted signal among those given ({', '.join(parts)})",
                             "give a positive weight to at least one of them")
    score = sum(w[name] * s for name, s in parts.items()) / sum(w.values())
    order = np.lexsort((np.arange(len(y)), -score)).astype(np.int64)  # ties: lower id first
    return LabelIssues(order, score, suggest_labels(y, reference), given_label_probability(y, reference), parts)


def stratified_folds(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """(n,) int64 fold of each example: a seeded random partition with each label spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = (np.arange(len(members)) + rng.integers(folds)) % folds
    return fold


def cross_validated_probabilities(features: np.ndarray, labels: Sequence[int], num_classes: int, folds: int = 5,
                                  lam: float | None = None, seed: int = 0, repeats: int = DEFAULT_REPEATS,
                                  fit: np.ndarray | None = None) -> np.ndarray:
    """(n, K) float64 out-of-sample probabilities: each example predicted by a softmax head fit on the other folds.

    features: (n, h) penultimate features, standardised with each training fold's mean and deviation.
    Folds are a seeded random partition, stratified by label; the probabilities are averaged over ``repeats``
    partitions (seeds ``seed``, ``seed + 1``, …), which lowers their variance. ``lam``: the heads' L2 penalty;
    None (auto) chooses it from :data:`CV_LAMBDAS` on the first partition (:func:`choose_cv_lambda`), whose
    probabilities at the chosen penalty are then reused. ``fit``: (n,) bool, the examples the heads may be fitted
    on (None: all); every example is predicted.
    """
    runs = []
    if lam is None:
        lam, first = choose_cv_lambda(features, labels, num_classes, folds, seed, fit)
        runs.append(first)
    runs += [_out_of_fold(features, labels, num_classes, folds, seed + r, _softmax_head(num_classes, lam), fit=fit)
             for r in range(len(runs), repeats)]
    return np.mean(runs, axis=0)


def cross_validated_mlp_probabilities(features: np.ndarray, labels: Sequence[int], num_classes: int,
                                      folds: int = 5, seed: int = 0, repeats: int = DEFAULT_REPEATS,
                                      device: str | torch.device = "cpu", fit: np.ndarray | None = None
                                      ) -> np.ndarray:
    """(n, K) float64 out-of-sample probabilities, as :func:`cross_validated_probabilities` (same folds, same
    standardisation, ``repeats`` partitions averaged, ``fit``) but from one-hidden-layer MLPs
    (:func:`.heads.fit_mlp_head`, seeded by the partition's seed), fitted in float32 on ``device``."""
    return np.mean([_out_of_fold(features, labels, num_classes, folds, seed + r,
                                 lambda x, y, s=seed + r: fit_mlp_head(x, y, num_classes, s), torch.float32, device,
                                 fit) for r in range(repeats)], axis=0)


def without_most_suspicious(labels: Sequence[int], probabilities: Sequence[np.ndarray], share: float) -> np.ndarray:
    """(n,) bool: every example but the ``share`` most suspicious (rounded up) by the mean rank of 1 − p(given label)
    under the (n, K) ``probabilities`` given; ties leave out the lower position first."""
    y = np.asarray(labels, dtype=np.int64)
    suspicion = np.mean([rank_scores(-given_label_probability(y, p)) for p in probabilities], 0)
    keep = np.ones(len(y), dtype=bool)
    keep[np.argsort(-suspicion, kind="stable")[:math.ceil(share * len(y))]] = False
    return keep


def cleaned_cross_validation(features: np.ndarray, labels: Sequence[int], num_classes: int, folds: int = 5,
                             seed: int = 0, repeats: int = DEFAULT_REPEATS, share: float = CLEANING_SHARE,
                             linear: bool = True, mlp: bool = True, device: str | torch.device = "cpu"
                             ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(n, K) out-of-sample probabilities of the linear heads and of the MLPs (None for a kind not asked for), in
    two rounds, as noisy cross-validation does (Chen et al. 2019): the first, one partition (seed ``seed``), ranks
    every example by its heads' 1 − p(given label) (ranks averaged over the kinds); the second, ``repeats`` − 1
    partitions (seeds ``seed + 1`` …), fits its heads without the ``share`` most suspicious of them, so that fewer
    wrong labels teach the heads that judge the others, and predicts every example. The second round's
    probabilities are returned: ``repeats`` partitions' fits in all, as one round of ``repeats`` would take.
    ``repeats`` 1 or ``share`` 0: one round."""
    y = np.asarray(labels, dtype=np.int64)

    def round_of(partitions: int, start: int, fit: np.ndarray | None, lam: float | None
                 ) -> tuple[np.ndarray | None, np.ndarray | None]:
        return (cross_validated_probabilities(features, y, num_classes, folds, lam, start, partitions, fit)
                if linear else None,
                cross_validated_mlp_probabilities(features, y, num_classes, folds, start, partitions, device, fit)
                if mlp else None)

    if repeats < 2 or share <= 0:
        return round_of(repeats, seed, None, None)
    lam, first = choose_cv_lambda(features, y, num_classes, folds, seed) if linear else (None, None)
    probabilities = [first, cross_validated_mlp_probabilities(features, y, num_classes, folds, seed, 1, device)
                     if mlp else None]
    keep = without_most_suspicious(y, [p for p in probabilities if p is not None], share)
    log.info("second round of cross-validation: heads fitted without the %d most suspicious examples",
             int((~keep).sum()))
    return round_of(repeats - 1, seed + 1, keep, lam)


def neighbour_label_probabilities(features: np.ndarray, labels: Sequence[int], num_classes: int,
                                  k: int = NEIGHBOURS, block: int = 4096, progress: Progress | None = None,
                                  exact_up_to: int = EXACT_NEIGHBOURS_UP_TO) -> np.ndarray:
    """(n, K) float64: the share of each label among each example's ``k`` nearest other examples (min(k, n − 1)),
    by cosine similarity of its (n, h) features: FAISS inner product on unit rows, exact up to ``exact_up_to``
    examples, an HNSW graph beyond (:data:`EXACT_NEIGHBOURS_UP_TO`); ``block`` queries at a time. An example is never
    its own neighbour (a duplicate of it is), so the share is out of sample. The unit rows are made ``block`` at a
    time, so that FAISS holds the only full copy of them (n · h · 4 bytes: 1.5 GB at 1M × 384) besides
    ``features``."""
    import faiss

    y = np.asarray(labels, dtype=np.int64)
    k = min(k, len(y) - 1)
    if k < 1:
        raise DatablameError(f"{len(y)} example: no neighbours to ask", "give at least two examples")

    def unit(rows: np.ndarray) -> np.ndarray:
        z = np.asarray(features[rows], dtype=np.float32)
        return np.ascontiguousarray(z / np.clip(np.linalg.norm(z, axis=1, keepdims=True), 1e-12, None))

    blocks = [np.arange(start, min(start + block, len(y))) for start in range(0, len(y), block)]
    dim = np.shape(features)[1]
    if len(y) <= exact_up_to:
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, NEIGHBOUR_HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = max(NEIGHBOUR_EF_SEARCH, k + 1)
        log.info("neighbours of %d examples: HNSW (M %d, efSearch %d)", len(y), NEIGHBOUR_HNSW_M,
                 index.hnsw.efSearch)
    for rows in blocks:
        index.add(unit(rows))
    out = np.empty((len(y), num_classes), dtype=np.float64)
    for rows in blocks:
        _, found = index.search(unit(rows), k + 1)
        # the first k results that are neither the example itself (wherever ties put it) nor missing (−1)
        valid = (found != rows[:, None]) & (found >= 0)
        use = valid & (np.cumsum(valid, axis=1) <= k)
        votes = (y[np.where(valid, found, 0)][:, :, None] == np.arange(num_classes)) & use[:, :, None]
        out[rows] = votes.sum(1) / np.maximum(use.sum(1, keepdims=True), 1)
        if progress is not None:
            progress(int(rows[-1]) + 1, len(y))
    return out


def stacked_probabilities(inputs: Sequence[np.ndarray], labels: Sequence[int], num_classes: int, folds: int = 5,
                          seed: int = 0, fit: np.ndarray | None = None, lam: float = STACK_LAMBDA) -> np.ndarray:
    """(n, K) float64 out-of-sample probabilities of a softmax head stacked on m (n, K) out-of-sample probability
    matrices: its features are their (n, m·K) log-probabilities (clipped at 1e-4), standardised; it is fitted fold by
    fold as :func:`cross_validated_probabilities` fits (L2 penalty ``lam``, seeded partition ``seed``, only the
    examples in ``fit``) and predicts each example from the folds it was not in. Fitting the given labels learns how
    far to trust each input and each input's classes."""
    y = np.asarray(labels, dtype=np.int64)
    if not inputs or any(np.shape(p) != (len(y), num_classes) for p in inputs):
        raise DatablameError(f"stacking needs (n, K) = ({len(y)}, {num_classes}) probabilities, got "
                             f"{[np.shape(p) for p in inputs]}", "give each input's out-of-sample probabilities")
    x = np.concatenate([np.log(np.clip(p, 1e-4, 1.0)) for p in inputs], 1)
    return _out_of_fold(x, y, num_classes, folds, seed, _softmax_head(num_classes, lam), fit=fit)


def noise_transition(probabilities: np.ndarray, percentile: float = ANCHOR_PERCENTILE) -> np.ndarray:
    """(K, K) estimate of the label noise T[j, k] = P(given label k | true class j) by anchor points (Patrini et al.
    2017): row j is the mean (n, K) probability row of class j's anchors, the examples at or above the
    ``percentile`` of p(j). ``probabilities`` must model the given labels as they are (fitted on all of them, out of
    sample), so that an anchor's row is the given-label distribution of a sure member of its class."""
    p = np.asarray(probabilities, dtype=np.float64)
    return np.stack([p[p[:, j] >= np.percentile(p[:, j], percentile)].mean(0) for j in range(p.shape[1])])


def diagonally_dominant(transition: np.ndarray) -> bool:
    """Whether every class keeps its own label more often than it takes any other (T[j, j] > T[j, k], k ≠ j): the
    condition under which anchor points identify T. A small class no model recognises fails it."""
    t = np.asarray(transition)
    return bool(all(t[j, j] > np.delete(t[j], j).max() for j in range(len(t))))


def clean_label_posterior(labels: Sequence[int], probabilities: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """(n, K) P(true class j | x, given label k) ∝ T[j, k] · p(j | x): Bayes' rule with (n, K) clean-class
    probabilities and the (K, K) noise ``transition``; its column at the given label is the probability that the
    label is right."""
    y = np.asarray(labels, dtype=np.int64)
    joint = np.asarray(probabilities, dtype=np.float64) * np.asarray(transition, dtype=np.float64)[:, y].T
    return joint / np.clip(joint.sum(1, keepdims=True), 1e-300, None)


def cross_validated_signals(features: np.ndarray, labels: Sequence[int], num_classes: int,
                            signals: Sequence[str] = ("stacked",), folds: int = 5, seed: int = 0,
                            repeats: int = DEFAULT_REPEATS, share: float = CLEANING_SHARE,
                            device: str | torch.device = "cpu", progress: Progress | None = None
                            ) -> dict[str, np.ndarray]:
    """The out-of-sample probabilities a scan needs, as :func:`rank_label_issues`'s keyword arguments
    (``cv_probabilities``, ``cv_mlp_probabilities``, ``knn_probabilities``, ``stacked_probabilities``), for the
    ``signals`` named (``cv``, ``cv_mlp``, ``knn``, ``stacked``; others are ignored).

    The linear heads and the MLPs come from :func:`cleaned_cross_validation` (two rounds); the neighbours from
    :func:`neighbour_label_probabilities` (``progress`` follows its search); ``stacked`` needs all three and stacks
    them (:func:`stacked_probabilities`) on a partition of its own (seed ``seed + repeats``), fitted without the
    ``share`` most suspicious by the mean rank of the heads' probabilities, as the second round fits its heads.
    The label noise is then estimated by anchor points on the same stack fitted on every label
    (:func:`noise_transition`); when the estimate is diagonally dominant, ``stacked`` is the posterior of the true
    class given the features and the given label (:func:`clean_label_posterior`), else the cleaned stack's
    probabilities. (n, K) float64 each."""
    wanted = set(signals) | ({"cv", "cv_mlp", "knn"} if "stacked" in signals else set())
    y = np.asarray(labels, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    if wanted & {"cv", "cv_mlp"}:
        linear, mlp = cleaned_cross_validation(features, y, num_classes, folds, seed, repeats, share,
                                               linear="cv" in wanted, mlp="cv_mlp" in wanted, device=device)
        out.update({k: v for k, v in (("cv_probabilities", linear), ("cv_mlp_probabilities", mlp)) if v is not None})
    if "knn" in wanted:
        out["knn_probabilities"] = neighbour_label_probabilities(features, y, num_classes, progress=progress)
    if "stacked" in wanted:
        inputs = [out[k] for k in ("cv_probabilities", "cv_mlp_probabilities", "knn_probabilities")]
        keep = without_most_suspicious(y, inputs[:2], share)
        stacked = stacked_probabilities(inputs, y, num_classes, folds, seed + repeats, keep)
        transition = noise_transition(stacked_probabilities(inputs, y, num_classes, folds, seed + repeats))
        trusted = diagonally_dominant(transition)
        if trusted:
            stacked = clean_label_posterior(y, stacked, transition)
        log.info("label noise estimated by anchor points (rows: true class; columns: given label)%s:\n%s",
                 "" if trusted else ", not diagonally dominant, so not used",
                 np.array2string(transition, precision=3))
        out["stacked_probabilities"] = stacked
    return out


def choose_cv_lambda(features: np.ndarray, labels: Sequence[int], num_classes: int, folds: int = 5, seed: int = 0,
                     fit: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """The penalty of :data:`CV_LAMBDAS` whose out-of-fold probabilities (one partition, seed ``seed``, heads fitted
    on ``fit``) give the given labels the least mean cross-entropy (nats), and those (n, K) probabilities. Model
    selection on the given labels alone, as any cross-validation does: no clean label is needed."""
    y = np.asarray(labels, dtype=np.int64)
    best = None
    for lam in CV_LAMBDAS:
        probs = _out_of_fold(features, y, num_classes, folds, seed, _softmax_head(num_classes, lam), fit=fit)
        loss = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())
        log.info("cross-validated heads, λ %g: out-of-fold cross-entropy %.4f nats", lam, loss)
        if best is None or loss < best[0]:
            best = (loss, lam, probs)
    log.info("cross-validated heads: λ %g chosen", best[1])
    return best[1], best[2]


Fitter = Callable[[torch.Tensor, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]
"""Fits a head on (m, h) standardised features and (m,) labels; returns the map from (r, h) features to (r, K)
logits."""


def _softmax_head(num_classes: int, lam: float) -> Fitter:
    def fit(x: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        w = fit_softmax_head(with_bias(x), y, num_classes, lam)
        return lambda rows: with_bias(rows) @ w.T
    return fit


def _out_of_fold(features: np.ndarray, labels: Sequence[int], num_classes: int, folds: int, seed: int,
                 fitter: Fitter, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu",
                 fit: np.ndarray | None = None) -> np.ndarray:
    """(n, K) float64: each fold's probabilities from a head ``fitter`` fits on the other folds (seeded stratified
    partition; only their examples in ``fit``, when given), features standardised with the fitted rows' mean and
    deviation."""
    x = torch.as_tensor(np.asarray(features), dtype=dtype, device=device)
    y = np.asarray(labels, dtype=np.int64)
    if len(y) < 2 * folds:
        raise DatablameError(f"{len(y)} examples are too few for {folds}-fold cross-validation",
                             f"give at least {2 * folds} examples or fewer folds")
    fold = torch.as_tensor(stratified_folds(y, folds, seed), device=device)
    allowed = torch.ones(len(y), dtype=torch.bool, device=device) if fit is None else \
        torch.as_tensor(np.asarray(fit, dtype=bool), device=device)
    out = np.empty((len(y), num_classes), dtype=np.float64)
    for k in range(folds):
        held, fitted = fold == k, (fold != k) & allowed
        mean, std = x[fitted].mean(0), x[fitted].std(0).clamp_min(1e-8)
        predict = fitter((x[fitted] - mean) / std, torch.as_tensor(y, device=device)[fitted])
        with torch.no_grad():
            out[held.cpu().numpy()] = predict((x[held] - mean) / std).double().softmax(-1).cpu().numpy()
    return out


def probabilities_and_features(task: Task, model: nn.Module, examples: Examples, batch_size: int = 64,
                               progress: Progress | None = None,
                               cache: FeatureCache | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, K) float64 class probabilities and (n, h) float32 penultimate features of ``model`` on ``examples``.

    With ``cache`` (a :class:`.features.FeatureCache` of ``examples``, e.g. the workdir's), the features come from
    it (computed and kept when missing) and the probabilities from the head on them: after ``train
    --freeze-encoder`` no encoder pass at all, minutes saved at 67k examples."""
    if cache is None:
        logits, feats = logits_and_features_of(task, model, examples, batch_size, progress)
    else:
        feats = cache.of(task, model).rows(np.arange(len(examples)), progress)
        head = task.head(model)
        with torch.no_grad():
            logits = head(feats.to(head.weight.dtype))
    return logits.double().softmax(-1).cpu().numpy(), feats.float().cpu().numpy()
