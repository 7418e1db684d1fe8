"""The registry of attribution methods: every command, test and benchmark iterates it instead of naming methods.

A method is one module that defines its :class:`.methods.Method` and registers a :class:`MethodSpec`: its name,
a one-line summary (CLI help), which checkpoints it reads, how it is built from a workdir
(:class:`.build.BuildContext` → Method) with its training-side :class:`.settings.VectorSettings`, the query-side
settings dataclass it also reads (:class:`.settings.QuerySettings`, or none; they stay out of the training vectors'
key), what a query costs (the timing line) and whether its self-influence can rank a ``scan``.
Adding a method = its module, its line in :data:`MODULES`, and its tests.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .errors import check_choice

if TYPE_CHECKING:
    from .build import BuildContext
    from .methods import Method

MODULES = {"tracin": "datablame.influence.methods", "influence": "datablame.influence.methods",
           "representer": "datablame.influence.methods",
           "trak": "datablame.influence.trak"}
"""The registration: each method's name and the module that defines it (imported when the method is asked for,
so listing names costs no import of torch), in the order commands list them."""
DEFAULT_METHOD = "influence"
"""What ``explain`` uses when it is indexed: it names planted causes best in ``bench/artifacts.py``."""

_REGISTRY: dict[str, "MethodSpec"] = {}


@dataclass(frozen=True)
class MethodSpec:
    """name; summary: one line for help; checkpoints: ``all`` or ``last``; build: the method from a
    :class:`.build.BuildContext`; cost: what one query vector of the built method costs (the timing line);
    query: the query-side settings dataclass the method reads (:class:`.settings.QuerySettings`), None when its
    query vectors depend on the training side alone; self_influence: whether ``scan --method NAME`` ranks by its
    self-influence."""

    name: str
    summary: str
    checkpoints: str
    build: Callable[["BuildContext"], "Method"]
    cost: Callable[["Method"], str]
    query: type | None = None
    self_influence: bool = True


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method (a module calls this at import); a second registration of a name replaces the first."""
    if spec.checkpoints not in ("all", "last"):
        raise ValueError(f"{spec.name}: checkpoints must be 'all' or 'last', not {spec.checkpoints!r}")
    _REGISTRY[spec.name] = spec
    return spec


def method_names() -> tuple[str, ...]:
    """The registered methods' names: :data:`MODULES`' order, then any registered from elsewhere."""
    return tuple(dict.fromkeys([*MODULES, *_REGISTRY]))


def method_spec(name: str) -> MethodSpec:
    """The registered method ``name`` (importing its module); an unknown name is a DatablameError listing the
    known ones."""
    if name not in _REGISTRY and name in MODULES:
        importlib.import_module(MODULES[name])
    check_choice("method", name, method_names())
    return _REGISTRY[name]
