"""``scan --verify --dev FILE``: does acting on a scan's flags help? The head is retrained (frozen encoder, the
workdir's recipe, the run's own randomness held fixed) with the flagged examples relabeled to their suggested
labels, and without them, against leaving out as many random examples of the same labels; each is measured on
labelled held-out data. A scan whose flags are right should raise the held-out accuracy (or lower its loss) when
they are fixed, and more than random removal does.

    verify_scan(workdir, result, flag_top=0.05, dev="dev.tsv")   → ScanVerification
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from datablame.index.verify import same_label_draws
from datablame.influence.data import load_examples
from datablame.influence.detect import probabilities_and_features
from datablame.influence.errors import DatablameError
from datablame.influence.features import FeatureCache
from datablame.influence.models import load_classifier
from datablame.influence.retrain import initial_head, recipe, retrain_heads
from datablame.influence.workdir import Workdir

from .scanning import ScanResult

DRAWS = 5
VARIANTS = ("original", "relabeled", "removed")


@dataclass
class ScanVerification:
    """Held-out accuracy and mean cross-entropy (nats) of the head retrained on the training data as it is
    (``original``), with the ``flagged`` examples relabeled to their suggested labels, without them, and without
    as many random examples of the same labels (one value per draw); the dev file and its size; seconds."""

    flagged: int
    dev: str
    dev_examples: int
    accuracy: dict
    loss: dict
    seconds: float

    def to_json(self) -> dict:
        return asdict(self)


def verify_scan(workdir: str | os.PathLike, result: ScanResult, flag_top: float, dev: str | os.PathLike,
                draws: int = DRAWS, seed: int = 0, device: str = "cpu") -> ScanVerification:
    """Retrain the head four ways (see the module) and measure each on the labelled ``dev`` file, read with the
    workdir's columns, labels and encoding (a label the training data lacks is refused)."""
    start = time.perf_counter()
    wd = Workdir(workdir)
    config = wd.load()
    settings = recipe(config)  # refuses a workdir whose whole model was fine-tuned
    held_out = load_examples(dev, config.text_columns, config.label_column, config.label_names, config.encoding)
    train, issues = result.examples, result.issues
    top = np.sort(issues.order[:math.ceil(flag_top * len(train))]).astype(np.int64)
    if not len(top):
        raise DatablameError("the scan flagged nothing to verify", "give --flag-top a fraction above 0")
    model, task = load_classifier(wd.checkpoint_path(config.checkpoints[-1]), config.label_names, device,
                                  config.max_length)
    everything = np.arange(len(train))
    x = FeatureCache(train, wd.features_cache).of(task, model).rows(everything)
    _, dev_features = probabilities_and_features(task, model, held_out)
    labels = np.asarray(train.labels)
    random_sets = same_label_draws(labels, top, draws, seed)
    init, y = initial_head(config, device), torch.as_tensor(labels, device=x.device)
    kept = retrain_heads(init, x, y, [everything, np.setdiff1d(everything, top),
                                      *(np.setdiff1d(everything, r) for r in random_sets)], settings, paired=True)
    relabeled = labels.copy()
    relabeled[top] = issues.suggested[top]
    fixed = retrain_heads(init, x, torch.as_tensor(relabeled, device=x.device), [everything], settings, paired=True)
    truth, features = torch.as_tensor(held_out.labels), torch.as_tensor(dev_features, device=x.device)
    without = kept.logits(features)
    logits = torch.cat([without[:1], fixed.logits(features), without[1:]]).cpu().float()  # (variants, dev, K)
    accuracy = (logits.argmax(-1) == truth).float().mean(1).numpy()  # original, relabeled, removed, randoms…
    loss = torch.stack([torch.nn.functional.cross_entropy(row, truth) for row in logits]).numpy()
    return ScanVerification(len(top), str(dev), len(held_out), _variants(accuracy), _variants(loss),
                            round(time.perf_counter() - start, 2))


def _variants(values: np.ndarray) -> dict:
    """(original, relabeled, removed, random…) as the JSON's keys."""
    return {**{name: round(float(v), 6) for name, v in zip(VARIANTS, values)},
            "removed_random": [round(float(v), 6) for v in values[len(VARIANTS):]]}
