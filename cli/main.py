"""The ``datablame`` command: each command a few lines over the library."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import typer

from datablame.influence.registry import DEFAULT_METHOD, method_names

from . import report, serve, store_commands
from .sharding import SHARD_ROWS, part_of
from .errors import report_errors
from .progress import QUIET, VERBOSE, console, log_verbosely, progress_bar

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="git blame for training data: which training examples caused a prediction.")

TEXT_COLUMN = typer.Option("text", "--text-column", help="Text column, or a pair such as premise,hypothesis.")
LABEL_COLUMN = typer.Option("label", "--label-column", help="Label column (strings or integers).")
ENCODING = typer.Option("utf-8", "--encoding", help="Text encoding of a CSV, TSV or JSON data file (UTF-8, with or "
                        "without BOM, by default; e.g. latin-1, cp1252).")


@app.command()
@report_errors
def train(
    data: Path = typer.Argument(..., help="Training data: CSV, TSV, JSONL, parquet or a saved datasets folder."),
    model: Path = typer.Option(..., "--model", help="Local Hugging Face model folder to fine-tune."),
    out: Path = typer.Option(..., "--out", help="Workdir to create."),
    text_column: str = TEXT_COLUMN,
    label_column: str = LABEL_COLUMN,
    encoding: str = ENCODING,
    epochs: int = typer.Option(3, help="Passes over the data."),
    lr: float = typer.Option(5e-5, help="Peak learning rate (decays linearly to a tenth)."),
    batch_size: int = typer.Option(16, help="Examples per optimizer step."),
    checkpoints: int = typer.Option(4, help="Checkpoints to save, spread over training (TracIn sums over them)."),
    seed: int = typer.Option(0, help="Seed for the head's initialisation, shuffling and dropout."),
    max_length: int = typer.Option(128, help="Tokens per input; longer inputs are truncated."),
    freeze_encoder: bool = typer.Option(False, "--freeze-encoder", help="Train only the classification head."),
    params: Optional[List[str]] = typer.Option(None, "--params", help="Train only these parameters: globs on names, "
                                               "or the shortcuts head and last-layer (repeatable; default: all). "
                                               "Attribution then selects the same ones."),
    pooling: str = typer.Option("auto", help="What the head reads: cls (the model's own head input), mean (the mean "
                                "of the encoder's token states) or auto (mean when the model folder's "
                                "sentence-transformers config asks for it, e.g. all-MiniLM-L6-v2; else cls)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> None:
    """Fine-tune a classifier and save checkpoints with their learning rates into a workdir."""
    log_verbosely(verbose)
    from datablame.influence.data import load_examples
    from datablame.influence.train import TrainSettings
    from datablame.influence.train import train as run_training
    from datablame.influence.workdir import describe_checkpoints

    examples = load_examples(data, text_column, label_column, encoding=encoding)
    settings = TrainSettings(epochs=epochs, lr=lr, batch_size=batch_size, checkpoints=checkpoints, seed=seed,
                             max_length=max_length, freeze_encoder=freeze_encoder, pooling=pooling,
                             device=device, params=list(params) if params else None)
    start = time.perf_counter()
    with progress_bar("training", quiet) as update:
        config = run_training(examples, str(model), out, settings, update)
    if not quiet:
        console.print(f"trained on {len(examples)} examples ({', '.join(config.label_names)}) in "
                      f"{time.perf_counter() - start:.1f} s; checkpoints: {describe_checkpoints(config.checkpoints)}")
    print(out)


@app.command()
@report_errors
def init(
    workdir: Path = typer.Argument(..., help="Workdir to create."),
    data: Path = typer.Option(..., "--data", help="The data the checkpoints were trained on."),
    checkpoint: List[Path] = typer.Option(..., "--checkpoint",
                                          help="Model folder (repeat for several), or a Trainer output folder."),
    lr: Optional[List[float]] = typer.Option(None, "--lr", help="Learning rate per --checkpoint (or one for all)."),
    text_column: str = TEXT_COLUMN,
    label_column: str = LABEL_COLUMN,
    encoding: str = ENCODING,
    max_length: int = typer.Option(128, help="Tokens per input; longer inputs are truncated."),
    quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> None:
    """Make a workdir from models trained elsewhere (a Hugging Face Trainer output folder is understood)."""
    from datablame.influence.data import load_examples
    from datablame.influence.train import init_workdir
    from datablame.influence.workdir import describe_checkpoints

    log_verbosely(verbose)
    examples = load_examples(data, text_column, label_column, encoding=encoding)
    config = init_workdir(workdir, examples, list(checkpoint), lr, max_length)
    if not quiet:
        console.print(f"{len(config.checkpoints)} checkpoints: {describe_checkpoints(config.checkpoints)}")
    print(workdir)


METHOD = typer.Option("all", help=f"{', '.join(method_names())} or all.")
PARAMS = typer.Option(None, "--params", help="Parameter globs, or the shortcuts head and last-layer (repeatable; "
                      "default: the trained ones, the head after --freeze-encoder).")
DIM = typer.Option(None, help="Sketch dimension k (per checkpoint for TracIn); default: exact gradients, no sketch, "
                   "for at most 4096 selected parameters (a classification head), else 256 (influence: 2048).")
PROJECTION = typer.Option("countsketch", help="countsketch (sparse JL) or gaussian.")
SEED = typer.Option(0, help="Seed of the random projection.")
DTYPE = typer.Option("float32", help="Stored precision: float32 or float16.")
LAMBDA = typer.Option(1e-3, "--lambda", help="L2 penalty of the representer refit.")
DAMPING = typer.Option("auto", "--damping", help="λ added to the curvature of influence functions (LiSSA, sketch "
                       "and exact): auto is the curvature's mean eigenvalue (LiSSA: 0.01); larger is more stable, "
                       "smaller is closer to the exact inverse.")
AT = typer.Option("auto", "--at", help="Where influence functions take gradients and the Hessian: checkpoint "
                  "(the trained model), optimum (its linear head moved to the minimiser of the damped training "
                  "objective, where their first-order model holds: raw scores predict retraining better, cosine "
                  "lists name planted causes less well; see the README), or auto: the raw index's vectors at the "
                  "optimum where it applies, the cosine index's at the checkpoint.")
BATCH_SIZE = typer.Option(32, help="Examples per gradient batch.")
DEVICE = typer.Option("auto", help="auto, cpu or cuda.")
SCORE = typer.Option("all", "--score", help="Scoring to index: cosine, raw or all.")
SHARD = typer.Option(None, "--shard", metavar="I/N", help="Compute only part I of N of the vectors (shards s with s "
                     "mod N = I; jobs of a SLURM array, machines sharing the workdir) and stop; when every part is "
                     "done, 'datablame finalize WORKDIR' builds the rest. Under torchrun each rank takes its part "
                     "by itself.")


def _choose(what: str, option: str, value: Optional[str], choices: tuple[str, ...]) -> None:
    """Refuse an option's value outside the library's own list before anything loads (see ``check_choice``)."""
    from datablame.influence.errors import check_choice

    check_choice(what, value, choices, option)


def _settings(params: Optional[List[str]], dim: Optional[int], projection: str, seed: int, lam: float, device: str,
              curvature: str = "auto", damping: str = "auto", at: str = "auto"):
    """The method settings of the options, refusing an unknown --projection, --curvature or --at."""
    from datablame.influence.build import CURVATURES, MethodSettings
    from datablame.influence.lissa import LissaConfig
    from datablame.influence.settings import POINTS
    from datablame.influence.sketch import PROJECTIONS

    _choose("projection", "--projection", projection, tuple(PROJECTIONS))
    _choose("curvature", "--curvature", curvature, CURVATURES)
    _choose("linearization point", "--at", at, POINTS)
    return MethodSettings(params=[p for arg in params or [] for p in arg.split(",") if p] or None, dim=dim,
                          projection=projection, seed=seed, lam=lam, device=device, curvature=curvature, at=at,
                          lissa=LissaConfig(damping=_damping(damping)))


def _damping(value: str) -> float | None:
    """--damping: a positive number, or ``auto`` (None)."""
    from datablame.influence.errors import DatablameError

    if value == "auto":
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number > 0:
        raise DatablameError(f"--damping must be a positive number or auto, not {value!r}", "e.g. --damping 1e-3")
    return number


def _methods(method: str) -> tuple[str, ...]:
    """The methods that --method names (all of them for ``all``), refusing an unknown one."""
    from datablame.influence.build import METHODS

    _choose("method", "--method", method, ("all", *METHODS))
    return METHODS if method == "all" else (method,)


@app.command()
@report_errors
def vectors(
    workdir: Path = typer.Argument(..., help="Workdir made by 'datablame train' or 'datablame init'."),
    method: str = METHOD, params: Optional[List[str]] = PARAMS, dim: Optional[int] = DIM, projection: str = PROJECTION,
    seed: int = SEED, dtype: str = DTYPE, lam: float = LAMBDA, at: str = AT, batch_size: int = BATCH_SIZE,
    device: str = DEVICE, shard: Optional[str] = SHARD, shard_size: int = SHARD_ROWS,
    quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> None:
    """Compute every training example's vector and self-influence for each method (resumable; in parts with
    --shard or under torchrun)."""
    log_verbosely(verbose)
    from datablame.index.jobs import run_vectors
    from datablame.index.vectors import DTYPES

    _choose("dtype", "--dtype", dtype, DTYPES)
    settings = _settings(params, dim, projection, seed, lam, device, at=at)
    part = part_of(shard, shard_size)
    for name in _methods(method):
        start = time.perf_counter()
        with progress_bar(name, quiet) as update:
            job = run_vectors(workdir, name, settings, dtype, batch_size, update, shard_size, part)
        if not quiet:
            sets = " and ".join(f"{m.n} × {m.dim} {m.dtype} vectors → {folder}"
                                for m, folder in zip(job.manifests, job.folders))
            _print_job(workdir, name, job, f"{sets} in {time.perf_counter() - start:.1f} s")


def _print_job(workdir: Path, name: str, job, done: str) -> None:
    """What a vectors or index process did: the finished result, or the part it computed and what comes next
    (nothing from the other ranks of torchrun)."""
    from datablame.index.shards import torchrun_part

    if job.finished:
        console.print(f"{name}: {done}")
    elif torchrun_part() is None:
        console.print(f"{name}: part {job.part} of the vectors done ({sum(len(m.done) for m in job.manifests)} of "
                      f"{sum(m.shards for m in job.manifests)} shards finished); when every part is, run 'datablame finalize "
                      f"{workdir} --method {name}'")


@app.command()
@report_errors
def index(
    workdir: Path = typer.Argument(..., help="Workdir made by 'datablame train' or 'datablame init'."),
    method: str = METHOD, params: Optional[List[str]] = PARAMS, dim: Optional[int] = DIM, projection: str = PROJECTION,
    seed: int = SEED,
    score: str = SCORE,
    approximate: bool = typer.Option(False, "--approximate", help="HNSW instead of exact search (for large data); "
                                     "its recall@10 against exact search is measured and printed."),
    curvature: str = typer.Option("auto", help="Influence queries: exact (the Hessian, once; at most 4096 "
                                  "parameters), lissa (per query), sketch (the sketches' Gauss-Newton, once), or "
                                  "auto: exact on exact gradients (a head), else sketch."),
    damping: str = DAMPING, at: str = AT,
    dtype: str = DTYPE, lam: float = LAMBDA, batch_size: int = BATCH_SIZE, device: str = DEVICE,
    shard: Optional[str] = SHARD, shard_size: int = SHARD_ROWS, quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Compute the training vectors (resumable; in parts with --shard or under torchrun) and build a FAISS index
    per method and scoring."""
    log_verbosely(verbose)
    from datablame.index.jobs import run_vectors
    from datablame.index.vectors import DTYPES

    scorings = _scorings(score)
    _choose("dtype", "--dtype", dtype, DTYPES)
    settings = _settings(params, dim, projection, seed, lam, device, curvature, damping, at)
    part = part_of(shard, shard_size)
    for name in _methods(method):
        start = time.perf_counter()
        with progress_bar(name, quiet) as update:
            job = run_vectors(workdir, name, settings, dtype, batch_size, update, shard_size, part, scorings,
                              approximate)
        _print_indexes(workdir, name, job, start, quiet)


