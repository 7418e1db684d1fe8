"""Scanning a workdir: the whole ``datablame scan``, which the CLI, the demo and notebooks call.

:func:`scan_workdir` reads the last checkpoint's probabilities and features, computes the signals of the scan
method (cross-validated linear and MLP heads, self-influence from a registered method's vectors, the area under
the margin), ranks every training example by how likely its label is wrong, and records the ranking and the
flags in the store (:func:`.scans.record_scan`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from datablame.influence.workdir import Workdir

from .db import Database, default_url, open_db
from .scans import ScanRecord, ensure_dataset, record_scan

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # importing them loads torch
    from datablame.influence.data import Examples
    from datablame.influence.detect import LabelIssues
    from datablame.influence.workdir import Config


@dataclass
class ScanResult:
    """A finished scan: the ranking (positions = example ids), the examples, the stored record, and the flag
    threshold (the lowest score among the flagged top fraction; +inf when nothing is flagged)."""

    method: str
    issues: LabelIssues
    examples: Examples
    record: ScanRecord
    threshold: float

    def rows(self, limit: int | None = None) -> list[dict]:
        """The most suspicious examples first: id, text, label, score, suggested_label."""
        names, ex = self.examples.label_names, self.examples
        return [{"id": int(i), "text": ex.texts[i], "label": names[ex.labels[i]],
                 "score": round(float(self.issues.score[i]), 6), "suggested_label": names[self.issues.suggested[i]]}
                for i in self.issues.order[:limit]]


def scan_workdir(workdir: str | os.PathLike, method: str = "cv", flag_top: float = 0.05, folds: int = 5,
                 repeats: int = 3, db: Database | None = None, device: str = "auto",
                 progress: Callable | None = None) -> ScanResult:
    """Rank every training example of a workdir by how likely its label is wrong (``method``: a scan method of
    :data:`datablame.influence.detect.SCAN_METHODS`), store the scores and flag the top ``flag_top`` fraction as
    open ``mislabeled`` flags. ``db``: the store (default: the workdir's SQLite file)."""
    from datablame.influence import detect
    from datablame.influence.features import FeatureCache
    from datablame.influence.models import load_classifier, resolve_device

    weights = detect.scan_weights(method)
    wd = Workdir(workdir)
    config = wd.load()
    db = db or open_db(default_url(workdir))
    examples = wd.load_examples(config)
    wd.verify(config.checkpoints[-1:])
    model, task = load_classifier(wd.checkpoint_path(config.checkpoints[-1]), config.label_names, device,
                                  config.max_length)
    probs, features = detect.probabilities_and_features(task, model, examples, progress=progress,
                                                        cache=FeatureCache(examples, wd.features_cache))
    log.info("scan %s: %d examples, %d classes, features %s of checkpoint %s; signals %s", method, len(examples),
             len(config.label_names), tuple(features.shape), config.checkpoints[-1].path, weights)
    cv = detect.cross_validated_probabilities(features, examples.labels, len(config.label_names), folds,
                                              repeats=repeats) if weights.get("cv") else None
    cv_mlp = detect.cross_validated_mlp_probabilities(
        features, examples.labels, len(config.label_names), folds, repeats=repeats,
        device=resolve_device(device)) if weights.get("cv_mlp") else None
    influence = {m: self_influence(workdir, m, config, device, progress)
                 for m in detect.self_influence_methods(weights)}
    aum = training_margins(config, features, examples.labels, device) if weights.get("aum") else None
    issues = detect.rank_label_issues(examples.labels, probs, cv, influence, weights, aum, cv_mlp)
    log.info("given label's mean probability %.3f; flagging the top %.1f%%", issues.label_probability.mean(),
             100 * flag_top)
    record = record_scan(db, ensure_dataset(db, examples), method, issues, next(iter(influence.values()), None),
                         flag_top, {"weights": weights, "folds": folds, "repeats": repeats, "flag_top": flag_top},
                         [asdict(c) for c in config.checkpoints])
    top = math.ceil(flag_top * len(issues.order))
    threshold = float(issues.score[issues.order[top - 1]]) if top else math.inf
    return ScanResult(method, issues, examples, record, threshold)


def training_margins(config: Config, features: np.ndarray, labels, device: str = "auto") -> np.ndarray:
    """(n,) AUM of every training example, from the head's training replayed on its features (a workdir trained
    with --freeze-encoder: the final checkpoint's features are the ones it trained on)."""
    import torch

    from datablame.influence.retrain import area_under_margin, initial_head, recipe

    settings = recipe(config)  # refuses a workdir whose whole model was fine-tuned
    init = initial_head(config, device)
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32, device=init.weight.device)
    return area_under_margin(init, x, torch.as_tensor(np.asarray(labels), device=x.device), settings)


def self_influence(workdir: str | os.PathLike, method: str, config: Config, device: str = "auto",
                   progress: Callable | None = None) -> np.ndarray:
    """(n,) self-influence of ``method``, computing the vectors first when they are missing or were computed
    from other data or other checkpoints (weights compared by digest); stored vectors of other settings of the
    same model (e.g. another --dim) serve."""
    from datablame.index.vectors import VectorStore, compute_vectors
    from datablame.influence.build import MethodSettings, chosen_checkpoints, key_changes

    store = VectorStore(Workdir(workdir).vectors_dir(method))
    manifest = store.manifest()
    current = {"data": config.data_fingerprint, "checkpoints": [asdict(c) for c in chosen_checkpoints(method, config)]}
    if (manifest is None or not manifest.complete or key_changes(manifest.key, current, current)
            or not (store.folder / "self_influence.npy").is_file()):
        log.info("computing %s vectors for self-influence (none stored for this data and these checkpoints)", method)
        compute_vectors(workdir, method, MethodSettings(device=device), progress=progress)
    return store.self_influence()
