"""Verification benchmark: does leaving out an explanation's top supporters move its prediction more than leaving
out random examples? Prints JSON.

``datablame explain WORKDIR TEXT --verify`` (:func:`datablame.index.verify.verify`) retrains the head of a
frozen-encoder workdir without the explanation's top-K supporting examples, without K random examples with the
same labels as those supporters (one set per draw, ``same_label_draws``) and without the top-K opposing examples,
and reads the query's margin for the originally predicted label (nats: its logit minus the largest other) off
each retrained head. This benchmark does that for many queries, every registered method, both scorings and
several K at once.

Setting: a seeded subset of --n SST-2 training sentences; a linear head on the frozen all-MiniLM-L6-v2 encoder,
trained as the README's own-data flow (20 epochs, lr 1e-2, batch 16, 3 checkpoints, max length 64,
--pooling, default auto); every registered method indexed with the CLI's defaults (``MethodSettings.faithful()``, cosine and raw
indexes); --queries seeded SST-2 dev sentences, explained with ``top`` = the largest K (the top-K of each K is
that list's prefix). Every removal is a subset of the training rows; the distinct subsets are retrained as
verify() retrains them (``retrain_heads(..., paired=True)`` from ``initial_head`` with the workdir's ``recipe``,
on the workdir's cached features), --chunk subsets per call, the subset of all rows once as the original. The
random draws of query q are seeded by (--seed, q), the same for every method, scoring and K.

Reported per method, scoring and K, over the queries: ``beats_random``, the fraction where leaving out the top K
lowers the margin more than every random draw does; ``mean_margin_drop`` of the top, random (mean over draws) and
opposing removals (original − without; negative for opposing: the margin rose); ``flipped``, the fraction whose
prediction changes without the top K (margin < 0); ``holds``, the fraction where the top K beat every random draw
and leaving out the opponents raises the margin (verify()'s verdict). ``stability`` (at K = 10, cosine): per
method, the mean overlap@K of ``explain --stability`` (between checkpoints, with the raw list, with a second
projection seed where the vectors are sketched) and the fraction of robust supporters. ``targets``: for the default method
(``registry.DEFAULT_METHOD``) at K = 10, beats_random ≥ 0.95 under each scoring, and whether its mean margin drop
is the largest of all methods'. ``--check Q`` calls verify() itself for the first Q queries (default method, both
scorings, every K) and reports the largest difference from this benchmark's margins (``check``).

    PYTHONPATH=/tmp/minilm python bench/verify.py [--data ../shared/data/sst2] [--n 2000] [--queries 100] \\
        [--ks 1 5 10 20 50] [--draws 3] [--seed 0] [--chunk 128] [--check 2]
    PYTHONPATH=/tmp/minilm python bench/verify.py --quick    # smoke run: n 500, 20 queries, K 1 and 10
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from artifacts import minilm, subset_parser, write_tsv  # noqa: E402
from datablame.index.explain import Explainer, Explanation, index_workdir  # noqa: E402
from datablame.index.search import SCORINGS  # noqa: E402
from datablame.index.stability import stability  # noqa: E402
from datablame.index.verify import margins, same_label_draws, verify  # noqa: E402
from datablame.influence.build import MethodSettings  # noqa: E402
from datablame.influence.data import Examples, load_examples  # noqa: E402
from datablame.influence.features import FeatureCache  # noqa: E402
from datablame.influence.models import load_classifier  # noqa: E402
from datablame.influence.registry import DEFAULT_METHOD, method_names  # noqa: E402
from datablame.influence.retrain import initial_head, recipe, retrain_heads  # noqa: E402
from datablame.influence.task import logits_and_features_of  # noqa: E402
from datablame.influence.train import TrainSettings, train  # noqa: E402
from datablame.influence.workdir import Workdir  # noqa: E402

TARGET_K, TARGET_BEATS_RANDOM = 10, 0.95
"""The targets block: the default method at K = 10 beats every random draw on at least 95% of the queries."""


def log(message: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sample(data: pathlib.Path, split: str, n: int, rng: np.random.Generator, tmp: pathlib.Path,
           label_names: list[str] | None = None) -> Examples:
    """A seeded subset of n rows of SST-2 ``split``.tsv, in file order, written to ``tmp`` and loaded from there."""
    full = load_examples(data / f"{split}.tsv", "sentence", label_names=label_names)
    ex = full.subset(np.sort(rng.choice(len(full), n, replace=False)))
    path = write_tsv(tmp / f"{split}.tsv", ex.texts, [ex.label_names[y] for y in ex.labels])
    return load_examples(path, "sentence", label_names=label_names)


def draw_seed(seed: int, query: int) -> int:
    """The seed of query ``query``'s random draws: one integer per (seed, query)."""
    return int(np.random.SeedSequence([seed, query]).generate_state(1)[0])


