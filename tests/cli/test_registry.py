"""Methods are registered parts: a method defined here, in a test, is built, indexed, explained and listed with no
change to the shared code; explain without --method takes the default when indexed, else the indexed one."""

import shutil

import numpy as np
import pytest
import torch

from datablame.index.explain import Explainer, default_method, index_workdir
from datablame.influence import registry
from datablame.influence.build import MethodSettings, build_method
from datablame.influence.errors import DatablameError
from datablame.influence.methods import Queries
from datablame.influence.task import predict
from test_cli import datablame


class SameLabel:
    """A toy method: v_i = onehot(y_i), u_q = onehot(ŷ_q): a training example supports a prediction iff it has
    the predicted label."""

    name = "same-label"

    def __init__(self, task, model, num_labels):
        self.task, self.model, self.dim = task, model, num_labels

    def train_vectors(self, batch):
        return torch.nn.functional.one_hot(torch.as_tensor(batch.labels), self.dim).float()

    def query_vectors(self, texts):
        p = predict(self.task, self.model, self.task.encode(texts))
        return Queries(torch.nn.functional.one_hot(p.labels, self.dim).float(), p.labels, p.probabilities)

    def self_influence(self, vectors, labels):
        return vectors.pow(2).sum(1)

    def describe(self):
        return {"method": self.name}


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register(registry.MethodSpec(
        "same-label", "examples with the predicted label", "last",
        lambda ctx: SameLabel(ctx.task, ctx.model, len(ctx.config.label_names)), lambda _: "one forward pass"))


def test_a_method_registered_elsewhere_runs_end_to_end(toy_registered, trained_workdir, tmp_path):
    wd = shutil.copytree(trained_workdir, tmp_path / "wd")
    assert registry.method_names()[-1] == "same-label"
    built = build_method(wd, "same-label", MethodSettings(device="cpu"))
    assert built.key["method"] == "same-label" and len(built.key["checkpoints"]) == 1
    index_workdir(wd, "same-label", MethodSettings(device="cpu"), scorings=("raw",))
    [result] = Explainer(wd, "same-label", "raw", device="cpu").explain(["goal team the very"], top=5)
    assert {n.label for n in result.supporting} == {result.prediction["label"]}
    assert all(n.label != result.prediction["label"] for n in result.opposing)
    assert result.timing["cost"] == "one forward pass"
    stored = np.load(wd / "vectors" / "same-label" / "self_influence.npy")
    assert np.allclose(stored, 1.0)


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(DatablameError, match="unknown method 'datamodels'") as info:
        registry.method_spec("datamodels")
    assert "tracin, influence, representer" in info.value.hint


def test_explain_without_method_uses_the_indexed_one(trained_workdir, tmp_path):
    wd = shutil.copytree(trained_workdir, tmp_path / "wd", ignore=shutil.ignore_patterns("index", "vectors"))
    assert default_method(wd, "cosine") == ("influence", "")  # nothing indexed: the default names its error
    index_workdir(wd, "tracin", MethodSettings(params=["head"], device="cpu"), scorings=("cosine",))
    assert default_method(wd, "cosine") == ("tracin", "influence is not indexed")
    r = datablame("explain", wd, "goal team the very", "--top", "2", "--json", "--no-plot")
    assert r.returncode == 0, r.stderr
    assert "explaining with tracin (influence is not indexed)" in r.stderr and '"method": "tracin"' in r.stdout


def test_explain_shows_both_questions_when_both_scorings_are_indexed(trained_workdir, tmp_path):
    wd = shutil.copytree(trained_workdir, tmp_path / "wd", ignore=shutil.ignore_patterns("index", "vectors"))
    index_workdir(wd, "tracin", MethodSettings(params=["head"], device="cpu"))  # cosine and raw
    r = datablame("explain", wd, "goal team the very", "--method", "tracin", "--top", "2", "--no-plot")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("prediction:") == 1
    assert "supporting (tracin, cosine)" in r.stdout and "supporting (tracin, raw)" in r.stdout
    assert "similar effect" in r.stdout and "counterfactual" in r.stdout
