"""Datasets and scan runs in the store: registering a training set, scanning a workdir, recording a scan.

:func:`scan_workdir` is the whole ``datablame scan``: the last checkpoint's probabilities and features, the
cross-validated heads and/or self-influence, the ranking, and the record in the store.

One run per (dataset, method). Recording a scan is one transaction: the run's scores are replaced, its open
``mislabeled`` flags are replaced by flags on the new top fraction, and reviewed flags are kept; an example
already flagged ``mislabeled`` (by any source or run) is not flagged twice. A failure anywhere leaves the
previous state.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from datablame.influence.errors import DatablameError
from datablame.influence.workdir import Workdir

from .db import Database, default_url, open_db
from .schema import Dataset, Example, Flag, Run, Score, utcnow

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # importing them loads torch, which the review commands never need
    from datablame.influence.data import Examples
    from datablame.influence.detect import LabelIssues
    from datablame.influence.workdir import Config


@dataclass
class ScanRecord:
    """What a recorded scan wrote: its run id, the number of scores, and the open flags it holds."""

    run_id: int
    scores: int
    flagged: int


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
    from datablame.influence.models import load_classifier

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
    influence = {m: self_influence(workdir, m, config, device, progress)
                 for m in detect.self_influence_methods(weights)}
    aum = training_margins(config, features, examples.labels, device) if weights.get("aum") else None
    issues = detect.rank_label_issues(examples.labels, probs, cv, influence, weights, aum)
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


def ensure_dataset(db: Database, examples: Examples) -> int:
    """The id of the dataset with ``examples``' fingerprint, registering it (and its examples) if new."""
    with db.transaction() as session:
        found = session.scalar(select(Dataset.id).where(Dataset.fingerprint == examples.fingerprint))
        if found is not None:
            return found
        dataset = Dataset(path=examples.path, fingerprint=examples.fingerprint,
                          text_columns=list(examples.text_columns), label_column=examples.label_column,
                          label_names=list(examples.label_names))
        session.add(dataset)
        session.flush()
        rows = [{"dataset_id": dataset.id, "id": int(i), "label": int(y),
                 "text": t[0] if isinstance(t, tuple) else t, "text_pair": t[1] if isinstance(t, tuple) else None}
                for i, t, y in zip(examples.ids, examples.texts, examples.labels)]
        session.execute(insert(Example), rows)
        return dataset.id


def find_dataset(db: Database, fingerprint: str) -> Dataset:
    """The registered dataset with this fingerprint."""
    with db.transaction() as session:
        dataset = session.scalar(select(Dataset).where(Dataset.fingerprint == fingerprint))
    if dataset is None:
        raise DatablameError("this workdir's data has no scan or flag in the store yet",
                             "run 'datablame scan WORKDIR' first (with the same --db)")
    return dataset


def record_scan(db: Database, dataset_id: int, method: str, issues: LabelIssues,
                self_influence: np.ndarray | None = None, flag_top: float = 0.05,
                parameters: dict[str, Any] | None = None, checkpoints: list[Any] | None = None) -> ScanRecord:
    """Store a scan's ranking and flag its top ``flag_top`` fraction (rounded up) as open ``mislabeled`` flags.

    issues: the ranking of the dataset's examples, by position = example id; self_influence: (n,) to store
    beside the scores (the method's own, when it has one).
    """
    if not 0.0 <= flag_top <= 1.0:
        raise DatablameError(f"--flag-top {flag_top} is not a fraction", "give a number from 0 to 1, e.g. 0.05")
    n = len(issues.score)
    with db.transaction() as session:
        examples = session.scalar(select(func.count()).select_from(Example).where(Example.dataset_id == dataset_id))
        if examples != n:
            raise DatablameError(f"the scan ranks {n} examples but the dataset has {examples}",
                                 "rescan from the workdir whose data is stored")
        run = session.scalar(select(Run).where(Run.dataset_id == dataset_id, Run.method == method))
        if run is None:
            run = Run(dataset_id=dataset_id, method=method)
            session.add(run)
        run.parameters, run.checkpoints, run.created_at = parameters or {}, checkpoints or [], utcnow()
        session.flush()
        _replace_scores(session, dataset_id, run.id, issues, self_influence)
        flagged = _replace_flags(session, dataset_id, run.id, issues, math.ceil(flag_top * n))
        return ScanRecord(run.id, n, flagged)


def _ranks(issues: LabelIssues) -> np.ndarray:
    """(n,) each example's rank in the scan (0: the most suspicious)."""
    rank = np.empty(len(issues.order), dtype=np.int64)
    rank[issues.order] = np.arange(len(issues.order))
    return rank


def _replace_scores(session: Session, dataset_id: int, run_id: int, issues: LabelIssues,
                    self_influence: np.ndarray | None) -> None:
    session.execute(delete(Score).where(Score.run_id == run_id))
    rank = _ranks(issues)
    session.execute(insert(Score), [
        {"run_id": run_id, "dataset_id": dataset_id, "example_id": i, "rank": int(rank[i]),
         "score": float(issues.score[i]), "suggested_label": int(issues.suggested[i]),
         "label_probability": float(issues.label_probability[i]),
         "self_influence": None if self_influence is None else float(self_influence[i])}
        for i in range(len(issues.order))])


def _replace_flags(session: Session, dataset_id: int, run_id: int, issues: LabelIssues, top: int) -> int:
    """Drop the run's open scan flags, give its other flags their examples' new ranks, flag its top ``top``
    examples not already flagged mislabeled; returns how many open flags the run now holds."""
    session.execute(delete(Flag).where(Flag.run_id == run_id, Flag.source == "scan", Flag.status == "open"))
    session.execute(update(Flag).where(Flag.run_id == run_id).values(rank=select(Score.rank).where(
        Score.run_id == Flag.run_id, Score.example_id == Flag.example_id).scalar_subquery()))
    rank = _ranks(issues)
    taken = set(session.scalars(select(Flag.example_id).where(Flag.dataset_id == dataset_id,
                                                              Flag.kind == "mislabeled")))
    fresh = [int(i) for i in issues.order[:top] if int(i) not in taken]
    now = utcnow()
    if fresh:
        session.execute(insert(Flag), [
            {"dataset_id": dataset_id, "example_id": i, "kind": "mislabeled", "source": "scan", "run_id": run_id,
             "rank": int(rank[i]), "suggested_label": int(issues.suggested[i]), "status": "open", "note": "", "who": "",
             "created_at": now, "updated_at": now, "version": 1} for i in fresh])
    return len(fresh)