class Subsets:
    """The distinct removals to retrain without, each a sorted tuple of training ids; position 0 removes nothing
    (the original)."""

    def __init__(self):
        self.position: dict[tuple[int, ...], int] = {(): 0}

    def add(self, ids) -> int:
        """The position of the removal of ``ids`` (any order), added when new."""
        return self.position.setdefault(tuple(sorted(int(i) for i in ids)), len(self.position))

    def removed(self) -> list[tuple[int, ...]]:
        """Every removal, in position order."""
        return list(self.position)


def plan(explanations: dict[tuple[str, str], list[Explanation]], labels: np.ndarray, ks: list[int], draws: int,
         seed: int, subsets: Subsets) -> dict[tuple[str, str, int], np.ndarray]:
    """Per (method, scoring, K): the (queries, draws + 2) positions in ``subsets`` of the removals without the top
    K, without each random draw and without the top-K opponents of each query's explanation."""
    out = {}
    for (method, scoring), rows in explanations.items():
        for k in ks:
            positions = []
            for q, e in enumerate(rows):
                top = np.array([n.id for n in e.supporting[:k]], dtype=np.int64)
                randoms = same_label_draws(labels, top, draws, draw_seed(seed, q))
                positions.append([subsets.add(ids) for ids in (top, *randoms, [n.id for n in e.opposing[:k]])])
            out[method, scoring, k] = np.array(positions)
    return out


def retrained_margins(wd: Workdir, train_set: Examples, removed: list[tuple[int, ...]], query_x: torch.Tensor,
                      predicted: np.ndarray, chunk: int) -> np.ndarray:
    """(subsets, queries) margins (nats) of each query's predicted label under the head retrained without each
    removal, as verify() retrains it, ``chunk`` subsets per ``retrain_heads`` call. ``query_x``: (queries, h)
    features; ``predicted``: (queries,) label ids."""
    config = wd.load()
    model, task = load_classifier(wd.checkpoint_path(config.checkpoints[-1]), config.label_names, "cpu",
                                  config.max_length)
    everything = np.arange(len(train_set))
    x = FeatureCache(train_set, wd.features_cache).of(task, model).rows(everything)
    y = torch.as_tensor(np.asarray(train_set.labels))
    init, settings = initial_head(config), recipe(config)
    out = np.empty((len(removed), len(predicted)), dtype=np.float32)
    start = time.perf_counter()
    for lo in range(0, len(removed), chunk):
        subsets = [np.setdiff1d(everything, ids) for ids in removed[lo:lo + chunk]]
        logits = retrain_heads(init, x, y, subsets, settings, paired=True).logits(query_x)  # (R, queries, K)
        for q, label in enumerate(predicted):
            out[lo:lo + len(subsets), q] = margins(logits[:, q, :], int(label))[0]
        done, elapsed = lo + len(subsets), time.perf_counter() - start
        log(f"retrained {done}/{len(removed)} heads in {elapsed:.0f} s, "
            f"about {elapsed / done * (len(removed) - done):.0f} s left")
    return out


@dataclass
class Result:
    """One method, scoring and K over the queries (see the module's doc); margin drops in nats."""

    method: str
    scoring: str
    k: int
    beats_random: float
    mean_margin_drop: dict
    flipped: float
    holds: float


def result(method: str, scoring: str, k: int, margin: np.ndarray, positions: np.ndarray) -> Result:
    """The summary of (subsets, queries) margins ``margin`` at the (queries, draws + 2) removal positions."""
    m = margin[positions, np.arange(len(positions))[:, None]]  # (queries, draws + 2): top, randoms…, opposing
    original = margin[0][:, None]
    top, randoms, opposing = m[:, 0], m[:, 1:-1], m[:, -1]
    drop = original - m
    return Result(method, scoring, k, beats_random=_mean(top < randoms.min(1)),
                  mean_margin_drop={"top": _mean(drop[:, 0]), "random": _mean(drop[:, 1:-1]),
                                    "opposing": _mean(drop[:, -1])},
                  flipped=_mean(top < 0), holds=_mean((top < randoms.min(1)) & (opposing > margin[0])))


