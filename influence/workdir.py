"""The workdir: config.json, checkpoints with their learning rates, and atomic file writes.

Layout::

    WORKDIR/config.json           data path + fingerprint, columns, label names, checkpoints, learning rates
    WORKDIR/checkpoints/ck-000/   model + tokenizer folders (safetensors), written by ``datablame train``

Checkpoints made elsewhere (``datablame init``) are recorded by absolute path and not copied.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from .data import Examples, fingerprint, load_examples
from .errors import DatablameError

CONFIG_NAME = "config.json"
CONFIG_VERSION = 1


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename: whole or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@dataclass
class Checkpoint:
    """A saved model: ``path`` (relative to the workdir, or absolute), the learning rate in effect when it was
    saved, and the optimizer step."""

    path: str
    learning_rate: float
    step: int = 0


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

    def checkpoint_path(self, ck: Checkpoint) -> Path:
        p = Path(ck.path)
        return p if p.is_absolute() else self.root / p

    def load_examples(self, config: Config | None = None) -> Examples:
        """The training data, refused if the file changed since the workdir was made."""
        config = config or self.load()
        if not Path(config.data_path).exists():
            raise DatablameError(f"training data {config.data_path} not found",
                                 "restore it or recreate the workdir with 'datablame init'")
        if fingerprint(config.data_path) != config.data_fingerprint:
            raise DatablameError(f"training data {config.data_path} changed since the workdir was made",
                                 "retrain, or recreate the workdir with 'datablame init'")
        return load_examples(config.data_path, config.text_columns, config.label_column, config.label_names)


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
        logged = [(h["step"], h["learning_rate"]) for h in json.loads(state.read_text()).get("log_history", [])
                  if "learning_rate" in h and "step" in h]
        if not logged:
            raise DatablameError(f"{state} logs no learning rate", "pass --lr VALUE for each --checkpoint")
        before = [lr for s, lr in sorted(logged) if s <= step]
        out.append(Checkpoint(path=str(path.resolve()), learning_rate=float(before[-1] if before else logged[0][1]),
                              step=step))
    return out


def describe_checkpoints(checkpoints: Sequence[Checkpoint]) -> str:
    return ", ".join(f"step {c.step} (lr {c.learning_rate:g})" for c in checkpoints)
