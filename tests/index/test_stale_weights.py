"""Checkpoints are identified by their weights, not their path: retraining into the same workdir, or new weights
saved into the same Trainer folder, never lets an index, the vectors, the query cache or scan's self-influence
answer from the old model."""

import json
import shutil

import numpy as np
import pytest

from datablame.index.explain import Explainer, index_workdir
from datablame.index.vectors import VectorStore
from datablame.influence.build import MethodSettings
from datablame.influence.errors import DatablameError
from datablame.influence.train import TrainSettings, init_workdir, train
from datablame.influence.workdir import Workdir, trainer_checkpoints, weights_digest

HEAD = MethodSettings(params=["head"], device="cpu")
FAST = dict(epochs=2, lr=5e-3, batch_size=16, checkpoints=2, device="cpu")


def test_retraining_in_place_refuses_the_old_index_and_recomputes_vectors(tiny_bert, tiny_examples, tmp_path):
    wd = tmp_path / "wd"
    train(tiny_examples, str(tiny_bert), wd, TrainSettings(seed=0, **FAST))
    index_workdir(wd, "tracin", HEAD)
    old_vectors = VectorStore(wd / "vectors" / "tracin").load()
    Explainer(wd, "tracin", device="cpu").explain(["goal team"], top=3)  # fills the query cache
    shutil.copytree(wd / "index", tmp_path / "old-index")
    train(tiny_examples, str(tiny_bert), wd, TrainSettings(seed=1, **FAST))  # same paths, lrs and steps
    assert not (wd / "vectors").exists() and not (wd / "index").exists() and not (wd / "cache" / "queries").exists()
    shutil.copytree(tmp_path / "old-index", wd / "index")  # the old index put back, e.g. from a backup
    with pytest.raises(DatablameError, match="stale.*datablame index"):
        Explainer(wd, "tracin", device="cpu")
    shutil.rmtree(wd / "index")
    index_workdir(wd, "tracin", HEAD)
    assert not np.allclose(VectorStore(wd / "vectors" / "tracin").load(), old_vectors)


def test_new_weights_in_a_recorded_folder_are_refused_until_recorded_again(trained_workdir, tiny_bert,
                                                                          tiny_examples, tmp_path):
    run = tmp_path / "trainer-out"
    shutil.copytree(trained_workdir / "checkpoints" / "ck-001", run / "checkpoint-10")
    shutil.copytree(trained_workdir / "checkpoints" / "ck-002", run / "checkpoint-20")
    (run / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 10, "learning_rate": 1e-3},
                                                                        {"step": 20, "learning_rate": 5e-4}]}))
    wd = tmp_path / "wd"
    init_workdir(wd, tiny_examples, [run])
    assert all(len(c.digest) == 64 for c in Workdir(wd).load().checkpoints)
    index_workdir(wd, "tracin", HEAD)
    Explainer(wd, "tracin", device="cpu").explain(["goal team"], top=3)
    # the Trainer runs again into the same folder: other weights at the same paths
    for name in ("model.safetensors",):
        shutil.copy(trained_workdir / "checkpoints" / "ck-000" / name, run / "checkpoint-20" / name)
    with pytest.raises(DatablameError, match="weights of checkpoint .*checkpoint-20 changed"):
        Explainer(wd, "tracin", device="cpu")
    with pytest.raises(DatablameError, match="changed since the workdir recorded them"):
        index_workdir(wd, "tracin", HEAD)
    init_workdir(wd, tiny_examples, [run])  # recorded again: the old index is now stale, with its rebuild command
    with pytest.raises(DatablameError, match="stale.*datablame index"):
        Explainer(wd, "tracin", device="cpu")
    index_workdir(wd, "tracin", HEAD)
    Explainer(wd, "tracin", device="cpu").explain(["goal team"], top=3)


def test_scan_self_influence_follows_the_weights(tiny_bert, tiny_examples, tmp_path):
    from datablame.store.db import default_url, open_db
    from datablame.store.scanning import scan_workdir

    wd = tmp_path / "wd"
    train(tiny_examples, str(tiny_bert), wd, TrainSettings(seed=0, **FAST))
    db = open_db(default_url(wd))
    first = scan_workdir(wd, "tracin", db=db, device="cpu").issues.score.copy()
    shutil.copytree(wd / "vectors", tmp_path / "old-vectors")
    train(tiny_examples, str(tiny_bert), wd, TrainSettings(seed=1, **FAST))
    shutil.copytree(tmp_path / "old-vectors", wd / "vectors")  # the old model's self-influence, back in place
    second = scan_workdir(wd, "tracin", db=db, device="cpu").issues.score
    recomputed = VectorStore(wd / "vectors" / "tracin").manifest().key["checkpoints"]
    assert recomputed == [c.__dict__ for c in Workdir(wd).load().checkpoints]
    assert not np.allclose(first, second)
    db.close()


def test_digest_sees_bytes_not_paths(trained_workdir, tmp_path):
    folder = shutil.copytree(trained_workdir / "checkpoints" / "ck-000", tmp_path / "ck")
    cache = tmp_path / "digests.json"
    before = weights_digest(folder, cache)
    assert weights_digest(folder, cache) == before == weights_digest(folder)
    (folder / "optimizer.pt").write_bytes(b"not weights")
    assert weights_digest(folder, cache) == before
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert weights_digest(folder, cache) != before


def test_training_into_a_folder_that_is_not_a_workdir_is_refused(tiny_bert, tiny_examples, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(DatablameError, match="not a datablame workdir"):
        train(tiny_examples, str(tiny_bert), tmp_path / "mine", TrainSettings(**FAST))
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.tex"]


@pytest.mark.parametrize("state", ['{"log_history": [{"step": 1, "learning_rate"', '{"log_history": 3}', "\xff"])
def test_a_malformed_trainer_state_is_one_line(tmp_path, state):
    (tmp_path / "checkpoint-1").mkdir()
    (tmp_path / "trainer_state.json").write_bytes(state.encode("latin-1"))
    with pytest.raises(DatablameError, match="truncated or malformed") as info:
        trainer_checkpoints(tmp_path)
    assert "\n" not in str(info.value) and "--lr" in info.value.hint


def test_a_bad_base_model_leaves_the_workdir_as_it_was(trained_workdir, tiny_examples, tmp_path):
    wd = shutil.copytree(trained_workdir, tmp_path / "wd")
    before = sorted(p.relative_to(wd) for p in wd.rglob("*"))
    with pytest.raises(DatablameError, match="model folder .* not found"):
        train(tiny_examples, str(tmp_path / "no-such-model"), wd, TrainSettings(**FAST))
    assert sorted(p.relative_to(wd) for p in wd.rglob("*")) == before


def test_a_refused_init_writes_nothing(trained_workdir, tiny_examples, tmp_path):
    from conftest import build_tiny_bert

    four = build_tiny_bert(tmp_path / "four", num_labels=4)
    with pytest.raises(DatablameError, match="predicts 4 classes"):
        init_workdir(tmp_path / "wd", tiny_examples, [trained_workdir / "checkpoints" / "ck-000", four])
    assert not (tmp_path / "wd").exists()
