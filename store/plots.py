"""PNG plots: suspicion scores, one explanation's bars, label-error detection curves, and the workdir's plots
(``WORKDIR/plots/``) of an explanation or a scan, for the commands, notebooks and benchmarks alike.

Every figure is drawn on its own ``matplotlib.figure.Figure`` on an Agg canvas: no display, no pyplot, nothing
kept in pyplot's registry of open figures, and the process-wide backend left as it is (so importing this module
from a notebook changes nothing). Figures are written atomically: to a temporary file in the target's folder, then
``os.replace``d over the target, so a reader never sees a half-written PNG. Each function returns the path.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from datablame.influence.atomic import atomic_path
from datablame.influence.workdir import Workdir

if TYPE_CHECKING:
    from datablame.index.explain import Explanation, Tally

    from .scanning import ScanResult

DPI = 120
SUPPORT_COLOUR = "#2b7bba"
OPPOSE_COLOUR = "#d7463c"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def _save(fig: Figure, path: str | os.PathLike, dpi: int) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically."""
    target = Path(path)
    try:
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            fig.savefig(fh, format="png", dpi=dpi)
    finally:
        fig.clear()
    return target


def truncate(text: str, width: int = 60) -> str:
    """``text`` on one line, cut to at most ``width`` characters with an ellipsis."""
    one_line = " ".join(str(text).split())
    return one_line if len(one_line) <= width else one_line[: max(width - 1, 0)].rstrip() + "…"


def bar_label(example_id: int, text: str, width: int = 60) -> str:
    """The label of one training example in :func:`explain_bars`: ``"#12  I was charged twice…"``."""
    return f"#{int(example_id)}  {truncate(text, width)}"


def recall_at_fraction(ranking_is_error: np.ndarray, fractions: Sequence[float] | np.ndarray) -> np.ndarray:
    """Recall of the true errors after inspecting a fraction of a ranking, most suspicious first.

    ranking_is_error: (n,) bool, element j True when the j-th most suspicious example is a true label error.
    fractions: (m,) in [0, 1]; inspecting fraction f means looking at the first ⌊f·n⌋ examples.
    Returns (m,) float64: the share of all true errors among those inspected (0 at f = 0, 1 at f = 1).
    Raises ValueError when the ranking is empty or holds no error (recall is undefined), or a fraction is
    outside [0, 1].
    """
    r = np.asarray(ranking_is_error, dtype=bool).reshape(-1)
    f = np.asarray(fractions, dtype=np.float64)
    n, total = r.size, int(r.sum())
    if n == 0 or total == 0:
        raise ValueError("the ranking holds no true errors: recall is undefined")
    if np.any(~np.isfinite(f)) or np.any(f < 0) or np.any(f > 1):
        raise ValueError("fractions must lie in [0, 1]")
    found = np.concatenate([[0], np.cumsum(r)])  # found[k] = errors among the first k
    k = np.floor(f * n + 1e-9).astype(np.int64)  # the epsilon keeps 0.29 * 100 at 29, not 28
    return found[np.clip(k, 0, n)] / total


