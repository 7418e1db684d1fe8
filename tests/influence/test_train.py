"""Training: checkpoints with learning rates, determinism, frozen encoder, workdirs from elsewhere."""

import json

import pytest
import torch
from safetensors.torch import load_file

from datablame.influence.data import load_examples
from datablame.influence.errors import DatablameError
from datablame.influence.train import TrainSettings, checkpoint_steps, init_workdir, learning_rate, train
from datablame.influence.workdir import Workdir


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_checkpoints_and_learning_rates(trained_workdir, tiny_examples):
    cfg = Workdir(trained_workdir).load()
    assert [c.step for c in cfg.checkpoints] == [20, 40, 60]  # 48 examples / 8 = 6 steps per epoch, 10 epochs
    assert [c.learning_rate for c in cfg.checkpoints] == [learning_rate(s - 1, 60, 5e-3) for s in (20, 40, 60)]
    assert cfg.checkpoints[-1].learning_rate == pytest.approx(5e-4)
    assert cfg.data_fingerprint == tiny_examples.fingerprint and cfg.label_names == tiny_examples.label_names
    assert checkpoint_steps(10, 4) == [2, 5, 8, 10] and checkpoint_steps(2, 4) == [1, 2]


def test_same_seed_same_result(tiny_bert, tiny_examples, tmp_path):
    settings = TrainSettings(epochs=1, lr=1e-3, batch_size=8, checkpoints=1, device="cpu", seed=3)
    a = train(tiny_examples, str(tiny_bert), tmp_path / "a", settings)
    b = train(tiny_examples, str(tiny_bert), tmp_path / "b", settings)
    train(tiny_examples, str(tiny_bert), tmp_path / "c", TrainSettings(**{**vars(settings), "seed": 4}))
    wa, wb, wc = (weights(tmp_path / x / "checkpoints" / "ck-000") for x in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert a.checkpoints == b.checkpoints


def test_freeze_encoder_trains_only_the_head(trained_workdir, tiny_examples, tmp_path):
    """The head trains on features from one eval-mode pass of the encoder, and the training loss goes down."""
    from datablame.influence.models import load_classifier

    base = trained_workdir / "checkpoints" / "ck-002"  # an encoder whose features tell the classes apart
    train(tiny_examples, str(base), tmp_path, TrainSettings(epochs=30, lr=5e-2, batch_size=16, checkpoints=1,
                                                            device="cpu", freeze_encoder=True, seed=0))
    before, after = weights(base), weights(tmp_path / "checkpoints" / "ck-000")
    changed = {k for k in after if k in before and not torch.equal(before[k], after[k])}
    assert changed == {"classifier.weight", "classifier.bias"}

    def mean_loss(folder):
        model, task = load_classifier(folder, tiny_examples.label_names, "cpu", seed=0)
        with torch.no_grad():
            logits = task.logits(model, task.encode(tiny_examples.texts))
        return float(task.loss(logits, torch.as_tensor(tiny_examples.labels)).mean())

    assert mean_loss(tmp_path / "checkpoints" / "ck-000") < 0.8 * mean_loss(base)


def test_params_train_only_the_last_layer(trained_workdir, tiny_examples, tmp_path):
    """``params=["last-layer"]``: the highest encoder layer and the head change, nothing below; the config records
    it, and attribution then selects those parameters by default (sketched: more than a head's)."""
    from datablame.influence.build import build_method
    from datablame.influence.settings import MethodSettings

    base = trained_workdir / "checkpoints" / "ck-002"
    config = train(tiny_examples, str(base), tmp_path, TrainSettings(epochs=2, lr=1e-3, batch_size=16, checkpoints=1,
                                                                     device="cpu", params=["last-layer"]))
    before, after = weights(base), weights(tmp_path / "checkpoints" / "ck-000")
    changed = {k for k in after if k in before and not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("classifier.", "bert.encoder.layer.1.")) for k in changed)
    assert {"classifier.weight", "bert.encoder.layer.1.output.dense.weight"} <= changed
    assert config.training["params"] == ["last-layer"]
    method = build_method(tmp_path, "influence", MethodSettings.faithful(device="cpu"), fit=False).method
    assert set(method.names) == {k for k in after if k.startswith(("classifier.", "bert.encoder.layer.1."))}
    assert method.projector.out_dim == 2048 and method.query_curvature == "sketch"
    with pytest.raises(DatablameError, match="--freeze-encoder trains the head alone"):
        train(tiny_examples, str(base), tmp_path / "x", TrainSettings(freeze_encoder=True, params=["head"]))


def test_nan_loss_stops_with_advice(tiny_bert, tiny_examples, tmp_path):
    with pytest.raises(DatablameError, match="lower --lr"):
        train(tiny_examples, str(tiny_bert), tmp_path, TrainSettings(epochs=3, lr=1e30, batch_size=8, device="cpu"))
    assert not (tmp_path / "config.json").exists()


def test_init_from_trainer_output(trained_workdir, tiny_examples, tmp_path):
    import shutil

    out = tmp_path / "trainer-out"
    for i, step in enumerate([6, 12]):
        shutil.copytree(trained_workdir / "checkpoints" / f"ck-00{i}", out / f"checkpoint-{step}")
    log = [{"step": 5, "learning_rate": 3e-5, "loss": 1.0}, {"step": 10, "learning_rate": 2e-5}, {"step": 12, "eval_loss": 1}]
    (out / "checkpoint-12" / "trainer_state.json").write_text(json.dumps({"log_history": log}))
    (out / "checkpoint-6" / "trainer_state.json").write_text(json.dumps({"log_history": log[:1]}))
    cfg = init_workdir(tmp_path / "wd", tiny_examples, [out])
    assert [(c.step, c.learning_rate) for c in cfg.checkpoints] == [(6, 3e-5), (12, 2e-5)]
    assert Workdir(tmp_path / "wd").load().checkpoints == cfg.checkpoints


def test_init_refuses_mismatched_checkpoints(trained_workdir, tiny_examples, tmp_path):
    from conftest import build_tiny_bert

    other = build_tiny_bert(tmp_path / "other", hidden=16)
    with pytest.raises(DatablameError, match="does not match"):
        init_workdir(tmp_path / "wd", tiny_examples, [trained_workdir / "checkpoints" / "ck-000", other], [1e-3])
    four = build_tiny_bert(tmp_path / "four", num_labels=4)
    with pytest.raises(DatablameError, match="predicts 4 classes but the data has 3"):
        init_workdir(tmp_path / "wd", tiny_examples, [four])


def test_changed_data_is_refused(trained_workdir, tiny_examples, tmp_path):
    from conftest import make_rows, write_csv

    data = write_csv(tmp_path / "d.csv", make_rows(12))
    init_workdir(tmp_path / "wd", load_examples(data), [trained_workdir / "checkpoints" / "ck-002"], [1e-3])
    data.write_text(data.read_text() + "one more line,food\n")
    with pytest.raises(DatablameError, match="changed since"):
        Workdir(tmp_path / "wd").load_examples()


def test_toy_tokenizer_knows_its_words(tiny_bert):
    """Every word of the test vocabulary is its own token (a tokenizer that maps all to [UNK] fails here)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    ids = tokenizer("goal team soup code")["input_ids"]
    assert len(set(ids[1:-1])) == 4 and tokenizer.unk_token_id not in ids
