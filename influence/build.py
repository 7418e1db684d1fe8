"""Building a method from a workdir: load its checkpoints and data, select parameters, make the projector."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from .data import Examples
from .errors import DatablameError
from .features import FeatureCache, features_folder
from .grads import num_params, only_head, select_params
from .lissa import LissaConfig
from .methods import InfluenceFunctions, Method, Representer, TracIn
from .models import load_classifier
from .sketch import DEFAULT_DIM, make_projector
from .workdir import Workdir

METHODS = ("tracin", "influence", "representer")
CURVATURES = ("lissa", "sketch")


@dataclass
class MethodSettings:
    """params: globs or shortcuts (see :func:`.grads.select_params`), None for the parameters that were trained;
    dim: sketch dimension k; projection: countsketch | gaussian; seed: the projection's seed; lam: the
    representer refit's L2 penalty; curvature: what answers influence queries, ``lissa`` (per query, in
    parameter space) or ``sketch`` (the damped Gauss-Newton matrix of the training sketches, once)."""

    params: Sequence[str] | None = None
    dim: int = DEFAULT_DIM
    projection: str = "countsketch"
    seed: int = 0
    lissa: LissaConfig = field(default_factory=LissaConfig)
    lam: float = 1e-3
    device: str = "auto"
    curvature: str = "lissa"

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
    vectors are computed from (method settings, data fingerprint, checkpoints with learning rates)."""

    method: Method
    train: Examples
    key: dict


def build_method(workdir: str | Workdir, name: str, settings: MethodSettings = MethodSettings(),
                 progress=None, fit: bool = True) -> Built:
    """The named method from a workdir's checkpoints (TracIn: all of them; the others: the last one).

    The representer method is fitted here (one forward pass over the training data, then L-BFGS) unless ``fit``
    is False: its query vectors need no fit, only its training vectors do. Methods that need the training set's
    penultimate features (representer points; the others over head parameters) share one
    :class:`.features.FeatureCache` in ``WORKDIR/cache/features``: one encoder pass per distinct encoder, ever.
    """
    if name not in METHODS:
        raise DatablameError(f"unknown method {name!r}", f"choose one of {', '.join(METHODS)}")
    if settings.curvature not in CURVATURES:
        raise DatablameError(f"unknown curvature {settings.curvature!r}", f"choose one of {', '.join(CURVATURES)}")
    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    config = wd.load()
    train = wd.load_examples(config)
    if not config.checkpoints:
        raise DatablameError(f"{wd.root} records no checkpoint", "run 'datablame train' or 'datablame init'")
    chosen = config.checkpoints if name == "tracin" else config.checkpoints[-1:]
    loaded = [load_classifier(wd.checkpoint_path(c), config.label_names, settings.device, config.max_length)
              for c in chosen]
    model, task = loaded[-1]
    features = FeatureCache(train, features_folder(wd.root))
    method: Method
    if name == "representer":
        method = Representer(task, model, settings.lam, features=features)
        if fit:
            method.fit(train, progress)
    else:
        # default: the parameters that were trained (only the head, for a frozen encoder)
        params = settings.params or (["head"] if config.training.get("freeze_encoder") else None)
        names = select_params(model, task, params)
        projector = make_projector(settings.projection, num_params(model, names), settings.dim, settings.seed)
        shared = features if only_head(task, names) else None
        if name == "tracin":
            method = TracIn(task, [(m, c.learning_rate) for (m, _), c in zip(loaded, chosen)], names, projector,
                            shared)
        else:
            method = InfluenceFunctions(task, model, names, projector, train, settings.lissa, shared)
    key = {**method.describe(), "data": config.data_fingerprint, "checkpoints": [asdict(c) for c in chosen]}
    key.pop("lissa", None)  # LiSSA settings shape the query side only
    return Built(method, train, key)
