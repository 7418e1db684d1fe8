"""Building a registered method from a workdir: its checkpoints (verified by digest) and data, the selected
parameters, the projector, the shared feature cache."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Sequence

from torch import nn

from .data import Examples
from .errors import DatablameError, check_choice
from .features import FeatureCache
from .grads import num_params, only_head, select_params
from .lissa import LissaConfig, Progress
from .methods import EXACT_MAX_PARAMS, Method
from .models import load_classifier
from .registry import method_names, method_spec
from .sketch import DEFAULT_DIM, Projector, make_projector
from .task import Task
from .workdir import Checkpoint, Config, Workdir

METHODS = method_names()
"""The registered attribution methods (see :mod:`.registry`)."""
CURVATURES = ("auto", "lissa", "sketch", "exact")


@dataclass
class MethodSettings:
    """params: globs or shortcuts (see :func:`.grads.select_params`), None for the parameters that were trained;
    dim: sketch dimension k, None (auto) for exact gradients when the selected parameters number at most
    :data:`.methods.EXACT_MAX_PARAMS` (a head), else :data:`.sketch.DEFAULT_DIM`; projection: countsketch |
    gaussian; seed: the projection's seed; lam: the representer refit's L2 penalty; curvature: what answers
    influence queries, ``lissa`` (per query, in parameter space), ``sketch`` (the damped Gauss-Newton matrix of
    the training sketches, once), ``exact`` (the explicit damped Hessian over at most a few thousand selected
    parameters, once) or ``auto`` (exact on exact gradients of at most that many parameters, else sketch); lissa.damping: λ, None (auto) for the mean
    eigenvalue of the curvature it damps (see :meth:`.methods.InfluenceFunctions.damping`). The defaults here are
    the library's first ones, kept for compatibility; :meth:`faithful` gives those the CLI uses."""

    params: Sequence[str] | None = None
    dim: int | None = DEFAULT_DIM
    projection: str = "countsketch"
    seed: int = 0
    lissa: LissaConfig = field(default_factory=LissaConfig)
    lam: float = 1e-3
    device: str = "auto"
    curvature: str = "lissa"

    @classmethod
    def faithful(cls, **overrides) -> "MethodSettings":
        """The settings whose influence scores predicted retraining best in ``bench/faithfulness.py`` (and the
        CLI's defaults): exact gradients for a head, the exact curvature when it fits, λ = the curvature's mean
        eigenvalue."""
        return cls(**{"dim": None, "curvature": "auto", "lissa": LissaConfig(damping=None), **overrides})

    def to_dict(self) -> dict:
        """JSON-able settings, without the device (a record says what was computed, not where)."""
        d = asdict(self)
        d.pop("device")
        return d

    @classmethod
    def from_dict(cls, d: dict, device: str = "auto") -> "MethodSettings":
        return cls(**{**d, "lissa": LissaConfig(**d.get("lissa", {})), "device": device})


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
        ``--freeze-encoder``)."""
        params = self.settings.params or (["head"] if self.config.training.get("freeze_encoder") else None)
        return select_params(self.model, self.task, params)

    def projector(self, names: Sequence[str]) -> Projector:
        """The seeded projection of gradients over ``names`` to ``settings.dim`` (auto: none when they are few)."""
        s, p = self.settings, num_params(self.model, names)
        dim = s.dim if s.dim is not None else (p if p <= EXACT_MAX_PARAMS else DEFAULT_DIM)
        return make_projector(s.projection, p, dim, s.seed)

    def head_features(self, names: Sequence[str]) -> FeatureCache | None:
        """The training feature cache when ``names`` are the head's (gradients from cached features), else None."""
        return self.features if only_head(self.task, names) else None


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
    for field_name in spec.query_fields:  # query-side settings shape the query vectors only
        key.pop(field_name, None)
    return Built(method, train, key)
