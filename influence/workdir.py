"""The workdir: config.json, checkpoints with their learning rates.

Layout::

    WORKDIR/config.json           data path + fingerprint + encoding, columns, label names, checkpoints, learning rates
    WORKDIR/checkpoints/ck-000/   model + tokenizer folders (safetensors), written by ``datablame train``

Checkpoints made elsewhere (``datablame init``) are recorded by absolute path and not copied.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from .atomic import atomic_write_json
from .data import Examples, fingerprint, load_examples
from .errors import DatablameError
from .tables import DEFAULT_ENCODING

CONFIG_NAME = "config.json"
CONFIG_VERSION = 1
STORE_NAME = "datablame.db"


@dataclass
class Checkpoint:
    """A saved model: ``path`` (relative to the workdir, or absolute), the learning rate in effect when it was
    saved, the optimizer step, and ``digest``: :func:`weights_digest` of its files when it was recorded (empty in
    workdirs made before digests existed). The digest enters the key of everything computed from the
    checkpoint, so weights replaced at the same path are never mistaken for the old ones."""

    path: str
    learning_rate: float
    step: int = 0
    digest: str = ""


WEIGHT_FILES = ("config.json", "*.safetensors", "pytorch_model*.bin")
"""The files of a model folder that decide its outputs (not a Trainer's optimizer, scheduler or RNG state)."""


def weights_digest(folder: str | os.PathLike, cache: str | os.PathLike | None = None) -> str:
    """SHA-256 hex digest of a model folder's :data:`WEIGHT_FILES` (names and bytes, sorted by name).

    ``cache``: a JSON file remembering each file's (size, mtime_ns, digest), so that an unchanged file is not
    read again (git's index does the same); a file whose size or mtime changed is always read.
    """
    folder = Path(folder)
    files = sorted({f for pattern in WEIGHT_FILES for f in folder.glob(pattern) if f.is_file()})
    known: dict = {}
    if cache is not None and Path(cache).is_file():
        try:
            known = json.loads(Path(cache).read_text())
        except ValueError:
            known = {}
    total, changed = hashlib.sha256(), False
    for f in files:
        st = f.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        entry = known.get(str(f.resolve()))
        if entry is None or entry[:2] != stamp:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            entry = known[str(f.resolve())] = [*stamp, h.hexdigest()]
            changed = True
        total.update(f"{f.name}\0{entry[2]}\0".encode())
    if cache is not None and changed:
        atomic_write_json(cache, known)
    return total.hexdigest()


@dataclass
class Config:
    data_path: str
    data_fingerprint: str
    text_columns: list[str]
    label_column: str
    label_names: list[str]
    checkpoints: list[Checkpoint] = field(default_factory=list)
    max_length: int = 128
    seed: int = 0
    base_model: str = ""
    training: dict = field(default_factory=dict)
    encoding: str = DEFAULT_ENCODING
    version: int = CONFIG_VERSION

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        d = dict(d)
        d["checkpoints"] = [Checkpoint(**c) for c in d.get("checkpoints", [])]
        return cls(**d)


class Workdir:
    """A folder holding one dataset's checkpoints and everything computed from them."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    def exists(self) -> bool:
        return self.config_path.is_file()

    def load(self) -> Config:
        if not self.exists():
            raise DatablameError(f"{self.root} is not a datablame workdir (no {CONFIG_NAME})",
                                 "create one with 'datablame train' or 'datablame init'")
        try:
            return Config.from_dict(json.loads(self.config_path.read_text()))
        except (ValueError, TypeError) as exc:
            raise DatablameError(f"{self.config_path} is damaged ({exc})",
                                 "recreate the workdir with 'datablame init'") from None

    def save(self, config: Config) -> None:
        atomic_write_json(self.config_path, asdict(config))

    def owns(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` is (inside) one of the workdir's own files or folders (:attr:`own_paths`)."""
        try:
            top = Path(path).resolve().relative_to(self.root.resolve()).parts[:1]
        except ValueError:
            return False
        return bool(top) and top[0] in {p.name for p in self.own_paths}

    def checkpoint_path(self, ck: Checkpoint) -> Path:
        p = Path(ck.path)
        return p if p.is_absolute() else self.root / p

    # every path of the workdir, in one place (see the layout in the README)

    @property
    def checkpoints_dir(self) -> Path:
        """``WORKDIR/checkpoints/``: the models ``datablame train`` saves (``ck-000`` …) and its progress record."""
        return self.root / "checkpoints"

    @property
    def training_progress(self) -> Path:
        """The record of an unfinished ``train`` run (inside ``checkpoints/``, so cleared with them)."""
        return self.checkpoints_dir / "progress.json"

    @property
    def vectors_root(self) -> Path:
        """``WORKDIR/vectors/``: one folder of training vectors per method."""
        return self.root / "vectors"

    def vectors_dir(self, method: str, at: str = "checkpoint") -> Path:
        """``WORKDIR/vectors/<method>/``: shards, manifest, self-influence, finalized arrays; the vectors taken at
        a head's damped optimum (``at="optimum"``, influence functions) in ``<method>-optimum/``."""
        return self.vectors_root / (method if at == "checkpoint" else f"{method}-{at}")

    @property
    def index_dir(self) -> Path:
        """``WORKDIR/index/``: ``<method>-<scoring>.faiss`` and its ``.json`` meta."""
        return self.root / "index"

    @property
    def cache_dir(self) -> Path:
        """``WORKDIR/cache/``: what is kept to spare work (query vectors, features, digests)."""
        return self.root / "cache"

    def queries_cache(self, method: str) -> Path:
        """``WORKDIR/cache/queries/<method>/``: cached query vectors."""
        return self.cache_dir / "queries" / method

    @property
    def features_cache(self) -> Path:
        """``WORKDIR/cache/features/``: training features per encoder."""
        return self.cache_dir / "features"

    @property
    def digest_cache(self) -> Path:
        """``WORKDIR/cache/digests.json``: weight-file digests by (size, mtime)."""
        return self.cache_dir / "digests.json"

    @property
    def plots_dir(self) -> Path:
        """``WORKDIR/plots/``: the PNGs of scans, explanations and the demo."""
        return self.root / "plots"

    @property
    def store_path(self) -> Path:
        """``WORKDIR/datablame.db``: the default store (SQLite)."""
        return self.root / STORE_NAME

    @property
    def report_path(self) -> Path:
        """``WORKDIR/report.html``: ``datablame report``'s page."""
        return self.root / "report.html"

    @property
    def demo_marker(self) -> Path:
        """``WORKDIR/demo.json``: written by ``datablame demo`` (first, then with its result)."""
        return self.root / "demo.json"

    @property
    def derived(self) -> list[Path]:
        """What is computed from the checkpoints' weights, replaced when training into the workdir again (config
        first: a half-cleared folder is no workdir). The store (reviews, keyed by the data's content), the
        content-keyed feature and digest caches and the exports stay."""
        return [self.config_path, self.checkpoints_dir, self.vectors_root, self.index_dir,
                self.cache_dir / "queries", self.plots_dir, self.report_path]

    @property
    def exports_record(self) -> Path:
        """``WORKDIR/exports.json``: the files ``export`` wrote inside the workdir."""
        return self.root / "exports.json"

    @property
    def own_paths(self) -> list[Path]:
        """Everything at the top of the workdir that datablame itself writes and reads back (the store with its
        SQLite side files): never an export's target, and the sign of a workdir to train into."""
        store = [self.store_path.with_name(self.store_path.name + end) for end in ("", "-wal", "-shm", "-journal")]
        return [self.config_path, *store, self.checkpoints_dir, self.vectors_root, self.index_dir, self.cache_dir,
                self.plots_dir, self.report_path, self.demo_marker, self.exports_record]

    def record(self, ck: Checkpoint) -> Checkpoint:
        """``ck`` with the digest of its weights as they are now."""
        return dataclasses.replace(ck, digest=weights_digest(self.checkpoint_path(ck), self.digest_cache))

    def verify(self, checkpoints: Sequence[Checkpoint]) -> None:
        """Refuse checkpoints whose weights changed since they were recorded (retrained or re-saved in place)."""
        for ck in checkpoints:
            path = self.checkpoint_path(ck)
            if not path.is_dir():
                raise DatablameError(f"checkpoint {path} not found",
                                     "restore it, or record the checkpoints again with 'datablame init'")
            if ck.digest and weights_digest(path, self.digest_cache) != ck.digest:
                raise DatablameError(f"the weights of checkpoint {path} changed since the workdir recorded them",
                                     "record them again with 'datablame init WORKDIR --data DATA --checkpoint ...', "
                                     "or retrain with 'datablame train ... --out WORKDIR'")

    def load_examples(self, config: Config | None = None) -> Examples:
        """The training data, refused if the file changed since the workdir was made."""
        config = config or self.load()
        if not Path(config.data_path).exists():
            raise DatablameError(f"training data {config.data_path} not found",
                                 "restore it or recreate the workdir with 'datablame init'")
        if fingerprint(config.data_path) != config.data_fingerprint:
            raise DatablameError(f"training data {config.data_path} changed since the workdir was made",
                                 "retrain, or recreate the workdir with 'datablame init'")
        return load_examples(config.data_path, config.text_columns, config.label_column, config.label_names,
                             config.encoding)


def trainer_checkpoints(folder: str | os.PathLike) -> list[Checkpoint]:
    """Checkpoints of a Hugging Face ``Trainer`` output folder, with learning rates from ``trainer_state.json``.

    The learning rate of a checkpoint at step s is the last one logged at a step ≤ s (the first logged one when
    none is). Returns [] when the folder has no ``checkpoint-*`` subfolders.
    """
    folder = Path(folder)
    found = sorted((int(m.group(1)), p) for p in folder.glob("checkpoint-*")
                   if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    out = []
    for step, path in found:
        states = [path / "trainer_state.json", folder / "trainer_state.json"]
        state = next((s for s in states if s.is_file()), None)
        if state is None:
            raise DatablameError(f"{path} has no trainer_state.json to read its learning rate from",
                                 "pass the checkpoint folders with --checkpoint DIR --lr VALUE instead")
        try:
            history = json.loads(state.read_text(encoding="utf-8"))["log_history"]
            logged = [(int(h["step"]), float(h["learning_rate"])) for h in history
                      if isinstance(h, dict) and "learning_rate" in h and "step" in h]
        except (ValueError, KeyError, TypeError) as exc:
            raise DatablameError(f"{state} is truncated or malformed ({type(exc).__name__}: {exc})",
                                 "restore it from the Trainer's run, or pass --checkpoint DIR --lr VALUE for each "
                                 "checkpoint instead") from None
        if not logged:
            raise DatablameError(f"{state} logs no learning rate", "pass --lr VALUE for each --checkpoint")
        before = [lr for s, lr in sorted(logged) if s <= step]
        out.append(Checkpoint(path=str(path.resolve()), learning_rate=float(before[-1] if before else logged[0][1]),
                              step=step))
    return out


def describe_checkpoints(checkpoints: Sequence[Checkpoint]) -> str:
    return ", ".join(f"step {c.step} (lr {c.learning_rate:g})" for c in checkpoints)
