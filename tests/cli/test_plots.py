"""PNG plots (written atomically, with real content) and the shipped demo dataset."""

from __future__ import annotations

import csv

import matplotlib.image
import numpy as np
import pytest

from datablame.store import plots
from datablame.cli.demo import demo_dataset_path, demo_queries, injected_errors
from datablame.influence.data import load_examples

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_real_png(path, min_kb: float = 8.0) -> np.ndarray:
    """A PNG with a proper signature, a few KB at least, and pixels that are far from one flat colour."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_kb * 1024
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert float(image[..., :3].var()) > 0.005  # text, bars and lines on white, not a blank canvas
    assert float((image[..., :3] < 0.5).mean()) > 0.005  # some dark ink (axes, labels)
    return image


def only(folder, name):
    assert sorted(p.name for p in folder.iterdir()) == [name]  # no temp file left behind


# ------------------------------------------------------------------------------------------- recall

RANKING = np.array([True, False, True, True, False, False, False, False, False, True])  # n = 10, 4 errors


def test_recall_at_fraction_by_hand():
    got = plots.recall_at_fraction(RANKING, [0.0, 0.1, 0.2, 0.25, 0.3, 0.35, 0.5, 0.9, 1.0])
    # inspect the first floor(f·n) examples: 0, 1, 2, 2, 3, 3, 5, 9, 10 -> errors found 0, 1, 1, 1, 2, 2, 3, 3, 4
    # (0.25 tells floor from ceil, 0.35 floor from round)
    np.testing.assert_array_equal(got, np.array([0, 1, 1, 1, 2, 2, 3, 3, 4]) / 4)
    assert got.dtype == np.float64 and got.shape == (9,)


def test_recall_at_fraction_floating_point_fractions():
    ranking = np.zeros(100, dtype=bool)
    ranking[28] = True  # the 29th most suspicious: found after inspecting 29 examples, not 28
    assert plots.recall_at_fraction(ranking, [0.29])[0] == 1.0  # 0.29 * 100 == 28.999999999999996
    assert plots.recall_at_fraction(ranking, [0.28])[0] == 0.0


def test_recall_at_fraction_rejects_undefined_and_out_of_range():
    with pytest.raises(ValueError, match="no true errors"):
        plots.recall_at_fraction(np.zeros(5, dtype=bool), [0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plots.recall_at_fraction(RANKING, [1.5])


def test_truncated_bar_labels():
    assert plots.bar_label(12, "short text") == "#12  short text"
    label = plots.bar_label(7, "word " * 40, width=20)
    assert label.startswith("#7  word word") and label.endswith("…") and len(label) == len("#7  ") + 20
    assert plots.truncate("line one\nline two", 60) == "line one line two"


# ------------------------------------------------------------------------------------------- plots


def test_suspicion_histogram(tmp_path):
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.gamma(2.0, 1.0, 300), rng.gamma(6.0, 1.5, 30)])
    labels = rng.choice(["billing", "shipping", "technical", "account"], size=scores.size)
    out = plots.suspicion_histogram(scores, list(labels), threshold=8.0, path=tmp_path / "hist.png")
    assert out == tmp_path / "hist.png"
    assert_real_png(out)
    only(tmp_path, "hist.png")


def test_suspicion_histogram_integer_labels_nonfinite_and_mismatch(tmp_path):
    scores = np.array([0.1, 0.5, np.nan, 2.0, 3.0, np.inf, 0.2, 0.3])
    out = plots.suspicion_histogram(scores, np.array([0, 1, 2, 0, 1, 2, 0, 1]), 1.0, tmp_path / "h.png")
    assert_real_png(out, min_kb=5)
    with pytest.raises(ValueError, match="labels"):
        plots.suspicion_histogram(scores, ["a", "b"], 1.0, tmp_path / "bad.png")
    only(tmp_path, "h.png")


def test_explain_bars(tmp_path):
    supporting = [(plots.bar_label(i, f"I was charged twice for order {i}, please refund the second payment soon"),
                   3.0 / (i + 1)) for i in range(6)]
    opposing = [(plots.bar_label(100 + i, f"My parcel {i} never arrived"), -1.5 / (i + 1)) for i in range(4)]
    out = plots.explain_bars(supporting, opposing, "Why 'billing' for: charged twice?", tmp_path / "bars.png")
    image = assert_real_png(out)
    # both colours are on the canvas
    for hex_colour in (plots.SUPPORT_COLOUR, plots.OPPOSE_COLOUR):
        rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255
        assert (np.abs(image[..., :3] - rgb).max(axis=-1) < 0.02).sum() > 200, hex_colour
    only(tmp_path, "bars.png")


def test_explain_bars_one_sided_and_empty(tmp_path):
    assert_real_png(plots.explain_bars([("#1  a", 1.0)], [], "only support", tmp_path / "a.png"), min_kb=4)
    assert_real_png(plots.explain_bars([], [], "nothing", tmp_path / "b.png"), min_kb=4)


def test_detection_curve(tmp_path):
    rng = np.random.default_rng(1)
    truth = np.zeros(400, dtype=bool)
    truth[rng.choice(400, 32, replace=False)] = True
    good = np.sort(truth)[::-1].copy()
    good[[0, 40]] = good[[40, 0]]  # nearly the oracle
    out = plots.detection_curve(good, tmp_path / "curve.png", label="tracin",
                                extra_curves={"loss": rng.permutation(truth)})
    assert_real_png(out)
    only(tmp_path, "curve.png")
    with pytest.raises(ValueError, match="errors"):
        plots.detection_curve(good, tmp_path / "x.png", extra_curves={"other": np.zeros(400, dtype=bool)})
    with pytest.raises(ValueError, match="no true errors"):
        plots.detection_curve(np.zeros(10, dtype=bool), tmp_path / "y.png")
    only(tmp_path, "curve.png")


def test_atomic_replace_and_cleanup_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "curve.png"
    plots.detection_curve(RANKING, target)  # creates the parent folder
    before = target.read_bytes()
    plots.detection_curve(RANKING[::-1].copy(), target, title="another")  # overwrites in place
    after = target.read_bytes()
    assert after != before and after[:8] == PNG_SIGNATURE
    only(target.parent, "curve.png")
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert target.stat().st_mode == plain.stat().st_mode  # the umask's permissions, not a temp file's 0600
    plain.unlink()

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(plots.Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plots.detection_curve(RANKING, target)
    assert target.read_bytes() == after  # the old plot is intact
    only(target.parent, "curve.png")


def test_no_figures_left_open(tmp_path):
    import matplotlib.pyplot as plt

    open_before = plt.get_fignums()
    for i in range(3):
        plots.detection_curve(RANKING, tmp_path / f"{i}.png")
        plots.explain_bars([("#1  a", 1.0)], [("#2  b", -1.0)], "t", tmp_path / f"b{i}.png")
    assert plt.get_fignums() == open_before


# ------------------------------------------------------------------------------------------- demo data


def test_demo_dataset():
    path = demo_dataset_path()
    examples = load_examples(path, "text", "label")
    assert 300 <= len(examples) <= 450
    assert examples.num_labels >= 3
    assert len(set(examples.texts)) == len(examples)  # no duplicated text
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["id"]) for r in rows] == list(range(len(rows)))  # the id column is the row, as everywhere
    assert [r["text"] for r in rows] == examples.texts
    assert {r["true_label"] for r in rows} == set(examples.label_names)
    counts = np.unique([r["true_label"] for r in rows], return_counts=True)[1]
    assert counts.max() <= 1.25 * counts.min()  # roughly balanced
    lengths = [len(r["text"].split()) for r in rows]
    assert min(lengths) >= 5 and max(lengths) <= 30
    errors = injected_errors()
    assert errors == {i for i, r in enumerate(rows) if r["label"] != r["true_label"]}
    assert 0.05 <= len(errors) / len(rows) <= 0.12
    # the labels a model sees are the noisy ones
    noisy = np.array([examples.label_names.index(r["label"]) for r in rows])
    np.testing.assert_array_equal(examples.labels, noisy)


def test_demo_queries_are_new():
    queries = demo_queries()
    assert 2 <= len(queries) <= 4 and all(q.strip() == q and q for q in queries)
    texts = {t.strip().lower() for t in load_examples(demo_dataset_path(), "text", "label").texts}
    assert not any(q.lower() in texts for q in queries)