def _scorings(score: str) -> tuple[str, ...]:
    from datablame.index.search import SCORINGS

    _choose("scoring", "--score", score, ("all", *SCORINGS))
    return SCORINGS if score == "all" else (score,)


def _print_indexes(workdir: Path, name: str, job, start: float, quiet: bool) -> None:
    """One line per index a job built (they are the result, printed even with -q), or what its part did."""
    if not job.finished:
        if not quiet:
            _print_job(workdir, name, job, "")
        return
    for meta in job.indexes:
        recall = "" if meta.recall_at_10 is None else f", recall@10 {meta.recall_at_10:.3f} against exact"
        if (meta.hnsw or {}).get("rejected"):
            recall = f" (HNSW {meta.hnsw['rejected']})"
        console.print(f"{name} ({meta.scoring}): {meta.kind} index of {meta.n} × {meta.dim}{recall}; "
                      f"{time.perf_counter() - start:.1f} s")


@app.command()
@report_errors
def plan(
    workdir: Path = typer.Argument(..., help="Workdir made by 'datablame train' or 'datablame init'."),
    method: str = METHOD, params: Optional[List[str]] = PARAMS, dim: Optional[int] = DIM, projection: str = PROJECTION,
    seed: int = SEED,
    score: str = SCORE,
    approximate: bool = typer.Option(False, "--approximate", help="Plan HNSW indexes instead of exact ones."),
    curvature: str = typer.Option("auto", help="As for 'index'."), damping: str = DAMPING, at: str = AT,
    dtype: str = DTYPE, lam: float = LAMBDA, batch_size: int = BATCH_SIZE, device: str = DEVICE,
    workers: int = typer.Option(1, "--workers", help="Processes sharing the vectors (torchrun ranks or --shard "
                                "jobs)."),
    sample: int = typer.Option(64, "--sample", help="Training examples the calibration computes."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> None:
    """Estimate what 'datablame index' (with the same options) will take here: time, peak memory and disk of each
    phase, from a short measured calibration run on --sample examples."""
    log_verbosely(verbose)
    from datablame.index.plan import plan_method
    from datablame.index.vectors import DTYPES
    from datablame.influence.errors import DatablameError

    scorings = _scorings(score)
    _choose("dtype", "--dtype", dtype, DTYPES)
    if workers < 1 or sample < 2:
        raise DatablameError("--workers must be at least 1 and --sample at least 2", "e.g. --workers 4 --sample 64")
    settings = _settings(params, dim, projection, seed, lam, device, curvature, damping, at)
    plans = []
    for name in _methods(method):
        with progress_bar(f"calibrating {name}", quiet):
            plans.append(plan_method(workdir, name, settings, dtype, scorings, approximate, sample, batch_size,
                                     workers))
    if as_json:
        print(json.dumps([p.to_json() for p in plans]))
        return
    for p in plans:
        _print_plan(p)


def _print_plan(p) -> None:
    """One table per method: each phase's time, peak memory and disk, and the totals."""
    from rich.table import Table

    from datablame.index.plan import duration

    def size(b: int) -> str:
        return f"{b / 2**30:.2f} GB" if b >= 2**30 else f"{b / 2**20:.1f} MB"

    table = Table(title=f"{p.method}: {p.n} examples → {p.n} × {p.dim} {p.dtype} vectors, {p.workers} worker(s); "
                        f"calibrated on {p.sample} in {p.calibration_seconds:.1f} s")
    for column in ("phase", "time", "peak memory", "disk", "how"):
        table.add_column(column, no_wrap=column != "how")
    for phase in p.phases:
        table.add_row(phase.name, duration(phase.seconds), size(phase.peak_bytes), size(phase.disk_bytes), phase.note)
    table.add_row("total", duration(p.seconds), size(p.peak_bytes), size(p.disk_bytes), "")
    console.print(table)


@app.command()
@report_errors
def finalize(
    workdir: Path = typer.Argument(..., help="Workdir whose vectors --shard jobs computed."),
    method: str = METHOD,
    score: str = SCORE,
    approximate: bool = typer.Option(False, "--approximate", help="HNSW instead of exact search (for large data)."),
    device: str = DEVICE, quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> None:
    """After the --shard I/N jobs of 'index' or 'vectors': reduce their vectors (manifest, curvature,
    self-influence) and build the indexes, with the settings the jobs used. Refused while a shard is missing."""
    log_verbosely(verbose)
    from datablame.index.jobs import run_finalize
    from datablame.index.vectors import stored_sets

    scorings = _scorings(score)
    names = [n for n in _methods(method) if method != "all" or any(s.manifest().scorings
                                                                   for s in stored_sets(workdir, n))]
    if not names:
        from datablame.influence.errors import DatablameError

        raise DatablameError(f"no vectors to finalize in {workdir}", f"run 'datablame index {workdir} --shard I/N' "
                             "jobs first")
    for name in names:
        start = time.perf_counter()
        with progress_bar(name, quiet) as update:
            job = run_finalize(workdir, name, device, update, scorings, approximate)
        _print_indexes(workdir, name, job, start, quiet)


@app.command()
@report_errors
def explain(
    workdir: Path = typer.Argument(..., help="Workdir with an index ('datablame index')."),
    text: Optional[str] = typer.Argument(None, help="The input to explain."),
    method: Optional[str] = typer.Option(None, help=f"{', '.join(method_names())} (default: {DEFAULT_METHOD} "
                                         "when it is indexed, else an indexed one; it is named)."),
    top: int = typer.Option(10, "--top", "-k", help="Supporting and opposing examples to show."),
    score: Optional[str] = typer.Option(None, "--score", help="cosine (similar effect: names planted causes best) or "
                                        "raw (counterfactual: predicts retraining best). Default: both tables when "
                                        "both are indexed; cosine for --json and the plot."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="A file of inputs, one per line."),
    aggregate: bool = typer.Option(False, "--aggregate", help="Explain the --queries set as a whole (summed query "
                                   "vectors): the training examples behind the model's behaviour on the slice."),
    curvature: Optional[str] = typer.Option(None, help="Influence queries: lissa, sketch or exact (default: as "
                                            "indexed)."),
    damping: Optional[str] = typer.Option(None, "--damping", help="Influence functions' λ, a number or auto "
                                          "(default: as indexed)."),
    flag: Optional[str] = typer.Option(None, "--flag", help="Record the supporting examples in the store as open "
                                       "flags of this kind (e.g. biased: the causes of a slice's behaviour)."),
    db: Optional[str] = typer.Option(None, "--db", help="SQLAlchemy URL of the store (with --flag)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: one object, or for --queries a list streamed "
                                 "as each batch is done."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Print JSON Lines: one object per input, in input order, as "
                               "each batch is done (for large batches)."),
    plot: Optional[bool] = typer.Option(None, "--plot/--no-plot", help="Write a bar chart to WORKDIR/plots. Default: "
                                        "for a single input or an --aggregate; --plot on a batch writes one summary "
                                        "chart (the training examples behind most inputs)."),
    plot_each: bool = typer.Option(False, "--plot-each", help="Also write one bar chart per input of a batch."),
    verify: bool = typer.Option(False, "--verify", help="Check the explanation by retraining: without the top "
                                "--remove supporters, without random same-label examples, without the top "
                                "opponents; reports the margin of each. The head retrains in seconds after "
                                "--freeze-encoder; otherwise each is a whole fine-tune (estimated, needs --yes)."),
    yes: bool = typer.Option(False, "--yes", help="Run a --verify that fine-tunes the whole model."),
    remove: int = typer.Option(10, "--remove", help="Examples each --verify retraining leaves out."),
    draws: int = typer.Option(5, "--draws", help="Random removals --verify compares the supporters' against."),
    stable: bool = typer.Option(False, "--stability", help="Say which supporters are robust: in how many "
                                "checkpoints' top --top they are (TracIn, TRAK), whether the other scoring "
                                "lists them too, and for sketched vectors whether a second projection seed "
                                "does (every training vector computed again)."),
    device: str = DEVICE, quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> None:
    """The training examples that most support and most oppose the model's prediction for an input.

    A --queries batch is explained in batches of inputs, each printed as soon as it is done."""
    from datablame.index.explain import Explainer, Tally, default_method, explain_batches
    from datablame.index.search import DEFAULT_SCORING, SCORINGS, VectorIndex
    from datablame.influence.workdir import Workdir
    from datablame.influence.build import CURVATURES, METHODS
    from datablame.influence.errors import DatablameError

    from datablame.store.plots import batch_plot, explanation_plot

    from .render import ExplanationPrinter, read_queries, truncation_warning

    log_verbosely(verbose)
    _choose("method", "--method", method, METHODS)
    _choose("scoring", "--score", score, SCORINGS)
    _choose("curvature", "--curvature", curvature, CURVATURES)
    if top < 1:
        raise DatablameError(f"--top must be at least 1, not {top}", "e.g. --top 10")
    if as_json and jsonl:
        raise DatablameError("--json and --jsonl are two formats of one output", "give one of them")
    if verify and queries is not None and not aggregate:
        raise DatablameError("--verify checks one input, or a slice as a whole",
                             "give the input as TEXT, or add --aggregate")
    if stable and queries is not None:
        raise DatablameError("--stability checks one input at a time", "give the input as TEXT, not --queries")
    texts = read_queries(text, queries)
    if method is None:
        method, why = default_method(workdir, score or DEFAULT_SCORING)
        if why and not quiet:
            console.print(f"explaining with {method} ({why})")
    explainer = Explainer(workdir, method, score or DEFAULT_SCORING, device, curvature,
                          damping=None if damping is None else _damping(damping) or "auto")
    overlong = explainer.overlong(texts)
    if overlong:  # shown even with -q: the explanation is of the truncated input
        typer.echo(truncation_warning(overlong, len(texts), explainer.max_length), err=True)
    # without --score, the table shows both lists when both are indexed: each answers its own question
    both = score is None and not (as_json or jsonl) and \
        VectorIndex.paths(Workdir(workdir).index_dir, method, "raw")[1].is_file()
    explainers = [explainer, explainer.with_scoring("raw")] if both else [explainer]
    single = aggregate or queries is None
    printer = ExplanationPrinter("jsonl" if jsonl else "json" if as_json else "table", single)
    tally = Tally(method, explainer.index.meta.scoring)
    flagged, plots = [], []
    with progress_bar("explain", quiet or len(texts) == 1) as update:
        runs = [tuple(e.explain_aggregate(texts, top, update) for e in explainers)] if aggregate else \
            explain_batches(explainers, texts, top, update)
        for per_input in runs:
            if verify:
                _verify(explainers, per_input, texts, aggregate, remove, draws, device, quiet, yes)
            if stable:
                _stability(explainers, per_input, texts[0], top)
            printer.print(per_input)
            result = per_input[0]
            tally.add(result)
            if flag:
                flagged.append(result)
            if plot_each or (single and plot is not False):
                plots.append(explanation_plot(workdir, result))
    printer.close()
    if plot and not single:
        plots.append(batch_plot(workdir, tally))
    if plots and not quiet:
        console.print(f"plot{'s' if len(plots) > 1 else ''} → {plots[-1]}" + (" …" if len(plots) > 1 else ""))
    if flag:
        _flag_supporters(workdir, explainer.train, flagged, flag, db)


def _verify(explainers, results, texts: list, aggregate: bool, remove: int, draws: int, device: str,
            quiet: bool, yes: bool) -> None:
    """Attach to each result (one per explainer) the verification of its explanation (of one input, or of the
    slice ``texts`` when ``aggregate``) by retraining."""
    from datablame.index.verify import verify as verify_one, verify_slice, whole_model

    if not quiet:
        what, runs = ("fine-tuning the whole model", len(explainers) * (draws + 2)) \
            if whole_model(explainers[0].workdir.load()) else ("retraining the head", 1 + len(explainers) * (draws + 2))
        console.print(f"verifying: {what} {runs} times (without the top {remove} supporters, {draws} random "
                      f"same-label sets, the top {remove} opponents) on {len(explainers[0].train)} examples …")
    notice = None if quiet else console.print
    checks = verify_slice(explainers, texts, remove, draws, device=device, yes=yes, notice=notice) if aggregate \
        else verify_one(explainers, texts[0], remove, draws, device=device, yes=yes, notice=notice)
    for result, check in zip(results, checks):
        result.verification = check.to_json()


def _stability(explainers, results, text: str, top: int) -> None:
    """Attach to each result (one per explainer) how robust its supporters are (the other scoring: the other
    explainer, or the other scoring's index when it exists)."""
    from datablame.index.search import SCORINGS, VectorIndex
    from datablame.index.stability import stability

    first = explainers[0]
    if len(explainers) == 1:
        other = next(s for s in SCORINGS if s != first.index.meta.scoring)
        indexed = VectorIndex.paths(first.workdir.index_dir, first.index.meta.method, other)[1].is_file()
        explainers = [first, first.with_scoring(other)] if indexed else [first]
    for i, result in enumerate(results):
        others = [e for j, e in enumerate(explainers) if j != i]
        result.stability = stability(explainers[i], others[0] if others else None, text, top)


def _flag_supporters(workdir: Path, train, results, kind: str, db: Optional[str]) -> None:
    """Open flags of ``kind`` (source explain) on every explanation's supporting examples."""
    from datablame.store.db import default_url, open_db
    from datablame.store.flags import flag_examples
    from datablame.store.scans import ensure_dataset, find_dataset

    database = open_db(db or default_url(workdir))
    ensure_dataset(database, train)
    dataset = find_dataset(database, train.fingerprint)
    for r in results:
        what = r.text if isinstance(r.text, str) else f"{len(r.text)} inputs"
        note = f"supports '{r.prediction['label']}' on {what} ({r.method}, {r.scoring})"
        new = flag_examples(database, dataset, [n.id for n in r.supporting], kind, note[:500])
        console.print(f"flagged {len(new)} new example(s) {kind} (of {len(r.supporting)} supporting)")


@app.command()
@report_errors
def demo(
    out: Path = typer.Option(Path("datablame-demo"), "--out", help="Workdir to create (a previous demo's is replaced)."),
    encoder: str = typer.Option("auto", help="auto (MiniLM when installed), minilm, or small (a BERT trained here)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the final JSON line."),
    verbose: bool = VERBOSE,
) -> None:
    """The whole story offline on shipped data with injected label errors: train, index, scan, explain, review,
    export, and what was found against what was injected."""
    from .demo import print_summary, run_demo

    log_verbosely(verbose)
    result = run_demo(out, quiet, verbose, encoder)
    if quiet:
        print(json.dumps(asdict(result)))
    else:
        print_summary(result)


store_commands.register(app)
report.register(app)
serve.register(app)


def main() -> None:
    app()
