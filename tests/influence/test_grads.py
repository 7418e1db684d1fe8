"""Batched per-example gradients (vmap) against one-at-a-time backward passes."""

import pytest
import torch
from torch import nn

from datablame.influence.errors import DatablameError
from datablame.influence.gradients import HeadGradients
from datablame.influence.grads import per_example_grads, select_params
from datablame.influence.task import ModuleTask

from brute import loop_grads


@pytest.mark.parametrize("params", [None, ["last-layer"], ["classifier.*"], ["classifier.bias"]])
def test_vmap_grads_equal_loop(trained, tiny_examples, params):
    """Whole-model vmap, and the head-only path (features once, vmap over the head) for classifier.*."""
    models, _, task = trained
    model = models[-1]
    names = select_params(model, task, params)
    ex = tiny_examples.subset(range(6))
    batched = per_example_grads(task, model, task.encode(ex.texts), torch.as_tensor(ex.labels), names)
    ref = loop_grads(task, model, ex.texts, ex.labels, names)
    assert batched.shape == ref.shape
    assert torch.allclose(batched, ref, atol=1e-6, rtol=1e-4), (batched - ref).abs().max()
    assert ref.norm() > 0


def test_param_shortcuts(trained):
    models, _, task = trained
    model = models[-1]
    head = select_params(model, task, ["head"])
    assert head == ["classifier.weight", "classifier.bias"]
    last = select_params(model, task, ["last-layer"])
    assert set(head) < set(last)
    assert all(".layer.1." in n or n.startswith("classifier.") for n in last)
    assert not any(".layer.0." in n for n in last)
    assert select_params(model, task, None) == [n for n, _ in model.named_parameters()]
    with pytest.raises(DatablameError, match="matches no parameter"):
        select_params(model, task, ["nothing.*"])


class BagOfWords(nn.Module):
    def __init__(self, vocab: int = 20, hidden: int = 8, classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.hidden = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, classes)

    def forward(self, ids):
        return self.out(torch.tanh(self.hidden(self.embed(ids).mean(1))))


def test_plain_module_through_task():
    torch.manual_seed(0)
    model = BagOfWords()
    task = ModuleTask(lambda texts: {"ids": torch.tensor([[hash(w) % 20 for w in t.split()[:4]] for t in texts])},
                      head_name="out")
    texts = ["a b c d", "e f g h", "a c e g", "b d f h"]
    labels = torch.tensor([0, 1, 2, 1])
    names = select_params(model, task, None)
    batched = per_example_grads(task, model, task.encode(texts), labels, names)
    ref = loop_grads(task, model, texts, labels.tolist(), names)
    assert torch.allclose(batched, ref, atol=1e-6, rtol=1e-4)
    logits, feats = task.logits_and_features(model, task.encode(texts))
    assert feats.shape == (4, 8) and torch.allclose(model.out(feats), logits)


@pytest.mark.parametrize("params", [["head"], ["classifier.weight"], ["classifier.bias"]])
def test_closed_form_head_grads_equal_loop(trained, tiny_examples, params):
    """A linear softmax head's cross-entropy gradients in closed form ((p − e_y) ⊗ [x, 1]) are the backward
    passes' (and differentiating with ``vmap`` still serves another objective)."""
    models, _, task = trained
    model = models[-1]
    names = select_params(model, task, params)
    ex = tiny_examples.subset(range(6))
    computer = HeadGradients(task, [model], names)
    got = computer.train_grads(model, ex)
    ref = loop_grads(task, model, ex.texts, ex.labels, names)
    assert got.shape == ref.shape and ref.norm() > 0
    assert torch.allclose(got, ref, atol=1e-6, rtol=1e-4), (got - ref).abs().max()
    labels = torch.as_tensor(ex.labels)
    halved = computer.grads(model, computer.train_inputs(model, ex), labels, lambda z, y: task.loss(z, y) / 2)
    assert torch.allclose(halved, ref / 2, atol=1e-6, rtol=1e-4)
