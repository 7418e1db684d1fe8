"""What a method is computed with, in two parts kept apart (as Kronfluence keeps ``FactorArguments`` from
``ScoreArguments``):

- :class:`VectorSettings`, the training side, shape the training vectors: they enter the vectors' key (see
  :mod:`.build`), and changing one means computing the vectors again;
- :class:`QuerySettings` shape only the query side (how influence answers, with what damping): they stay out of
  the key, and ``explain --curvature/--damping`` may change them against vectors already indexed.

:class:`MethodSettings` is both, plus the device, with one flat constructor (``MethodSettings(dim=64,
curvature="exact")``); a registered method names the query-side dataclass it reads (``MethodSpec.query``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Sequence

from .lissa import LissaConfig
from .sketch import DEFAULT_DIM

CURVATURES = ("auto", "lissa", "sketch", "exact")
POINTS = ("auto", "checkpoint", "optimum")
"""Where influence functions take their vectors (``VectorSettings.at``)."""


@dataclass
class VectorSettings:
    """params: globs or shortcuts (see :func:`.grads.select_params`), None for the parameters that were trained;
    dim: sketch dimension k, None (auto) for exact gradients when the selected parameters number at most
    :data:`.curvature.EXACT_MAX_PARAMS` (a head), else :data:`.sketch.DEFAULT_DIM` (influence:
    :data:`.methods.INFLUENCE_SKETCH_DIM`); projection: countsketch | gaussian; seed: the projection's seed; lam:
    the representer refit's L2 penalty; at: where influence functions take gradients and the Hessian,
    ``checkpoint`` (the trained model) or ``optimum`` (its head moved to the minimiser of the damped objective, see
    :mod:`.optimum`; a linear softmax head's weight and bias only), or ``auto``: an index takes two vector sets,
    the raw scoring's at the optimum where it applies and the cosine scoring's at the checkpoint (see
    :func:`datablame.index.vectors.vector_sets`); one method built (:func:`.build.build_method`) takes the
    checkpoint."""

    params: Sequence[str] | None = None
    dim: int | None = DEFAULT_DIM
    projection: str = "countsketch"
    seed: int = 0
    lam: float = 1e-3
    at: str = "checkpoint"


@dataclass
class QuerySettings:
    """curvature: what answers influence queries, ``lissa`` (per query, in parameter space), ``sketch`` (the
    damped Gauss-Newton matrix of the training sketches, once), ``exact`` (the explicit damped Hessian over at most
    a few thousand selected parameters, once) or ``auto`` (exact on exact gradients of at most that many
    parameters, else sketch); lissa: LiSSA's settings, whose ``damping`` λ (None: auto, the mean eigenvalue of the
    curvature it damps, see :meth:`.methods.InfluenceFunctions.damping`) every curvature adds."""

    curvature: str = "lissa"
    lissa: LissaConfig = field(default_factory=LissaConfig)


@dataclass
class MethodSettings(QuerySettings, VectorSettings):
    """Both sides' settings and the device. The defaults are the library's first ones, kept for compatibility;
    :meth:`faithful` gives those the CLI uses."""

    device: str = "auto"

    @classmethod
    def faithful(cls, **overrides) -> "MethodSettings":
        """The settings whose influence scores predicted retraining best in ``bench/faithfulness.py`` (and the
        CLI's defaults): exact gradients for a head, the exact curvature when it fits, λ = the curvature's mean
        eigenvalue, and an index's raw vectors at a head's damped optimum (``at="auto"``)."""
        return cls(**{"dim": None, "curvature": "auto", "lissa": LissaConfig(damping=None), "at": "auto",
                      **overrides})

    @property
    def query(self) -> QuerySettings:
        """The query side alone (what keys a query cache besides the vectors' key)."""
        return QuerySettings(**{f.name: getattr(self, f.name) for f in fields(QuerySettings)})

    def to_dict(self) -> dict:
        """JSON-able settings, without the device (a record says what was computed, not where)."""
        d = asdict(self)
        d.pop("device")
        return d

    @classmethod
    def from_dict(cls, d: dict, device: str = "auto") -> "MethodSettings":
        return cls(**{**d, "lissa": LissaConfig(**d.get("lissa", {})), "device": device})
