"""Checking an explanation by retraining: would the prediction really change without the supporters?

For a workdir trained with a frozen encoder, the head is retrained with the recipe and seed that produced the
final checkpoint (:mod:`datablame.influence.retrain`), all variants at once and paired: every variant takes the
training run's own batches with its removed examples left out of them, so that variants differ by what was
removed and not by the order SGD saw the rest in (retraining on a reshuffled subset moves a margin by about as
much as removing ten examples of 67k does):

    original           all training examples (reproduces the final checkpoint's head)
    without_top        without the top-K supporting examples of the explanation
    without_random     without K random examples with the same labels as those supporters, one per draw
    without_opposing   without the top-K opposing examples

and the query's margin (logit of the predicted label minus the largest other logit, in nats) and probability of
the predicted label are read off each retrained head. The explanation *holds* when removing the supporters lowers
the margin more than every random draw does and removing the opponents raises it.

For a workdir whose whole model was fine-tuned, each variant is a whole fine-tune with the same recipe, seed and
pairing (``train(..., leave_out=…)``), the original being the final checkpoint itself. That takes as long as
training did, once per variant: :func:`fine_tune_estimate` times it first, and it runs only with ``yes=True``
(``--yes``).

    verify([Explainer(workdir, "influence")], "an input", k=10)   → [Verification]
    verify_slice([Explainer(workdir, "influence")], texts, k=10)  → the same for a slice's aggregate explanation
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch

from datablame.influence.data import Examples, Text
from datablame.influence.errors import DatablameError
from datablame.influence.features import FeatureCache
from datablame.influence.models import load_classifier
from datablame.influence.retrain import base_model, initial_head, recipe, retrain_heads
from datablame.influence.task import forward, model_device
from datablame.influence.train import train as train_model
from datablame.influence.workdir import Workdir

from .explain import QUERY_BATCH, Explanation, Explainer
from .plan import duration

DRAWS = 5
"""Random removals per verification: the spread a supporters' removal is compared against."""


@dataclass
class Verification:
    """What retraining without the explanation's examples did to the query (see the module's doc): ``k`` removed;
    ``margin`` and ``probability`` of the predicted label ``label`` under keys original, without_top,
    without_random (a list, one per draw) and without_opposing; ``flipped``: the prediction changes without the
    supporters; ``holds``; ``seconds`` of wall time; ``removed``: the training ids of each removal; for a slice
    (:func:`verify_slice`), ``inputs`` and the means over them, ``flipped_share`` of its predictions flipping (and
    ``flipped`` when most do); ``retrained``: ``head`` or ``whole model``, and for the latter the
    ``estimated_seconds`` said before starting."""

    k: int
    label: str
    margin: dict
    probability: dict
    flipped: bool
    holds: bool
    seconds: float
    removed: dict
    inputs: int = 1
    flipped_share: float = 0.0
    retrained: str = "head"
    estimated_seconds: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


