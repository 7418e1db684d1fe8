"""The ``datablame`` command: each command a few lines over the library."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import List, Optional

import typer

from . import store_commands
from .errors import report_errors
from .progress import console, progress_bar

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="git blame for training data: which training examples caused a prediction.")

TEXT_COLUMN = typer.Option("text", "--text-column", help="Text column, or a pair such as premise,hypothesis.")
LABEL_COLUMN = typer.Option("label", "--label-column", help="Label column (strings or integers).")


@app.command()
@report_errors
def train(
    data: Path = typer.Argument(..., help="Training data: CSV, TSV, JSONL, parquet or a saved datasets folder."),
    model: Path = typer.Option(..., "--model", help="Local Hugging Face model folder to fine-tune."),
    out: Path = typer.Option(..., "--out", help="Workdir to create."),
    text_column: str = TEXT_COLUMN,
    label_column: str = LABEL_COLUMN,
    epochs: int = typer.Option(3, help="Passes over the data."),
    lr: float = typer.Option(5e-5, help="Peak learning rate (decays linearly to a tenth)."),
    batch_size: int = typer.Option(16, help="Examples per optimizer step."),
    checkpoints: int = typer.Option(4, help="Checkpoints to save, spread over training (TracIn sums over them)."),
    seed: int = typer.Option(0, help="Seed for the head's initialisation, shuffling and dropout."),
    max_length: int = typer.Option(128, help="Tokens per input; longer inputs are truncated."),
    freeze_encoder: bool = typer.Option(False, "--freeze-encoder", help="Train only the classification head."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Fine-tune a classifier and save checkpoints with their learning rates into a workdir."""
    from datablame.influence.data import load_examples
    from datablame.influence.train import TrainSettings
    from datablame.influence.train import train as run_training
    from datablame.influence.workdir import describe_checkpoints

    examples = load_examples(data, text_column, label_column)
    settings = TrainSettings(epochs=epochs, lr=lr, batch_size=batch_size, checkpoints=checkpoints, seed=seed,
                             max_length=max_length, freeze_encoder=freeze_encoder, device=device)
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
    max_length: int = typer.Option(128, help="Tokens per input; longer inputs are truncated."),
) -> None:
    """Make a workdir from models trained elsewhere (a Hugging Face Trainer output folder is understood)."""
    from datablame.influence.data import load_examples
    from datablame.influence.train import init_workdir
    from datablame.influence.workdir import describe_checkpoints

    examples = load_examples(data, text_column, label_column)
    config = init_workdir(workdir, examples, list(checkpoint), lr, max_length)
    console.print(f"{len(config.checkpoints)} checkpoints: {describe_checkpoints(config.checkpoints)}")
    print(workdir)


@app.command()
@report_errors
def vectors(
    workdir: Path = typer.Argument(..., help="Workdir made by 'datablame train' or 'datablame init'."),
    method: str = typer.Option("all", help="tracin, influence, representer or all."),
    params: Optional[List[str]] = typer.Option(None, "--params", help="Parameter globs, or the shortcuts head and "
                                               "last-layer (repeatable; default: the trained ones, the head after --freeze-encoder)."),
    dim: int = typer.Option(256, help="Sketch dimension k (per checkpoint for TracIn)."),
    projection: str = typer.Option("countsketch", help="countsketch (sparse JL) or gaussian."),
    seed: int = typer.Option(0, help="Seed of the random projection."),
    dtype: str = typer.Option("float32", help="Stored precision: float32 or float16."),
    lam: float = typer.Option(1e-3, "--lambda", help="L2 penalty of the representer refit."),
    batch_size: int = typer.Option(32, help="Examples per gradient batch."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Compute every training example's vector and self-influence for each method (resumable)."""
    from datablame.index.vectors import VectorStore
    from datablame.influence.build import METHODS, MethodSettings, build_method

    names = METHODS if method == "all" else (method,)
    settings = MethodSettings(params=[p for arg in params or [] for p in arg.split(",") if p], dim=dim,
                              projection=projection, seed=seed, lam=lam, device=device)
    for name in names:
        start = time.perf_counter()
        built = build_method(workdir, name, settings)
        store = VectorStore(Path(workdir) / "vectors" / name)
        with progress_bar(name, quiet) as update:
            manifest = store.compute(built.method, built.train, built.key, dtype, batch_size=batch_size,
                                     progress=update)
        if not quiet:
            console.print(f"{name}: {manifest.n} × {manifest.dim} {manifest.dtype} vectors in "
                          f"{time.perf_counter() - start:.1f} s → {store.folder}")


store_commands.register(app)


def main() -> None:
    app()
