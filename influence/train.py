"""Fine-tuning with K checkpoints saved along the way, each with the learning rate in effect when it was saved.

Schedule: AdamW, learning rate decayed linearly from ``lr`` at the first step to ``lr / 10`` at the last, so
that every checkpoint keeps a non-zero TracIn weight. A checkpoint's learning rate is the one its last step used.

Resuming: each checkpoint folder is saved with the state needed to continue from it (``training_state.pt``:
AdamW's moments, torch's global RNG state for dropout, the shuffling generator's state at the start of the
epoch), and then ``checkpoints/progress.json`` records the run (data, base model and its weights digest,
settings), the checkpoints so far with their digests, and where in the epoch training stands. A run killed at any
moment is continued from its last recorded checkpoint by the next ``train`` of the same data, base model and
settings, and ends with the same checkpoints, bit for bit on CPU, as a run never interrupted. Only the last
checkpoint keeps its training state; a finished run (config.json written) keeps none, nor the record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .atomic import atomic_folder, atomic_write_json
from .data import Examples
from .errors import DatablameError, check_choice
from .features import FeatureCache
from .grads import select_params
from .models import load_classifier
from .pooling import POOLINGS
from .task import logits_and_features_of
from .workdir import Checkpoint, Config, Workdir, weights_digest

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
    pooling: str = "auto"  # what the head reads: auto, cls or mean (see .pooling)
    device: str = "auto"
    params: list[str] | None = None  # which parameters train (see .grads.select_params); None: all, or the head

    def check(self) -> None:
        for name in ("epochs", "batch_size", "checkpoints", "max_length"):
            if getattr(self, name) < 1:
                raise DatablameError(f"--{name.replace('_', '-')} must be at least 1", "pass a positive number")
        if self.freeze_encoder and self.params:
            raise DatablameError("--freeze-encoder trains the head alone, so it takes no --params",
                                 "drop --params, or --freeze-encoder to train the parameters --params names")
        check_choice("pooling", self.pooling, POOLINGS, "--pooling")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise DatablameError(f"--lr must be a positive number, got {self.lr}", "e.g. --lr 5e-5")


def learning_rate(step: int, total: int, lr: float) -> float:
    """Learning rate used by 0-based optimizer step ``step`` of ``total``: linear from lr to lr/10."""
    return lr * (1.0 - 0.9 * step / max(1, total - 1))


def checkpoint_steps(total: int, k: int) -> list[int]:
    """1-based step counts after which the k checkpoints are saved, spread evenly, the last at ``total``."""
    return sorted({max(1, round(total * (j + 1) / k)) for j in range(k)})


STATE = "training_state.pt"
"""The file in a checkpoint folder holding what continuing from it needs (see :func:`_training_state`)."""


def _save_atomically(model, tokenizer, dest: Path, state: dict) -> None:
    """The model, its tokenizer and the training ``state`` into ``dest``, all three or none."""
    with atomic_folder(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / STATE)


def _training_state(opt: torch.optim.Optimizer, epoch_start: torch.Tensor, device: torch.device) -> dict:
    """What continuing after the current step needs beyond the weights: the optimizer's state (AdamW's step
    count and moments), torch's global RNG state (dropout; the CUDA one too on a GPU), and ``epoch_start``, the
    shuffling generator's state before it drew the current epoch's order."""
    state = {"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "generator": epoch_start}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def _digest(array: torch.Tensor) -> str:
    """BLAKE2b hex digest of a tensor's float32 bytes (the frozen encoder's features)."""
    return hashlib.blake2b(array.detach().float().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()


def _run_identity(examples: Examples, base_model: str, settings: TrainSettings, wd: Workdir,
                  left_out: np.ndarray) -> dict:
    """What decides a run's checkpoints: the data (file fingerprint and a digest of the texts, labels and label
    names), the base model (resolved path and :func:`weights_digest`), the settings (the device aside) and the
    rows left out (a digest, when any are)."""
    content = hashlib.blake2b(json.dumps([examples.texts, list(examples.label_names)]).encode(), digest_size=20)
    content.update(np.asarray(examples.labels, dtype=np.int64).tobytes())
    run = {"data_fingerprint": examples.fingerprint, "examples": content.hexdigest(),
           "base_model": str(Path(base_model).resolve()),
           "base_digest": weights_digest(base_model, wd.digest_cache), "settings": _settings_record(settings)}
    if left_out.any():
        run["left_out"] = hashlib.blake2b(np.flatnonzero(left_out).tobytes(), digest_size=20).hexdigest()
    return run


def _settings_record(settings: TrainSettings) -> dict:
    """The settings that decide the checkpoints (all but the device), as config.json's ``training`` holds them
    (``params`` only when given, so that a run of every parameter is recorded as before it existed)."""
    return {k: v for k, v in vars(settings).items() if k != "device" and not (k == "params" and v is None)}


@dataclass
class _Resume:
    """Where an interrupted run stopped: its recorded checkpoints (the last one's folder holds ``state``, see
    :func:`_training_state`), the 0-based epoch it was in and the optimizer steps of that epoch done
    (``position``, up to the steps per epoch), and the digest of the frozen encoder's features it trained on
    (None without --freeze-encoder)."""

    run: dict
    checkpoints: list[Checkpoint]
    epoch: int
    position: int
    features: str | None
    state: dict


def _resumable(wd: Workdir, examples: Examples, base_model: str, settings: TrainSettings,
               left_out: np.ndarray) -> _Resume | None:
    """The interrupted run recorded in ``wd`` when it is this run (:func:`_run_identity`) and its recorded
    checkpoints and training state are intact; None otherwise (no record, a finished run, another run, or
    damaged files), saying why at INFO."""
    path = wd.training_progress
    if wd.exists() or not path.is_file():
        return None
    # the record makes it a workdir: its cache may be written
    run = _run_identity(examples, base_model, settings, wd, left_out)
    try:
        record = json.loads(path.read_text())
        checkpoints = [Checkpoint(**c) for c in record["checkpoints"]]
        differs = [k for k in run if record["run"].get(k) != run[k]]
        if differs:
            log.info("%s holds an interrupted run of other %s: training from scratch", wd.root, ", ".join(differs))
            return None
        wd.verify(checkpoints)
        state = torch.load(wd.checkpoint_path(checkpoints[-1]) / STATE, map_location="cpu", weights_only=True)
        return _Resume(run, checkpoints, int(record["epoch"]), int(record["position"]), record["features"], state)
    except DatablameError as exc:  # a recorded checkpoint is missing or its weights changed
        log.info("the interrupted run in %s cannot be continued (%s): training from scratch", wd.root, exc)
        return None
    except (OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        log.info("the record of the interrupted run in %s is unreadable (%s: %s): training from scratch", wd.root,
                 type(exc).__name__, exc)
        return None


def _record_progress(wd: Workdir, run: dict, checkpoints: list[Checkpoint], epoch: int, position: int,
                     features: str | None) -> None:
    """Record the run after its newest checkpoint (see :class:`_Resume`), then drop the previous checkpoint's
    training state, which nothing can resume from any more."""
    atomic_write_json(wd.training_progress, {"run": run, "checkpoints": [asdict(c) for c in checkpoints],
                                           "epoch": epoch, "position": position, "features": features})
    if len(checkpoints) > 1:
        (wd.checkpoint_path(checkpoints[-2]) / STATE).unlink(missing_ok=True)


def _tidy(wd: Workdir, checkpoints: list[Checkpoint]) -> None:
    """Remove what an interrupted run left in checkpoints/ beyond its record: a checkpoint saved after the record
    was last written, temporary folders and files of a save cut short, and the training state of every recorded
    checkpoint but the last."""
    keep = {wd.training_progress.name} | {wd.checkpoint_path(c).name for c in checkpoints}
    for entry in wd.checkpoints_dir.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for ck in checkpoints[:-1]:
        (wd.checkpoint_path(ck) / STATE).unlink(missing_ok=True)


def _frozen_features(task, model, examples: Examples, wd: Workdir, resumed: str | None) -> torch.Tensor:
    """(n, h) features of the frozen encoder, the inputs of the trained head, kept in the workdir's feature cache.

    ``resumed``: the digest of the features an interrupted run trained on. A resumed run reads them from the cache
    (no encoder pass), or computes them in the same batches when the cache lost them; a new run computes them.
    """
    cached = FeatureCache(examples, wd.features_cache).of(task, model)
    if resumed is None:
        features = logits_and_features_of(task, model, examples)[1]
        cached.put(features)
        return features
    features = cached.rows(np.arange(len(examples)))
    if _digest(features) != resumed:
        log.warning("the frozen encoder's features differ from those the interrupted run trained on (another "
                    "device?): the resumed run may differ slightly from an uninterrupted one")
    return features


def refuse_foreign(wd: Workdir) -> None:
    """Refuse to train into a file, or into a folder with other files that is not a datablame workdir (writes
    nothing)."""
    root = wd.root
    if root.exists() and not root.is_dir():
        raise DatablameError(f"--out {root} is a file", "give a folder for the workdir")
    if root.is_dir() and any(root.iterdir()) and not any(p.exists() for p in wd.own_paths):
        raise DatablameError(f"--out {root} is a folder with other files, not a datablame workdir",
                             "give a new or empty folder, or an existing workdir to retrain into")


def clear_for_training(wd: Workdir) -> None:
    """Make ``wd`` (new, empty, or a workdir: :func:`refuse_foreign` has passed) ready for new checkpoints: its
    derived artifacts are removed, so that nothing computed from old weights is left beside the new ones."""
    root = wd.root
    removed = [path for path in wd.derived if path.exists()]
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if removed:
        log.info("retraining into %s: removed %s", root, ", ".join(str(p.relative_to(root)) for p in removed))


def train(examples: Examples, base_model: str, workdir: str | Path, settings: TrainSettings = TrainSettings(),
          progress: TrainProgress | None = None, leave_out: np.ndarray | None = None) -> Config:
    """Fine-tune ``base_model`` on ``examples``, saving checkpoints and config.json into ``workdir``.

    Deterministic for a given seed on a given device. Resumes an interrupted run of the same data, base model and
    settings in ``workdir`` at its last checkpoint (see the module's doc), with the same result; any other
    existing workdir is cleared first (:func:`clear_for_training`). ``progress`` sees the true step, also when
    resumed (the loss is NaN for a step whose batch was left empty). Raises DatablameError if the loss becomes NaN
    or inf.

    ``leave_out``: training ids (positions in ``examples``) to leave out *paired*, the counterfactual of this same
    run: every step takes the batch the run on all examples takes, with those rows left out of its mean loss, and
    a batch left empty still takes AdamW's step with a zero gradient (as :func:`.retrain.retrain_heads` with
    ``paired`` does for heads). They enter the run's identity, so a resumed run never mixes them.
    """
    settings.check()
    wd = Workdir(workdir)
    refuse_foreign(wd)
    left_out = np.zeros(len(examples), dtype=bool)
    if leave_out is not None:
        left_out[np.asarray(leave_out, dtype=np.int64)] = True
    resume = _resumable(wd, examples, base_model, settings, left_out)
    torch.manual_seed(settings.seed)  # the model loads (and so is checked) before anything of the workdir goes
    model, task = load_classifier(base_model if resume is None else wd.checkpoint_path(resume.checkpoints[-1]),
                                  examples.label_names, settings.device, settings.max_length, settings.seed,
                                  settings.pooling)
    if resume is None:
        clear_for_training(wd)
        run, checkpoints = _run_identity(examples, base_model, settings, wd, left_out), []
    else:
        run, checkpoints = resume.run, list(resume.checkpoints)
        _tidy(wd, checkpoints)
    tokenizer = task.tokenizer
    if settings.freeze_encoder or settings.params:
        chosen = set(select_params(model, task, ["head"] if settings.freeze_encoder else settings.params))
        for name, p in model.named_parameters():
            p.requires_grad_(name in chosen)
    trainable = [p for p in model.parameters() if p.requires_grad]
    log.info("training %d of %d parameters on %d examples (%s)", sum(p.numel() for p in trainable),
             sum(p.numel() for p in model.parameters()), len(examples), settings)
    # with --freeze-encoder the encoder runs once (eval mode) and the head trains on its features: a linear probe;
    # the features are kept in the workdir's feature cache, where every method finds them for every checkpoint
    features = features_digest = None
    if settings.freeze_encoder:
        features = _frozen_features(task, model, examples, wd, None if resume is None else resume.features)
        features_digest = _digest(features)
    opt = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    save_at = checkpoint_steps(total, settings.checkpoints)
    gen = torch.Generator().manual_seed(settings.seed)
    device = next(model.parameters()).device
    step, first_epoch, done_in_epoch = 0, 0, 0
    if resume is not None:
        opt.load_state_dict(resume.state["optimizer"])
        torch.set_rng_state(resume.state["rng"])
        if device.type == "cuda" and "cuda_rng" in resume.state:
            torch.cuda.set_rng_state(resume.state["cuda_rng"], device)
        gen.set_state(resume.state["generator"])
        step, first_epoch, done_in_epoch = checkpoints[-1].step, resume.epoch, resume.position
        log.info("resuming at step %d of %d from checkpoint %s", step, total, checkpoints[-1].path)
    wd.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    model.train()
    for epoch in range(first_epoch, settings.epochs):
        epoch_start = gen.get_state()
        order = torch.randperm(len(examples), generator=gen).numpy()
        for position in range(done_in_epoch if epoch == first_epoch else 0, steps_per_epoch):
            rows = order[position * settings.batch_size:(position + 1) * settings.batch_size]
            rows = rows[~left_out[rows]]
            lr = learning_rate(step, total, settings.lr)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = _backward(task, model, examples.subset(rows), None if features is None else features[rows],
                             trainable, step, settings)
            opt.step()
            step += 1
            if progress is not None:
                progress(step, total, loss)
            if step in save_at:
                rel = wd.checkpoints_dir.relative_to(wd.root) / f"ck-{len(checkpoints):03d}"
                model.eval()
                _save_atomically(model, tokenizer, wd.root / rel, _training_state(opt, epoch_start, device))
                model.train()
                checkpoints.append(wd.record(Checkpoint(path=str(rel), learning_rate=lr, step=step)))
                _record_progress(wd, run, checkpoints, epoch, position + 1, features_digest)
    config = Config(
        data_path=examples.path, data_fingerprint=examples.fingerprint, text_columns=list(examples.text_columns),
        label_column=examples.label_column, label_names=list(examples.label_names), checkpoints=checkpoints,
        max_length=settings.max_length, seed=settings.seed, base_model=str(Path(base_model).resolve()),
        training=_settings_record(settings), encoding=examples.encoding,
    )
    wd.save(config)
    (wd.checkpoint_path(checkpoints[-1]) / STATE).unlink(missing_ok=True)
    wd.training_progress.unlink(missing_ok=True)
    return config


def _backward(task, model: torch.nn.Module, batch: Examples, features: torch.Tensor | None,
              trainable: list[torch.Tensor], step: int, settings: TrainSettings) -> float:
    """Set the gradients of the mean loss (nats) of one batch, returned; a batch left empty (every row left out)
    gets zero gradients and a NaN loss. ``features``: the batch's frozen-encoder features, else None (a forward
    pass through the model)."""
    if not len(batch):
        for p in trainable:
            p.grad = torch.zeros_like(p)
        return math.nan
    device = next(model.parameters()).device
    logits = task.logits(model, task.encode(batch.texts)) if features is None else task.head(model)(features)
    loss = task.loss(logits, torch.as_tensor(batch.labels, device=device)).mean()
    if not torch.isfinite(loss):
        raise DatablameError(f"the training loss became {loss.item()} at step {step + 1}",
                             f"lower --lr (now {settings.lr:g})")
    for p in trainable:
        p.grad = None
    loss.backward()
    return loss.item()


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
    wd = Workdir(workdir)  # written only once every checkpoint passed: digests, then config.json
    config = Config(data_path=examples.path, data_fingerprint=examples.fingerprint,
                    text_columns=list(examples.text_columns), label_column=examples.label_column,
                    label_names=names, checkpoints=[wd.record(c) for c in cks], max_length=max_length, base_model=cks[0].path,
                    encoding=examples.encoding)
    wd.save(config)
    return config
