"""Curation benchmark: does retraining on datablame's cleaned export beat training on the noisy labels? JSON.

For each noise setting of ``bench/detection.py`` (same subset, encoder, head and noise): the default scan ranks the
noisy training set, its top ``--flag-top`` fraction is flagged, and the flags are reviewed through the real store
(``record_scan``, ``set_status``, ``export`` to CSV, as ``datablame scan / flags accept|reject / export`` do) by
two simulated reviewers: ``auto`` accepts every flag unseen, ``oracle`` accepts exactly the flags on flipped
labels and rejects the others (a careful human). A head is retrained on each export, relabeled (suggested labels)
and with ``--drop``. Dev-set (SST-2 dev.tsv) accuracy against the head trained on the noisy set, and on the
noisy set minus as many random examples as were dropped; for two classifiers on the frozen features: the head
trained like ``datablame train --freeze-encoder`` and an L2 logistic regression fit to convergence.

    python bench/curation.py [--data ../shared/data/sst2] [--n 6000] [--flag-top 0.1] > curation.json
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import detection as bench  # noqa: E402

from datablame.influence import detect  # noqa: E402
from datablame.influence.data import load_examples  # noqa: E402
from datablame.store.db import default_url, open_db  # noqa: E402
from datablame.store.export import export  # noqa: E402
from datablame.store.flags import list_flags, set_status  # noqa: E402
from datablame.store.scans import ensure_dataset, find_dataset, record_scan  # noqa: E402


def dev_accuracy(x: np.ndarray, y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray, args) -> dict[str, float]:
    """Dev accuracy of the head trained like ``datablame train --freeze-encoder``, and of an L2 logistic
    regression fit to convergence on the same (standardised) features."""
    head = bench.train_head(x, y, args.epochs, args.lr, args.seed)[-1][0]
    mean, std = x.mean(0), x.std(0) + 1e-8

    def design(rows: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.c_[(rows - mean) / std, np.ones(len(rows))], dtype=torch.float64)

    w = detect.fit_softmax_head(design(x), torch.as_tensor(y), 2, lam=1e-3)
    return {"head": round(float((bench.probabilities(head, dev_x).argmax(1) == dev_y).mean()), 4),
            "logistic": round(float(((design(dev_x) @ w.T).argmax(1).numpy() == dev_y).mean()), 4)}


def cleaned_labels(train, noisy_labels: np.ndarray, x: np.ndarray, folder: Path, args) -> dict[str, tuple]:
    """(ids, labels) of each reviewer's relabeled and dropped export, through the store."""
    noisy = dataclasses.replace(train, labels=noisy_labels, ids=np.arange(len(train)))  # ids: positions
    weights = detect.scan_weights(detect.DEFAULT_SCAN)  # as the default scan
    signals = detect.cross_validated_signals(x, noisy_labels, 2, list(weights), seed=args.seed)
    issues = detect.rank_label_issues(noisy_labels, weights=weights, **signals)
    out = {}
    for reviewer in ("auto", "oracle"):
        (folder / reviewer).mkdir()
        db = open_db(default_url(folder / reviewer))
        record_scan(db, ensure_dataset(db, noisy), detect.DEFAULT_SCAN, issues, flag_top=args.flag_top)
        dataset = find_dataset(db, noisy.fingerprint)
        flags = list_flags(db, dataset)
        right = [f.id for f in flags if reviewer == "auto" or noisy_labels[f.example_id] != train.labels[f.example_id]]
        set_status(db, dataset, right, "accepted", who=reviewer)
        if len(right) < len(flags):
            set_status(db, dataset, sorted({f.id for f in flags} - set(right)), "rejected", who=reviewer)
        for name, drop in (("relabeled", False), ("dropped", True)):
            path = folder / f"{reviewer}-{name}.csv"
            export(db, dataset, path, drop=drop)
            ids = np.asarray(load_examples(path, "sentence", "id").labels, dtype=np.int64)
            out[f"{reviewer}_{name}"] = (ids, load_examples(path, "sentence", "label", ["0", "1"]).labels)
        db.close()
    return out


def main() -> None:
    parser = bench.common_arguments(__doc__.splitlines()[0])
    parser.add_argument("--flag-top", type=float, default=0.1)
    args = parser.parse_args()
    bench.set_threads(args.threads)
    train = bench.load_split(args.data, "train", args.n, args.seed)
    dev = bench.load_split(args.data, "dev", None, args.seed)
    x, dev_x = (bench.encode(part, args.cache, args.pooling, args.max_length) for part in (train, dev))
    result = {"data": {"train": len(train), "dev": len(dev), "seed": args.seed}, "flag_top": args.flag_top,
              "scan": detect.DEFAULT_SCAN, "clean_labels_accuracy": dev_accuracy(x, train.labels, dev_x, dev.labels, args),
              "settings": {}}
    for name, (kind, rate) in bench.SETTINGS.items():
        y = bench.add_noise(train.labels, kind, rate, args.seed)
        with tempfile.TemporaryDirectory() as tmp:
            cleaned = cleaned_labels(train, y, x, Path(tmp), args)
        rng = np.random.default_rng(args.seed)
        entry = {"noisy": dev_accuracy(x, y, dev_x, dev.labels, args), "flipped_labels": int((y != train.labels).sum())}
        for key, (ids, labels) in cleaned.items():
            entry[key] = dev_accuracy(x[ids], labels, dev_x, dev.labels, args)
            entry[f"{key}_flipped_labels_left"] = int((labels != train.labels[ids]).sum())
            if key.endswith("dropped"):
                keep = np.sort(rng.choice(len(y), len(ids), replace=False))
                entry[f"{key}_random_same_count"] = dev_accuracy(x[keep], y[keep], dev_x, dev.labels, args)
        result["settings"][name] = entry
        print(f"{name} done", file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