def _mean(values: np.ndarray) -> float:
    """The mean of an array (a bool array: a fraction), rounded for the JSON."""
    return round(float(np.mean(values)), 4)


def targets(results: list[Result]) -> dict:
    """Per scoring: the default method's beats_random at K = 10 against its target, and whether its mean margin
    drop there is the largest of all methods'."""
    out = {}
    for scoring in SCORINGS:
        at = {r.method: r for r in results if r.scoring == scoring and r.k == TARGET_K}
        best = max(at, key=lambda name: at[name].mean_margin_drop["top"])
        default = at[DEFAULT_METHOD]
        out[scoring] = {"beats_random": {"value": default.beats_random, "target": TARGET_BEATS_RANDOM,
                                         "met": default.beats_random >= TARGET_BEATS_RANDOM},
                        "largest_mean_margin_drop": {"value": default.mean_margin_drop["top"], "best": best,
                                                     "best_value": at[best].mean_margin_drop["top"],
                                                     "met": best == DEFAULT_METHOD}}
    return {"method": DEFAULT_METHOD, "k": TARGET_K, **out}


def check(wd: pathlib.Path, texts: list[str], ks: list[int], draws: int, seed: int, margin: np.ndarray,
          positions: dict[tuple[str, str, int], np.ndarray]) -> dict:
    """verify() itself for each of ``texts`` (the first queries) with the default method, both scorings and every
    K, against this benchmark's margins: the largest absolute difference (nats) over every variant."""
    explainers = [Explainer(wd, DEFAULT_METHOD, scoring, device="cpu") for scoring in SCORINGS]
    diff = 0.0
    for q, text in enumerate(texts):
        for k in ks:
            for scoring, v in zip(SCORINGS, verify(explainers, text, k, draws, draw_seed(seed, q))):
                ours = margin[[0, *positions[DEFAULT_METHOD, scoring, k][q]], q]
                theirs = [v.margin["original"], v.margin["without_top"], *v.margin["without_random"],
                          v.margin["without_opposing"]]
                diff = max(diff, float(np.abs(ours - np.array(theirs)).max()))
        log(f"check: query {q + 1}/{len(texts)}, largest difference so far {diff:.2e}")
    return {"method": DEFAULT_METHOD, "queries": len(texts), "ks": ks, "max_abs_margin_diff": float(f"{diff:.3g}")}


def explain_all(wd: pathlib.Path, texts: list[str], top: int) -> dict[tuple[str, str], list[Explanation]]:
    """Every registered method indexed with the CLI's defaults and its ``top`` supporters and opponents of every
    text, per (method, scoring)."""
    out = {}
    for method in method_names():
        start = time.perf_counter()
        index_workdir(wd, method, MethodSettings.faithful(device="cpu"))
        explainer = Explainer(wd, method, SCORINGS[0], device="cpu")
        for scoring in SCORINGS:
            out[method, scoring] = explainer.with_scoring(scoring).explain(texts, top=top)
        log(f"{method}: indexed and explained {len(texts)} queries in {time.perf_counter() - start:.1f} s")
    return out


def stability_figures(workdir: pathlib.Path, texts: list[str], k: int) -> dict:
    """Per method, the mean over the queries of ``explain --stability``'s overlap@k (Jaccard) of the cosine
    list: between the checkpoints' top lists, of each with the explanation's, with the raw list, and with a
    second projection seed's (None where it does not apply: one checkpoint; exact gradients), and the fraction of
    supporters that are robust (in most checkpoints' lists and in the other scoring's)."""
    out = {}
    for method in method_names():
        cosine = Explainer(workdir, method, "cosine", device="cpu")
        raw = cosine.with_scoring("raw")
        reports = [stability(cosine, raw, text, k) for text in texts]

        def mean(key: str):
            values = [r["overlap"][key] for r in reports if r["overlap"].get(key) is not None]
            return round(float(np.mean(values)), 4) if values else None

        robust = [(e["checkpoints"] is None or 2 * e["checkpoints"] > e["of"]) and e["other_scoring"] is not False
                  and e.get("other_seed") is not False for r in reports for e in r["examples"]]
        out[method] = {**{key: mean(key) for key in ("checkpoints", "checkpoint_vs_sum", "scorings", "seeds")},
                       "robust": round(float(np.mean(robust)), 4) if robust else None, "seed": reports[0]["seed"]}
    return out


