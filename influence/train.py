"""Fine-tuning with K checkpoints saved along the way, each with the learning rate in effect when it was saved.

Schedule: AdamW, learning rate decayed linearly from ``lr`` at the first step to ``lr / 10`` at the last, so
that every checkpoint keeps a non-zero TracIn weight. A checkpoint's learning rate is the one its last step used.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .data import Examples
from .errors import DatablameError
from .features import FeatureCache, features_folder
from .models import load_classifier
from .task import logits_and_features_of
from .workdir import Checkpoint, Config, Workdir

TrainProgress = Callable[[int, int, float], None]
"""progress(step, total_steps, loss): called after every optimizer step (loss in nats)."""


log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 16
    checkpoints: int = 4
    seed: int = 0
    max_length: int = 128
    freeze_encoder: bool = False
    device: str = "auto"

    def check(self) -> None:
        for name in ("epochs", "batch_size", "checkpoints", "max_length"):
            if getattr(self, name) < 1:
                raise DatablameError(f"--{name.replace('_', '-')} must be at least 1", "pass a positive number")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise DatablameError(f"--lr must be a positive number, got {self.lr}", "e.g. --lr 5e-5")


def learning_rate(step: int, total: int, lr: float) -> float:
    """Learning rate used by 0-based optimizer step ``step`` of ``total``: linear from lr to lr/10."""
    return lr * (1.0 - 0.9 * step / max(1, total - 1))


def checkpoint_steps(total: int, k: int) -> list[int]:
    """1-based step counts after which the k checkpoints are saved, spread evenly, the last at ``total``."""
    return sorted({max(1, round(total * (j + 1) / k)) for j in range(k)})


def _save_atomically(model, tokenizer, dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def train(examples: Examples, base_model: str, workdir: str | Path, settings: TrainSettings = TrainSettings(),
          progress: TrainProgress | None = None) -> Config:
    """Fine-tune ``base_model`` on ``examples``, saving checkpoints and config.json into ``workdir``.

    Deterministic for a given seed on a given device. Raises DatablameError if the loss becomes NaN or inf.
    """
    settings.check()
    wd = Workdir(workdir)
    torch.manual_seed(settings.seed)
    model, task = load_classifier(base_model, examples.label_names, settings.device, settings.max_length,
                                  settings.seed)
    tokenizer = task.tokenizer
    if settings.freeze_encoder:
        head = task.head_name + "."
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(head))
    trainable = [p for p in model.parameters() if p.requires_grad]
    log.info("training %d of %d parameters on %d examples (%s)", sum(p.numel() for p in trainable),
             sum(p.numel() for p in model.parameters()), len(examples), settings)
    # with --freeze-encoder the encoder runs once (eval mode) and the head trains on its features: a linear probe;
    # the features are kept in the workdir's feature cache, where every method finds them for every checkpoint
    features = None
    if settings.freeze_encoder:
        features = logits_and_features_of(task, model, examples)[1]
        FeatureCache(examples, features_folder(wd.root)).of(task, model).put(features)
    opt = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    save_at = checkpoint_steps(total, settings.checkpoints)
    gen = torch.Generator().manual_seed(settings.seed)
    ck_root = wd.root / "checkpoints"
    ck_root.mkdir(parents=True, exist_ok=True)
    checkpoints: list[Checkpoint] = []
    device = next(model.parameters()).device
    step = 0
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(examples), generator=gen).numpy()
        for start in range(0, len(examples), settings.batch_size):
            batch = examples.subset(order[start:start + settings.batch_size])
            lr = learning_rate(step, total, settings.lr)
            for group in opt.param_groups:
                group["lr"] = lr
            if features is None:
                logits = task.logits(model, task.encode(batch.texts))
            else:
                logits = task.head(model)(features[order[start:start + settings.batch_size]])
            loss = task.loss(logits, torch.as_tensor(batch.labels, device=device)).mean()
            if not torch.isfinite(loss):
                raise DatablameError(f"the training loss became {loss.item()} at step {step + 1}",
                                     f"lower --lr (now {settings.lr:g})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if progress is not None:
                progress(step, total, loss.item())
            if step in save_at:
                rel = Path("checkpoints") / f"ck-{len(checkpoints):03d}"
                model.eval()
                _save_atomically(model, tokenizer, wd.root / rel)
                model.train()
                checkpoints.append(Checkpoint(path=str(rel), learning_rate=lr, step=step))
    config = Config(
        data_path=examples.path, data_fingerprint=examples.fingerprint, text_columns=list(examples.text_columns),
        label_column=examples.label_column, label_names=list(examples.label_names), checkpoints=checkpoints,
        max_length=settings.max_length, seed=settings.seed, base_model=str(Path(base_model).resolve()),
        training={k: v for k, v in vars(settings).items() if k not in ("device",)},
    )
    wd.save(config)
    return config


def evaluate(model, task, examples: Examples, batch_size: int = 64) -> float:
    """Accuracy of the model on ``examples`` (fraction in [0, 1])."""
    correct = 0
    model.eval()
    with torch.no_grad():
        for batch in examples.batches(batch_size):
            pred = task.logits(model, task.encode(batch.texts)).argmax(-1).cpu().numpy()
            correct += int(np.sum(pred == batch.labels))
    return correct / max(1, len(examples))


def init_workdir(workdir: str | Path, examples: Examples, checkpoints: list[str | Path],
                 learning_rates: list[float] | None = None, max_length: int = 128) -> Config:
    """Record models trained elsewhere in a new workdir (nothing is copied).

    ``checkpoints``: model folders, or one Hugging Face ``Trainer`` output folder (its ``checkpoint-*`` folders,
    learning rates from ``trainer_state.json``). ``learning_rates``: one per folder, one for all, or None (1.0
    each: TracIn then weights checkpoints equally). Every checkpoint is loaded and checked against the data's
    classes and against the first checkpoint's parameters.
    """
    from .models import model_label_order
    from .workdir import trainer_checkpoints

    if not checkpoints:
        raise DatablameError("no checkpoint given", "pass --checkpoint DIR (repeat it for several)")
    paths = [Path(c) for c in checkpoints]
    for p in paths:
        if not p.is_dir():
            raise DatablameError(f"checkpoint folder {p} not found", "check the path")
    found = trainer_checkpoints(paths[0]) if len(paths) == 1 else []
    if found:
        cks = found
    else:
        lrs = list(learning_rates or [])
        if len(lrs) not in (0, 1, len(paths)):
            raise DatablameError(f"{len(lrs)} learning rates for {len(paths)} checkpoints",
                                 "pass one --lr per --checkpoint, or one for all")
        lrs = lrs * len(paths) if len(lrs) == 1 else (lrs or [1.0] * len(paths))
        cks = [Checkpoint(path=str(p.resolve()), learning_rate=float(lr), step=i) for i, (p, lr) in
               enumerate(zip(paths, lrs))]
    names = model_label_order(cks[0].path, examples.label_names)
    if names != examples.label_names:
        order = {n: i for i, n in enumerate(names)}
        remap = np.array([order[n] for n in examples.label_names])
        examples = dataclasses.replace(examples, labels=remap[examples.labels], label_names=names)
    reference = None
    for ck in cks:
        model, _ = load_classifier(ck.path, names, "cpu", max_length)
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        if reference is None:
            reference = (ck.path, shapes)
        elif shapes != reference[1]:
            diff = next(n for n in {**shapes, **reference[1]} if shapes.get(n) != reference[1].get(n))
            raise DatablameError(f"checkpoint {ck.path} does not match {reference[0]} (parameter {diff} differs)",
                                 "pass checkpoints of one model architecture")
        del model
    config = Config(data_path=examples.path, data_fingerprint=examples.fingerprint,
                    text_columns=list(examples.text_columns), label_column=examples.label_column,
                    label_names=names, checkpoints=cks, max_length=max_length, base_model=cks[0].path)
    Workdir(workdir).save(config)
    return config
