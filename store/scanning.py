"""Scanning a workdir: the whole ``datablame scan``, which the CLI, the demo and notebooks call.

:func:`scan_workdir` reads the last checkpoint's probabilities and features, computes the signals of the scan
method (cross-validated linear and MLP heads, nearest neighbours and the head stacked on them, self-influence from
a registered method's vectors, the area under the margin), ranks every training example by how likely its label
is wrong, and records the ranking and the flags in the store (:func:`.scans.record_scan`).

What costs the encoder's time, the training features (and the vectors of a scan by self-influence), splits into
shards of rows, as ``vectors`` does (:mod:`datablame.index.shards`): :func:`scan_part` computes one part's shards
(``scan --shard I/N``), and :func:`run_scan` runs a whole scan alone, as such a part, or as one rank of torchrun
(each rank its part; rank 0 scans once all are written). A scan without a part reads what the parts wrote and
computes only what is missing: it is their finalize step.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from datablame.influence.errors import DatablameError
from datablame.influence.workdir import Workdir

from .db import Database, default_url, open_db
from .scans import ScanRecord, ensure_dataset, record_scan

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # importing them loads torch
    from datablame.influence.data import Examples
    from datablame.index.shards import Part
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
    signals = detect.cross_validated_signals(features, examples.labels, len(config.label_names),
                                             [name for name, w in weights.items() if w], folds, repeats=repeats,
                                             device=resolve_device(device), progress=progress)
    influence = {m: self_influence(workdir, m, config, device, progress)
                 for m in detect.self_influence_methods(weights)}
    aum = training_margins(config, features, examples.labels, device) if weights.get("aum") else None
    issues = detect.rank_label_issues(examples.labels, probs, self_influence=influence, weights=weights,
                                      area_under_margin=aum, **signals)
    log.info("given label's mean probability %.3f; flagging the top %.1f%%", issues.label_probability.mean(),
             100 * flag_top)
    record = record_scan(db, ensure_dataset(db, examples), method, issues, next(iter(influence.values()), None),
                         flag_top, {"weights": weights, "folds": folds, "repeats": repeats, "flag_top": flag_top,
                          "cleaning_share": detect.CLEANING_SHARE, "neighbours": detect.NEIGHBOURS},
                         [asdict(c) for c in config.checkpoints])
    top = math.ceil(flag_top * len(issues.order))
    threshold = float(issues.score[issues.order[top - 1]]) if top else math.inf
    return ScanResult(method, issues, examples, record, threshold)


def run_scan(workdir: str | os.PathLike, method: str = "cv", flag_top: float = 0.05, folds: int = 5,
             repeats: int = 3, db: Database | None = None, device: str = "auto", progress: Callable | None = None,
             part: Part | None = None, shard_size: int | None = None) -> ScanResult | None:
    """The scan, alone (``part`` None: :func:`scan_workdir`), as the part ``part`` of a sharded run (its shards
    only; None returned), or as one rank of torchrun (each rank its part; rank 0 then scans; None elsewhere)."""
    from datablame.index.shards import local_device, process_group, torchrun_part

    launched = torchrun_part()
    if launched is not None and part is not None:
        raise DatablameError(f"--shard {part} under torchrun", "torchrun gives each rank its part; drop --shard")
    if launched is None:
        if part is None:
            return scan_workdir(workdir, method, flag_top, folds, repeats, db, device, progress)
        scan_part(workdir, part, method, shard_size, device, progress)
        return None
    with process_group(device) as barrier:
        scan_part(workdir, launched, method, shard_size, local_device(device), progress, barrier)
        barrier()  # every rank's shards are written
    if launched.index == 0:
        return scan_workdir(workdir, method, flag_top, folds, repeats, db, device, progress)
    return None


def scan_part(workdir: str | os.PathLike, part: Part, method: str = "cv", shard_size: int | None = None,
              device: str = "auto", progress: Callable | None = None,
              planned: Callable[[], None] | None = None) -> list[int]:
    """Compute the part ``part`` of what a scan by ``method`` reads: the final checkpoint's training features, in
    shards of ``shard_size`` rows (the shards s with s mod N = I, each written whole), and for a scan by
    self-influence that method's vector shards (``planned``: torchrun's barrier, see
    :func:`datablame.index.vectors.compute_vectors`). Returns the feature shards it computed (those on disk
    already are skipped)."""
    from datablame.index.vectors import SHARD_SIZE, compute_vectors
    from datablame.influence import detect
    from datablame.influence.build import MethodSettings
    from datablame.influence.features import FeatureCache
    from datablame.influence.models import load_classifier

    weights = detect.scan_weights(method)
    size = shard_size or SHARD_SIZE
    wd = Workdir(workdir)
    config = wd.load()
    examples = wd.load_examples(config)
    wd.verify(config.checkpoints[-1:])
    model, task = load_classifier(wd.checkpoint_path(config.checkpoints[-1]), config.label_names, device,
                                  config.max_length)
    features = FeatureCache(examples, wd.features_cache).of(task, model)
    mine = [s for s in range(math.ceil(len(examples) / size)) if part.mine(s)]
    done = [s for s in mine if features.compute_range(s * size, min((s + 1) * size, len(examples)), progress)]
    log.info("scan part %s: %d of its %d feature shards computed", part, len(done), len(mine))
    for name in detect.self_influence_methods(weights):
        compute_vectors(workdir, name, MethodSettings(device=device), progress=progress, shard_size=size, part=part,
                        planned=planned, scorings=())  # for self-influence: no index reads them
    return done


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
    stale = manifest is None or bool(key_changes(manifest.key, current, current))
    if stale or not manifest.complete or not (store.folder / "self_influence.npy").is_file():
        log.info("computing %s vectors for self-influence (none finished for this data and these checkpoints)",
                 method)
        compute_vectors(workdir, method, MethodSettings(device=device), progress=progress, scorings=(),
                        **({} if stale else {"shard_size": manifest.shard_size}))  # parts' shards resumed
    return store.self_influence()