def suspicion_histogram(
    scores: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    threshold: float,
    path: str | os.PathLike,
    *,
    title: str = "Suspicion scores by class",
    xlabel: str = "suspicion score (higher = more likely mislabelled)",
    bins: int = 40,
    log_y: bool = False,
    max_panels: int = 8,
    dpi: int = DPI,
) -> Path:
    """Histogram of the suspicion scores of each class, on shared bins, with the flag threshold.

    scores: (n,) float, one suspicion score per training example (unitless; e.g. self-influence); non-finite
    scores are left out (and counted in the title). labels: (n,) the given class of each example (names or
    integer ids). threshold: examples with score ≥ threshold are flagged; drawn as a labelled vertical line.
    Up to ``max_panels`` classes get one panel each (small multiples sharing the x axis); more classes are
    overlaid as outlines in one panel. Writes a PNG at ``path`` (parents created) and returns its path.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1).astype(str)
    if s.size == 0:
        raise ValueError("no scores to plot")
    if lab.size != s.size:
        raise ValueError(f"{s.size} scores but {lab.size} labels")
    finite = np.isfinite(s)
    lo, hi = (float(s[finite].min()), float(s[finite].max())) if finite.any() else (0.0, 1.0)
    if math.isfinite(threshold):
        lo, hi = min(lo, float(threshold)), max(hi, float(threshold))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    classes = sorted(set(lab.tolist()), key=lambda c: (0, int(c), "") if c.isdigit() else (1, 0, c))
    colours = matplotlib.colormaps["tab10"].colors
    flagged = finite & (s >= threshold)
    panels = len(classes) <= max_panels

    fig = _figure(8, 1.2 + 1.25 * len(classes) if panels else 4.8)
    axes = fig.subplots(len(classes) if panels else 1, 1, sharex=True, squeeze=False)[:, 0]
    for i, name in enumerate(classes):
        ax = axes[i] if panels else axes[0]
        in_class = (lab == name) & finite
        colour = colours[i % len(colours)]
        text = f"{name}: n={int((lab == name).sum())}, {int((flagged & (lab == name)).sum())} flagged"
        if panels:
            ax.hist(s[in_class], bins=edges, color=colour, alpha=0.75)
            ax.text(0.995, 0.93, text, transform=ax.transAxes, ha="right", va="top", fontsize=9)
            ax.set_ylabel("examples", fontsize=8)
        else:
            ax.hist(s[in_class], bins=edges, histtype="step", linewidth=1.5, color=colour, label=text)
    for ax in axes:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.3)
        ax.grid(alpha=0.3)
        if log_y:
            ax.set_yscale("log")
    total = int(flagged.sum())
    axes[0].text(threshold, 1.0, f" flag threshold {threshold:.3g}: {total} flagged ({total / s.size:.1%})",
                 transform=axes[0].get_xaxis_transform(), ha="left" if threshold < (lo + hi) / 2 else "right",
                 va="bottom", fontsize=9)
    if not panels:
        axes[0].set_ylabel("training examples")
        axes[0].legend(title="given label", fontsize=8)
    axes[-1].set_xlabel(xlabel)
    missing = int((~finite).sum())
    fig.suptitle(title + (f" ({missing} non-finite left out)" if missing else ""))
    fig.tight_layout()
    return _save(fig, path, dpi)


def explain_bars(
    supporting: Sequence[tuple[str, float]],
    opposing: Sequence[tuple[str, float]],
    title: str,
    path: str | os.PathLike,
    *,
    xlabel: str = "score (> 0 supports the prediction, < 0 opposes it)",
    label_width: int = 60,
    dpi: int = DPI,
) -> Path:
    """Horizontal bars of the training examples that most support and most oppose one prediction.

    supporting: (label, score) pairs, score > 0, most supporting first; opposing: (label, score) pairs, score < 0,
    most opposing first. Labels are shown cut to ``label_width`` characters (build them with :func:`bar_label`:
    id and text). Supporting bars are drawn on top in one colour, opposing bars below in another; scores are
    plotted as given (unitless inner products ``<v_i, u_q>``). Writes a PNG at ``path`` and returns its path.
    """
    rows = [(truncate(t, label_width), float(v), SUPPORT_COLOUR) for t, v in supporting]
    rows += [(truncate(t, label_width), float(v), OPPOSE_COLOUR) for t, v in opposing]
    fig = _figure(9, 1.4 + 0.34 * max(len(rows), 2))
    ax = fig.add_subplot()
    if rows:
        y = np.arange(len(rows))[::-1]  # first row on top
        ax.barh(y, [v for _, v, _ in rows], color=[c for _, _, c in rows], height=0.7)
        ax.set_yticks(y, [t for t, _, _ in rows], fontsize=8)
        if supporting and opposing:
            ax.axhline(y[len(supporting) - 1] - 0.5, color="grey", linewidth=0.8, linestyle=":")
    else:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no training examples to show", transform=ax.transAxes, ha="center", va="center")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.legend(handles=[Patch(color=SUPPORT_COLOUR, label=f"supporting ({len(supporting)})"),
                       Patch(color=OPPOSE_COLOUR, label=f"opposing ({len(opposing)})")],
              fontsize=8, loc="best")
    ax.set_xlabel(xlabel)
    fig.suptitle("\n".join(textwrap.wrap(truncate(title, 180), 90)))  # over the whole width, two lines at most
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _curve(ranking_is_error: np.ndarray, max_points: int = 2001) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(ranking_is_error).size
    k = np.unique(np.linspace(0, n, min(n + 1, max_points)).round().astype(np.int64))
    x = k / n
    return x, recall_at_fraction(ranking_is_error, x)


def detection_curve(
    ranking_is_error: np.ndarray,
    path: str | os.PathLike,
    label: str = "datablame",
    extra_curves: Mapping[str, np.ndarray] | None = None,
    *,
    title: str = "Finding label errors",
    at: float = 0.1,
    dpi: int = DPI,
) -> Path:
    """Recall of the true label errors against the fraction of the data inspected, most suspicious first.

    ranking_is_error: (n,) bool, True where the j-th most suspicious example is a true error. extra_curves:
    name -> (n,) bool ranking of the same examples by another method (same n, same number of errors). Also
    drawn: the random baseline (the diagonal, recall = fraction) and the oracle (every error first). Legend
    entries give each ranking's recall at fraction ``at`` (by :func:`recall_at_fraction`). Both axes in [0, 1].
    Writes a PNG at ``path`` and returns its path; raises ValueError when there is no true error.
    """
    main = np.asarray(ranking_is_error, dtype=bool).reshape(-1)
    curves = {label: main}
    for name, ranking in (extra_curves or {}).items():
        r = np.asarray(ranking, dtype=bool).reshape(-1)
        if r.size != main.size or int(r.sum()) != int(main.sum()):
            raise ValueError(f"curve {name!r} ranks {r.size} examples with {int(r.sum())} errors; "
                             f"{label!r} ranks {main.size} with {int(main.sum())}")
        curves[name] = r
    n, total = main.size, int(main.sum())
    if total == 0:
        raise ValueError("the ranking holds no true errors: recall is undefined")

    fig = _figure(6.4, 5.6)
    ax = fig.add_subplot()
    colours = matplotlib.colormaps["tab10"].colors
    for i, (name, r) in enumerate(curves.items()):
        x, y = _curve(r)
        at_value = float(recall_at_fraction(r, [at])[0])
        ax.plot(x, y, color=colours[i % len(colours)], linewidth=2.2 if i == 0 else 1.6,
                linestyle=("-", "--", "-.")[i // len(colours) % 3],  # past ten curves, colours repeat dashed
                label=f"{name} (recall@{at:.0%} = {at_value:.2f})")
    ax.plot([0, total / n, 1], [0, 1, 1], color="grey", linestyle=":", linewidth=1.4,
            label=f"oracle ({total} errors in {n})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1.2, label="random")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("fraction of training data inspected (most suspicious first)")
    ax.set_ylabel("recall of true label errors")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, dpi)


def explanation_plot(workdir: Path, result: "Explanation") -> Path:
    """WORKDIR/plots/explain-METHOD-HASH.png: the bars of one explanation (HASH: of the input, or inputs)."""
    what = result.text if isinstance(result.text, str) else f"{len(result.text)} inputs (aggregate)"
    digest = hashlib.sha256(json.dumps(result.text, ensure_ascii=False).encode()).hexdigest()[:10]
    p = result.prediction
    return explain_bars([(bar_label(n.id, f"({n.label}) {n.text}"), n.score) for n in result.supporting],
                        [(bar_label(n.id, f"({n.label}) {n.text}"), n.score) for n in result.opposing],
                        f"{what} → {p['label']} ({p['probability']:.2f}); {result.method}, {result.scoring}",
                        Workdir(workdir).plots_dir / f"explain-{result.method}-{digest}.png")


def batch_plot(workdir: Path, tally: "Tally", top: int = 12) -> Path:
    """WORKDIR/plots/explain-METHOD-batch-HASH.png (HASH: of the batch's inputs): the ``top`` training examples
    most often among the batch's supporting lists (bars > 0) and opposing lists (bars < 0), as counts of inputs."""
    def bars(counter, sign: int) -> list[tuple[str, float]]:
        return [(bar_label(i, f"({tally.examples[i].label}) {tally.examples[i].text}"), sign * c)
                for i, c in counter.most_common(top)]

    return explain_bars(bars(tally.supporting, 1), bars(tally.opposing, -1),
                        f"{tally.inputs} inputs: the training examples behind most of them; "
                        f"{tally.method}, {tally.scoring}",
                        Workdir(workdir).plots_dir / f"explain-{tally.method}-batch-{tally.digest.hexdigest()[:10]}.png",
                        xlabel="inputs whose top list holds the example (> 0 supporting, < 0 opposing)")


def scan_plot(workdir: Path, result: "ScanResult") -> Path:
    """WORKDIR/plots/scan-METHOD.png: each class's suspicion scores and the flag threshold."""
    ex = result.examples
    threshold = result.threshold if math.isfinite(result.threshold) else float(result.issues.score.max()) + 1e-9
    return suspicion_histogram(result.issues.score, [ex.label_names[y] for y in ex.labels], threshold,
                               Workdir(workdir).plots_dir / f"scan-{result.method}.png",
                               title=f"Suspicion scores by given label ({result.method} scan)")