def same_label_draws(labels: np.ndarray, chosen: np.ndarray, draws: int, seed: int) -> list[np.ndarray]:
    """``draws`` random sets of training ids, each with as many examples of every label as ``chosen`` has and none
    of ``chosen`` (fewer where a label has too few others)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        picked = []
        for label, count in zip(*np.unique(labels[chosen], return_counts=True)):
            pool = np.setdiff1d(np.flatnonzero(labels == label), chosen)
            picked.append(rng.choice(pool, min(count, len(pool)), replace=False))
        out.append(np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64))
    return out


def margins(logits: torch.Tensor, label: int) -> tuple[np.ndarray, np.ndarray]:
    """Margin (logit of ``label`` minus the largest other, nats) and probability of ``label``, per row of (R, K)
    logits."""
    others = logits.clone()
    others[:, label] = -torch.inf
    margin = logits[:, label] - others.max(1).values
    return margin.numpy(), torch.softmax(logits, 1)[:, label].numpy()


def verify(explainers: Sequence[Explainer], text: Text, k: int = 10, draws: int = DRAWS, seed: int = 0,
           device: str = "cpu", yes: bool = False, notice: Callable[[str], None] | None = None
           ) -> list[Verification]:
    """Retrain the head without the top-``k`` supporters of ``text``'s explanation, without ``draws`` random
    same-label sets of k, and without the top-k opponents, and report what each did to its prediction: one
    :class:`Verification` per explainer (e.g. both scorings of one method, sharing one retraining run). Where the
    whole model was fine-tuned, ``yes`` must allow the fine-tunes (refused otherwise, with their estimated time),
    and ``notice`` hears that estimate before they start."""
    _check(k, draws)
    return _retrain_without(explainers, [text], [e.explain([text], top=k)[0] for e in explainers], k, draws, seed,
                            device, yes, notice)


def verify_slice(explainers: Sequence[Explainer], texts: Sequence[Text], k: int = 10, draws: int = DRAWS,
                 seed: int = 0, device: str = "cpu", yes: bool = False,
                 notice: Callable[[str], None] | None = None) -> list[Verification]:
    """:func:`verify` for a slice: the removals are the top-k supporters and opponents of its aggregate
    explanation (the summed query vectors); each input's margin is of its own predicted label, and the reported
    margins and probabilities are their means over the slice; ``flipped_share`` is the share of the slice's
    predictions that change without the supporters."""
    _check(k, draws)
    return _retrain_without(explainers, list(texts), [e.explain_aggregate(texts, top=k) for e in explainers], k,
                            draws, seed, device, yes, notice)


def _check(k: int, draws: int) -> None:
    if k < 1:
        raise DatablameError(f"--remove must be at least 1, not {k}", "e.g. --remove 10")
    if draws < 1:
        raise DatablameError(f"--draws must be at least 1, not {draws}", "e.g. --draws 5")


def whole_model(config) -> bool:
    """Whether verifying a workdir retrains its whole model (its encoder was not frozen), not only the head."""
    return not (config.training or {}).get("freeze_encoder")


def fine_tune_estimate(config, train: Examples, runs: int, device: str = "cpu") -> float:
    """Seconds that ``runs`` whole fine-tunes with the workdir's recipe take here: two timed AdamW steps on one
    batch (after one warm-up step) times the recipe's steps, plus loading the base model twice (load, save) per
    run."""
    settings = recipe(config, frozen=False)
    start = time.perf_counter()
    model, task = load_classifier(base_model(config), config.label_names, device, settings.max_length,
                                  settings.seed, settings.pooling)
    load_s = time.perf_counter() - start
    batch = train.subset(np.arange(min(settings.batch_size, len(train))))
    inputs, labels = task.encode(batch.texts), torch.as_tensor(batch.labels, device=model_device(model))
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    model.train()
    for i in range(3):
        if i == 1:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        task.loss(task.logits(model, inputs), labels).mean().backward()
        opt.step()
    step_s = (time.perf_counter() - start) / 2
    steps = settings.epochs * -(-len(train) // settings.batch_size)
    return runs * (steps * step_s + 2 * load_s)


def _retrain_without(explainers: Sequence[Explainer], texts: list[Text], explanations: list[Explanation], k: int,
                     draws: int, seed: int, device: str, yes: bool, notice: Callable[[str], None] | None
                     ) -> list[Verification]:
    """One retraining run for every explainer's removals (its explanation's top-k supporters, random same-label
    sets, top-k opponents), read at each input's features; see :func:`verify`."""
    start = time.perf_counter()
    workdir, train = explainers[0].workdir, explainers[0].train
    config = workdir.load()
    whole = whole_model(config)
    settings = recipe(config, frozen=not whole)
    if k * 2 >= len(train):
        raise DatablameError(f"--remove {k} leaves too few of the {len(train)} training examples",
                             f"remove fewer than {len(train) // 2}")
    labels = np.asarray(train.labels)
    removals, removed_sets = [], []
    for explanation in explanations:
        top = np.array([n.id for n in explanation.supporting], dtype=np.int64)
        opposing = np.array([n.id for n in explanation.opposing], dtype=np.int64)
        random_sets = same_label_draws(labels, top, draws, seed)
        removals.append({"top": top.tolist(), "random": [r.tolist() for r in random_sets],
                         "opposing": opposing.tolist()})
        removed_sets += [top, *random_sets, opposing]
    estimate = None
    if whole:
        estimate = fine_tune_estimate(config, train, len(removed_sets), device)
        what = (f"verifying fine-tunes the whole model {len(removed_sets)} times here (its encoder was not frozen): "
                f"about {duration(estimate)} on this machine")
        if not yes:
            raise DatablameError(what, "add --yes to run it (fewer runs: --draws 1, or one --score)")
        if notice is not None:
            notice(what)
    model, task = load_classifier(workdir.checkpoint_path(config.checkpoints[-1]), config.label_names, device,
                                  config.max_length)
    logits, query = zip(*(forward(task, model, task.encode(texts[lo:lo + QUERY_BATCH]))
                          for lo in range(0, len(texts), QUERY_BATCH)))
    original = torch.cat(logits)
    predicted = original.argmax(-1).tolist()  # each input's own prediction
    if whole:
        retrained = torch.stack([original.cpu(), *(_fine_tuned_logits(config, train, ids, texts, settings, device)
                                                   for ids in removed_sets)])  # (R, inputs, K)
    else:
        everything = np.arange(len(train))
        x = FeatureCache(train, workdir.features_cache).of(task, model).rows(everything)
        subsets = [everything, *(np.setdiff1d(everything, ids) for ids in removed_sets)]
        heads = retrain_heads(initial_head(config, device), x, torch.as_tensor(labels, device=x.device), subsets,
                              settings, paired=True)
        retrained = heads.logits(torch.cat(query)).cpu()  # (R, inputs, K)
    per_input = [margins(retrained[:, i, :], label) for i, label in enumerate(predicted)]
    margin = np.mean([m for m, _ in per_input], axis=0)  # (R,): means over the inputs
    probability = np.mean([p for _, p in per_input], axis=0)
    flips = np.mean([m < 0 for m, _ in per_input], axis=0)
    seconds = round(time.perf_counter() - start, 2)
    out, per = [], draws + 2  # variants per explainer after the shared original
    for i, removed in enumerate(removals):
        rows = np.r_[0, 1 + i * per:1 + (i + 1) * per]  # original, without_top, randoms…, without_opposing
        m, p = margin[rows], probability[rows]
        holds = bool(m[1] < m[2:-1].min() and m[-1] > m[0])
        out.append(Verification(k, explanations[i].prediction["label"], _by_variant(m), _by_variant(p),
                                flipped=bool(flips[rows[1]] > 0.5), holds=holds, seconds=seconds, removed=removed,
                                inputs=len(texts), flipped_share=round(float(flips[rows[1]]), 4),
                                retrained="whole model" if whole else "head",
                                estimated_seconds=None if estimate is None else round(estimate, 1)))
    return out


def _fine_tuned_logits(config, train: Examples, left_out: np.ndarray, texts: list[Text], settings, device: str
                       ) -> torch.Tensor:
    """(inputs, K) logits on CPU of the whole model fine-tuned by the workdir's recipe without ``left_out``
    (paired: the run's own batches), in a temporary workdir (its final checkpoint only)."""
    with tempfile.TemporaryDirectory(prefix="datablame-verify-") as tmp:
        done = train_model(train, config.base_model, tmp, replace(settings, checkpoints=1, device=device),
                           leave_out=left_out)
        model, task = load_classifier(Workdir(tmp).checkpoint_path(done.checkpoints[-1]), config.label_names, device,
                                      config.max_length)
        return torch.cat([forward(task, model, task.encode(texts[lo:lo + QUERY_BATCH]))[0].cpu()
                          for lo in range(0, len(texts), QUERY_BATCH)])


def _by_variant(values: np.ndarray) -> dict:
    """(original, without_top, without_random…, without_opposing) values as the JSON's keys."""
    return {"original": round(float(values[0]), 6), "without_top": round(float(values[1]), 6),
            "without_random": [round(float(v), 6) for v in values[2:-1]],
            "without_opposing": round(float(values[-1]), 6)}
