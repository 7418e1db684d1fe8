"""Stability of an explanation's supporters: per-checkpoint top lists from the blocks of the stored vectors (checked
against the method's own per-checkpoint query vectors), overlap with the other scoring, Jaccard."""

import numpy as np
import pytest

from datablame.index.explain import Explainer
from datablame.index.stability import checkpoint_tops, jaccard, stability, top_ids
from datablame.index.vectors import VectorStore
from datablame.influence.workdir import Workdir

TEXT = "goal team the very"


def test_jaccard_and_top_ids():
    assert jaccard([1, 2, 3], [2, 3, 4]) == 0.5 and jaccard([], []) == 1.0
    assert top_ids(np.array([0.1, 3.0, -2.0, 2.0]), 2) == [1, 3]


def test_checkpoint_tops_are_the_blocks(frozen_workdir):
    explainer = Explainer(frozen_workdir, "tracin", "raw", cache=False)
    query = explainer.queries([TEXT])[0].vectors[0].numpy()
    vectors = VectorStore(Workdir(frozen_workdir).vectors_dir("tracin")).load()
    checkpoints = len(Workdir(frozen_workdir).load().checkpoints)
    tops = checkpoint_tops(explainer, query, 5)
    assert len(tops) == checkpoints == 2
    width = vectors.shape[1] // checkpoints
    blocks = [vectors[:, c * width:(c + 1) * width] @ query[c * width:(c + 1) * width] for c in range(2)]
    assert tops == [list(np.argsort(-b, kind="stable")[:5]) for b in blocks]
    np.testing.assert_allclose(sum(blocks), vectors @ query, rtol=1e-4, atol=1e-9)  # the blocks sum to the score


def test_stability_report(frozen_workdir):
    cosine = Explainer(frozen_workdir, "tracin", "cosine", cache=False)
    raw = cosine.with_scoring("raw")
    s = stability(cosine, raw, TEXT, k=4)
    [explanation] = cosine.explain([TEXT], top=4)
    assert s["supporting"] == [n.id for n in explanation.supporting] and s["other_scoring"] == "raw"
    raw_top = [n.id for n in raw.explain([TEXT], top=4)[0].supporting]
    assert s["overlap"]["scorings"] == pytest.approx(jaccard(s["supporting"], raw_top), abs=1e-4)
    assert [e["other_scoring"] for e in s["examples"]] == [i in raw_top for i in s["supporting"]]
    assert all(0 <= e["checkpoints"] <= e["of"] == 2 for e in s["examples"])
    assert "seed does not enter" in s["seed"]
    alone = stability(cosine, None, TEXT, k=4)
    assert alone["overlap"]["scorings"] is None and alone["examples"][0]["other_scoring"] is None


@pytest.fixture(scope="module")
def sketched(frozen_workdir, tmp_path_factory):
    """A copy of the frozen workdir with TracIn sketched to 16 dimensions per checkpoint (CountSketch)."""
    import shutil

    from datablame.index.explain import index_workdir
    from datablame.influence.build import MethodSettings

    wd = shutil.copytree(frozen_workdir, tmp_path_factory.mktemp("sketched") / "wd")
    index_workdir(wd, "tracin", MethodSettings(params=["head"], dim=16, device="cpu"), ("cosine",))
    return wd


def test_a_second_projection_seed(sketched):
    from datablame.index.stability import seed_top

    explainer = Explainer(sketched, "tracin", "cosine", cache=False)
    supporting = [n.id for n in explainer.explain([TEXT], top=4)[0].supporting]
    # recomputed in memory under the index's own seed, the list is the index's: the check compares like with like
    assert seed_top(explainer, TEXT, 4, explainer.settings.seed) == supporting
    s = stability(explainer, None, TEXT, k=4)
    other = seed_top(explainer, TEXT, 4, explainer.settings.seed + 1)
    assert s["overlap"]["seeds"] == pytest.approx(jaccard(supporting, other), abs=1e-4)
    assert [e["other_seed"] for e in s["examples"]] == [i in other for i in supporting]
    assert "countsketch seed 0 against seed 1" in s["seed"]
