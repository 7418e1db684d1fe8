"""Training interrupted after a checkpoint resumes there and ends exactly where an uninterrupted run ends: the
same checkpoint weights bit for bit (CPU), the same learning rates, steps and digests in config.json."""

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from datablame.influence.train import STATE, TrainSettings, train
from datablame.influence.workdir import Workdir

# 48 examples / 8 = 6 steps per epoch, 12 steps, checkpoints after steps 4, 8 and 12: the second one mid-epoch
SETTINGS = dict(epochs=2, lr=5e-3, batch_size=8, checkpoints=3, device="cpu", seed=1)


class Stop(KeyboardInterrupt):
    """Raised by the progress callback, as Ctrl-C would arrive between two steps."""


def stopping_at(step: int, seen: list[int]):
    """A progress callback recording the steps it sees (in ``seen``) and interrupting training at ``step``."""

    def progress(done: int, total: int, loss: float) -> None:
        seen.append(done)
        if done == step:
            raise Stop

    return progress


def assert_same_checkpoints(a, b) -> None:
    ca, cb = Workdir(a).load().checkpoints, Workdir(b).load().checkpoints
    assert [(c.path, c.learning_rate, c.step, c.digest) for c in ca] == \
           [(c.path, c.learning_rate, c.step, c.digest) for c in cb]
    for ck in ca:
        wa, wb = (load_file(str(root / ck.path / "model.safetensors")) for root in (a, b))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), ck.path


@pytest.mark.parametrize("freeze_encoder", [False, True])
def test_interrupted_twice_then_resumed_equals_uninterrupted(tiny_bert, tiny_examples, tmp_path, caplog,
                                                             freeze_encoder):
    settings = TrainSettings(freeze_encoder=freeze_encoder, **SETTINGS)
    whole = train(tiny_examples, str(tiny_bert), tmp_path / "a", settings)
    assert [c.step for c in whole.checkpoints] == [4, 8, 12]
    b = tmp_path / "b"
    seen: list[int] = []
    with pytest.raises(Stop):  # after the first checkpoint (step 4), at the end of step 5
        train(tiny_examples, str(tiny_bert), b, settings, stopping_at(5, seen))
    with pytest.raises(Stop):  # resumed at step 4, stopped after the second checkpoint (step 8), mid-epoch
        train(tiny_examples, str(tiny_bert), b, settings, stopping_at(9, seen))
    assert seen == [1, 2, 3, 4, 5, 5, 6, 7, 8, 9]
    # only the last recorded checkpoint keeps the training state; no config.json: not a finished workdir
    assert not (b / "config.json").exists() and Workdir(b).training_progress.is_file()
    assert [p.parent.name for p in sorted((b / "checkpoints").glob(f"*/{STATE}"))] == ["ck-001"]
    record = json.loads(Workdir(b).training_progress.read_text())
    assert [c["step"] for c in record["checkpoints"]] == [4, 8] and (record["epoch"], record["position"]) == (1, 2)
    with caplog.at_level(logging.INFO, logger="datablame.influence.train"):
        resumed = train(tiny_examples, str(tiny_bert), b, settings, stopping_at(-1, seen))
    assert "resuming at step 8 of 12 from checkpoint checkpoints/ck-001" in caplog.text
    assert seen[10:] == [9, 10, 11, 12]
    assert resumed.checkpoints == whole.checkpoints
    assert_same_checkpoints(tmp_path / "a", b)
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == ["ck-000", "ck-001", "ck-002"]
    assert not list(b.glob(f"checkpoints/*/{STATE}"))


def test_resumed_frozen_run_recomputes_missing_features(tiny_bert, tiny_examples, tmp_path):
    """Without the feature cache the resumed run computes the encoder's features again, to the same values."""
    settings = TrainSettings(freeze_encoder=True, **SETTINGS)
    train(tiny_examples, str(tiny_bert), tmp_path / "a", settings)
    with pytest.raises(Stop):
        train(tiny_examples, str(tiny_bert), tmp_path / "b", settings, stopping_at(9, []))
    shutil.rmtree(tmp_path / "b" / "cache" / "features")
    train(tiny_examples, str(tiny_bert), tmp_path / "b", settings)
    assert_same_checkpoints(tmp_path / "a", tmp_path / "b")


def test_leftovers_of_a_kill_are_removed_on_resume(tiny_bert, tiny_examples, tmp_path):
    """A checkpoint saved after the record's last update and a save cut short are dropped, then redone."""
    settings = TrainSettings(freeze_encoder=True, **SETTINGS)
    train(tiny_examples, str(tiny_bert), tmp_path / "a", settings)
    b = tmp_path / "b"
    with pytest.raises(Stop):
        train(tiny_examples, str(tiny_bert), b, settings, stopping_at(5, []))
    (b / "checkpoints" / ".ck-001.x1.tmp").mkdir()  # atomic_folder's temporary folder, killed mid-save
    (b / "checkpoints" / "ck-001").mkdir()  # saved, but the kill came before the record named it
    (b / "checkpoints" / "ck-001" / "model.safetensors").write_bytes(b"not these weights")
    seen: list[int] = []
    train(tiny_examples, str(tiny_bert), b, settings, stopping_at(-1, seen))
    assert seen[0] == 5
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == ["ck-000", "ck-001", "ck-002"]
    assert_same_checkpoints(tmp_path / "a", b)


@pytest.mark.parametrize("change", ["lr", "data", "changed checkpoint"])
def test_another_run_or_damaged_checkpoint_starts_over(tiny_bert, tiny_examples, tmp_path, change):
    """Other settings or data, or a recorded checkpoint whose weights changed: nothing is resumed, the workdir
    is cleared, and the result is that of a run from scratch (a linear probe, as resuming does not depend on it)."""
    settings = TrainSettings(freeze_encoder=True, **SETTINGS)
    examples = tiny_examples
    with pytest.raises(Stop):
        train(tiny_examples, str(tiny_bert), tmp_path / "b", settings, stopping_at(9, []))
    if change == "lr":
        settings = TrainSettings(freeze_encoder=True, **{**SETTINGS, "lr": 1e-3})
    elif change == "data":
        examples = tiny_examples.subset(range(40))
    else:
        weights = tmp_path / "b" / "checkpoints" / "ck-000" / "model.safetensors"
        tensors = load_file(str(weights))
        tensors["classifier.bias"] = tensors["classifier.bias"] + 1
        save_file(tensors, str(weights), metadata={"format": "pt"})
    seen: list[int] = []
    train(examples, str(tiny_bert), tmp_path / "b", settings, stopping_at(-1, seen))
    assert seen[0] == 1
    train(examples, str(tiny_bert), tmp_path / "a", settings)
    assert_same_checkpoints(tmp_path / "a", tmp_path / "b")