def run(args, tmp: pathlib.Path) -> dict:
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    train_set = sample(args.data, "train", args.n, rng, tmp)
    queries = sample(args.data, "dev", args.queries, rng, tmp, train_set.label_names)
    settings = TrainSettings(epochs=20, lr=1e-2, batch_size=16, checkpoints=3, max_length=64, freeze_encoder=True,
                             pooling=args.pooling, seed=args.seed, device="cpu")
    log(f"training the head on {args.n} sentences ({settings})")
    train(train_set, minilm(), tmp / "wd", settings)
    wd = Workdir(tmp / "wd")
    train_s = time.perf_counter() - start
    model, task = load_classifier(wd.checkpoint_path(wd.load().checkpoints[-1]), train_set.label_names, "cpu",
                                  settings.max_length)
    logits, query_x = logits_and_features_of(task, model, queries)
    predicted = logits.argmax(-1).numpy()
    texts = list(queries.texts)
    explanations = explain_all(wd.root, texts, max(args.ks))
    for (method, scoring), rows in explanations.items():
        if [train_set.label_names.index(e.prediction["label"]) for e in rows] != predicted.tolist():
            raise RuntimeError(f"{method} {scoring}: explained predictions differ from the final checkpoint's")
    subsets = Subsets()
    positions = plan(explanations, np.asarray(train_set.labels), args.ks, args.draws, args.seed, subsets)
    log(f"{len(subsets.position)} distinct subsets to retrain")
    retrain_start = time.perf_counter()
    margin = retrained_margins(wd, train_set, subsets.removed(), query_x, predicted, args.chunk)
    retrain_s = time.perf_counter() - retrain_start
    results = [result(method, scoring, k, margin, p) for (method, scoring, k), p in positions.items()]
    out = {"benchmark": "verify",
           "setup": {"data": "SST-2", "n": args.n, "queries": args.queries, "ks": args.ks, "draws": args.draws,
                     "seed": args.seed, "quick": args.quick, "model": "all-MiniLM-L6-v2 (frozen)",
                     "training": {k: v for k, v in asdict(settings).items() if k != "device"},
                     "epochs": settings.epochs, "methods": list(method_names()),
                     "test_accuracy": round(float((predicted == queries.labels).mean()), 4),
                     "original_margin_mean": _mean(margin[0]), "retrained_subsets": len(subsets.position),
                     "chunk": args.chunk,
                     "train_seconds": round(train_s, 1), "retrain_seconds": round(retrain_s, 1)},
           "results": [asdict(r) for r in results]}
    if TARGET_K in args.ks:
        out["targets"] = targets(results)
    if TARGET_K in args.ks:
        out["stability"] = {"k": TARGET_K, "scoring": "cosine", **stability_figures(wd.root, texts, TARGET_K)}
    if args.check:
        out["check"] = check(wd.root, texts[:args.check], args.ks, args.draws, args.seed, margin, positions)
    out["setup"]["seconds"] = round(time.perf_counter() - start, 1)
    return out


def main() -> None:
    parser = subset_parser(__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=100, help="dev sentences explained and verified")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10, 20, 50], help="supporters removed")
    parser.add_argument("--draws", type=int, default=3, help="random same-label removals per query and K")
    parser.add_argument("--seed", type=int, default=0, help="the subsets', the training's and the draws' seed")
    parser.add_argument("--chunk", type=int, default=128, help="heads retrained per retrain_heads call")
    parser.add_argument("--check", type=int, default=0, metavar="Q",
                        help="also run verify() on the first Q queries and report the largest margin difference")
    parser.add_argument("--quick", action="store_true", help="smoke run: --n 500 --queries 20 --ks 1 10")
    args = parser.parse_args()
    if args.quick:
        args.n, args.queries, args.ks = 500, 20, [1, 10]
    with tempfile.TemporaryDirectory() as tmp:
        result_json = run(args, pathlib.Path(tmp))
    print(json.dumps(result_json, indent=2))


if __name__ == "__main__":
    main()
