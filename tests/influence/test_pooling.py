"""Pooling: what the head reads. ``mean`` is checked against the masked mean computed by hand, is the same alone
and padded in a batch, reads a head replaced in place, survives save/load through config.json, runs under torch.func, and ``auto`` follows a
sentence-transformers pooling config; frozen training with it caches the mean-pooled features."""

import json
import shutil

import numpy as np
import pytest
import torch

from datablame.influence.errors import DatablameError
from datablame.influence.models import load_classifier
from datablame.influence.pooling import CONFIG_KEY, apply_pooling, resolve_pooling, sentence_transformers_pooling

NAMES = ["sports", "food", "tech"]
TEXTS = ["goal", "pasta soup bread spicy sweet dinner recipe", "laptop code"]


def sentence_transformers_folder(tiny_bert, tmp_path, mode: str):
    folder = tmp_path / f"st-{mode}"
    shutil.copytree(tiny_bert, folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "pooling_mode_cls_token": mode == "cls", "pooling_mode_mean_tokens": mode == "mean"}))
    return folder


def test_mean_is_the_masked_mean_of_the_last_hidden_states(tiny_bert):
    model, task = load_classifier(tiny_bert, NAMES, pooling="mean")
    assert task.pooling == "mean"
    batch = task.encode(TEXTS)
    with torch.no_grad():
        logits, features = task.logits_and_features(model, batch)
        enc = task.tokenizer(TEXTS, padding=True, return_tensors="pt")
        states = model.bert(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].float()
        by_hand = (states * mask).sum(1) / mask.sum(1)
        alone = [task.logits(model, task.encode([t]))[0] for t in TEXTS]
    assert torch.allclose(features, by_hand, atol=1e-5)
    assert torch.allclose(logits, model.classifier(by_hand), atol=1e-5)
    assert torch.allclose(logits, torch.stack(alone), atol=1e-5)  # padding does not enter the mean
    cls_model, cls_task = load_classifier(tiny_bert, NAMES)
    with torch.no_grad():
        assert not torch.allclose(cls_task.logits_and_features(cls_model, batch)[1], features, atol=1e-3)


def test_mean_reads_a_head_replaced_in_place(tiny_bert):
    """A module swapped into the model (a wrapper, as Kronfluence installs) is the one the mean forward calls."""
    model, task = load_classifier(tiny_bert, NAMES, pooling="mean")
    head = torch.nn.Linear(model.classifier.in_features, len(NAMES))
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    model.classifier = head
    with torch.no_grad():
        assert torch.equal(task.logits(model, task.encode(TEXTS)), head.bias.expand(len(TEXTS), -1))


def test_mean_under_torch_func(tiny_bert):
    model, task = load_classifier(tiny_bert, NAMES, pooling="mean")
    batch = task.encode(TEXTS)
    params = {n: p.detach() for n, p in model.named_parameters()}
    with torch.no_grad():
        assert torch.allclose(task.functional_logits(model, params, batch), task.logits(model, batch), atol=1e-6)


def test_saved_with_the_checkpoint(tiny_bert, tmp_path):
    model, task = load_classifier(tiny_bert, NAMES, pooling="mean")
    model.save_pretrained(tmp_path / "ck")
    task.tokenizer.save_pretrained(tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "config.json").read_text())[CONFIG_KEY] == "mean"
    again, again_task = load_classifier(tmp_path / "ck", NAMES)  # None: as saved
    assert again_task.pooling == "mean"
    batch = task.encode(TEXTS)
    with torch.no_grad():
        assert torch.allclose(again_task.logits(again, batch), task.logits(model, batch), atol=1e-6)


def test_auto_follows_sentence_transformers(tiny_bert, tmp_path):
    mean, cls = (sentence_transformers_folder(tiny_bert, tmp_path, m) for m in ("mean", "cls"))
    assert sentence_transformers_pooling(mean) == "mean" and sentence_transformers_pooling(cls) == "cls"
    assert sentence_transformers_pooling(tiny_bert) is None
    assert load_classifier(mean, NAMES, pooling="auto")[1].pooling == "mean"
    assert load_classifier(mean, NAMES)[1].pooling == "cls"  # loading without auto: the model's own head input
    assert load_classifier(cls, NAMES, pooling="auto")[1].pooling == "cls"
    assert load_classifier(tiny_bert, NAMES, pooling="auto")[1].pooling == "cls"
    with pytest.raises(DatablameError, match="unknown pooling 'max'"):
        resolve_pooling(tiny_bert, None, "max")


def test_mean_refused_for_a_head_that_is_not_one_linear_layer():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    model = RobertaForSequenceClassification(RobertaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                                           num_attention_heads=2, intermediate_size=20,
                                                           num_labels=3))
    with pytest.raises(DatablameError, match="use --pooling cls"):
        apply_pooling(model, "classifier.out_proj", "mean")


def test_frozen_training_reads_mean_pooled_features(tiny_bert, tiny_examples, tmp_path):
    from datablame.influence.train import TrainSettings, train
    from datablame.influence.workdir import Workdir

    st = sentence_transformers_folder(tiny_bert, tmp_path, "mean")
    wd = Workdir(tmp_path / "wd")
    config = train(tiny_examples, str(st), wd.root, TrainSettings(epochs=2, lr=1e-2, batch_size=16, checkpoints=2,
                                                                 freeze_encoder=True, device="cpu"))
    last = wd.checkpoint_path(config.checkpoints[-1])
    assert json.loads((last / "config.json").read_text())[CONFIG_KEY] == "mean"
    (cached,) = list(wd.features_cache.glob("*.npy"))
    model, task = load_classifier(last, config.label_names)
    with torch.no_grad():
        _, features = task.logits_and_features(model, task.encode(list(tiny_examples.texts[:5])))
    assert np.allclose(np.load(cached)[:5], features.numpy(), atol=1e-5)
