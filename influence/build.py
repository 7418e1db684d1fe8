"""Building a registered method from a workdir: its checkpoints (verified by digest) and data, the selected
parameters, the projector, the shared feature cache."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields as dataclass_fields
from typing import Sequence

from torch import nn

from .data import Examples
from .errors import DatablameError, check_choice
from .features import FeatureCache
from .gradients import softmax_head
from .grads import num_params, select_params
from .lissa import Progress
from .curvature import EXACT_MAX_PARAMS
from .methods import Method
from .models import load_classifier
from .registry import method_names, method_spec
from .settings import CURVATURES, MethodSettings
from .sketch import DEFAULT_DIM, Projector, SoftmaxBasis, make_projector
from .task import Task
from .workdir import Checkpoint, Config, Workdir

METHODS = method_names()
"""The registered attribution methods (see :mod:`.registry`)."""


@dataclass
class Built:
    """A method ready to compute vectors, the workdir's training examples, and the key that identifies what the
    vectors are computed from (method settings, data fingerprint, checkpoints with learning rates and weight
    digests)."""

    method: Method
    train: Examples
    key: dict


@dataclass
class BuildContext:
    """What a registered method is built from (see :mod:`.registry`): the workdir, its config and training
    examples, the settings, the checkpoints the method reads with their loaded (model, task), the shared training
    feature cache, a progress callback and whether to fit (the representer's refit)."""

    workdir: Workdir
    config: Config
    train: Examples
    settings: MethodSettings
    checkpoints: list[Checkpoint]
    loaded: list[tuple[nn.Module, Task]]
    features: FeatureCache
    progress: Progress | None = None
    fit: bool = True

    @property
    def model(self) -> nn.Module:
        """The last checkpoint's model."""
        return self.loaded[-1][0]

    @property
    def task(self) -> Task:
        return self.loaded[-1][1]

    @property
    def models(self) -> list[tuple[nn.Module, float]]:
        """(model, learning rate) of every checkpoint the method reads, in order."""
        return [(m, c.learning_rate) for (m, _), c in zip(self.loaded, self.checkpoints)]

    def params(self) -> list[str]:
        """The selected parameter names: ``settings.params``, else those that were trained (only the head after
        ``--freeze-encoder``, those ``train --params`` named)."""
        training = self.config.training or {}
        params = self.settings.params or (["head"] if training.get("freeze_encoder") else training.get("params"))
        return select_params(self.model, self.task, params)

    def projector(self, names: Sequence[str], sketch_dim: int = DEFAULT_DIM) -> Projector:
        """The seeded projection of gradients over ``names`` to ``settings.dim`` (auto: none when they are few,
        else ``sketch_dim``, the method's own default). Exact gradients of a linear softmax head are kept in its
        :class:`.sketch.SoftmaxBasis` (exact, (K − 1)/K of the dimensions) unless the projection asked for is
        ``identity``."""
        s, p = self.settings, num_params(self.model, names)
        dim = s.dim if s.dim is not None else (p if p <= EXACT_MAX_PARAMS else sketch_dim)
        head = softmax_head(self.task, self.model, names) if dim >= p and s.projection != "identity" else None
        return SoftmaxBasis(*head, seed=s.seed) if head is not None else make_projector(s.projection, p, dim, s.seed)


def key_changes(recorded: dict, current: dict, fields: Sequence[str] | None = None) -> list[str]:
    """The one freshness rule: the fields (all, or only ``fields``) in which a recorded key differs from the
    current one, sorted; empty when what was computed is current. Vectors, indexes, the query cache (keyed by
    the key) and scan's self-influence all decide by it."""
    names = set(recorded) | set(current) if fields is None else set(fields)
    return sorted(k for k in names if json.dumps(recorded.get(k), sort_keys=True) != json.dumps(current.get(k),
                                                                                               sort_keys=True))


def chosen_checkpoints(name: str, config: Config) -> list[Checkpoint]:
    """The checkpoints a registered method reads: all of them, or the last one."""
    every = method_spec(name).checkpoints == "all"
    return list(config.checkpoints) if every else list(config.checkpoints[-1:])


def build_method(workdir: str | Workdir, name: str, settings: MethodSettings = MethodSettings(),
                 progress: Progress | None = None, fit: bool = True) -> Built:
    """The registered method ``name`` from a workdir's checkpoints, verified against their recorded digests.

    Methods that need the training set's penultimate features (representer points; the others over head
    parameters) share one :class:`.features.FeatureCache` in ``WORKDIR/cache/features``: one encoder pass per
    distinct encoder, ever. ``fit`` False skips what only the training side needs (the representer's refit).
    """
    spec = method_spec(name)
    check_choice("curvature", settings.curvature, CURVATURES)
    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    config = wd.load()
    train = wd.load_examples(config)
    if not config.checkpoints:
        raise DatablameError(f"{wd.root} records no checkpoint", "run 'datablame train' or 'datablame init'")
    chosen = chosen_checkpoints(name, config)
    wd.verify(chosen)
    loaded = [load_classifier(wd.checkpoint_path(c), config.label_names, settings.device, config.max_length)
              for c in chosen]
    method = spec.build(BuildContext(wd, config, train, settings, chosen, loaded,
                                     FeatureCache(train, wd.features_cache), progress, fit))
    key = {**method.describe(), "data": config.data_fingerprint, "checkpoints": [asdict(c) for c in chosen]}
    if spec.query is not None:  # query-side settings shape the query vectors only
        for f in dataclass_fields(spec.query):
            key.pop(f.name, None)
    return Built(method, train, key)
