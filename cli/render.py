"""Reading inputs and printing explanations (readable tables or JSON, on standard output)."""

from __future__ import annotations

import codecs
import json
import textwrap
from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console
from rich.table import Table

from datablame.index.explain import Explanation, Neighbour
from datablame.influence.errors import DatablameError

stdout = Console(soft_wrap=False)


def read_queries(text: Optional[str], queries: Optional[Path]) -> list[str]:
    """The inputs to explain: the TEXT argument, or the non-empty lines of a --queries file (not both), which is
    UTF-8 text, with or without a byte order mark."""
    if (text is None) == (queries is None):
        raise DatablameError("give either TEXT or --queries FILE", "e.g. datablame explain WORKDIR 'some input'")
    if queries is None:
        if not text.strip():
            raise DatablameError("the input text is empty", "give the sentence to explain")
        return [text]
    if not queries.is_file():
        raise DatablameError(f"queries file {queries} not found", "give a text file with one input per line")
    data = queries.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DatablameError(f"queries file {queries} is not UTF-8: line {line} has the byte 0x{data[exc.start]:02x}",
                             f"save it as UTF-8, e.g. iconv -f latin1 -t utf-8 {queries} > utf8-{queries.name}"
                             ) from None
    lines = [line.strip() for line in content.splitlines() if line.strip()]
    if not lines:
        raise DatablameError(f"queries file {queries} has no inputs", "write one input per line")
    return lines


def truncation_warning(overlong: dict[int, int], inputs: int, max_length: int) -> str:
    """One line saying which inputs (``overlong``: {0-based position: token count}, of ``inputs``) the model saw
    truncated to their first ``max_length`` tokens, and how many tokens that dropped."""
    if inputs == 1:
        (tokens,) = overlong.values()
        return (f"warning: the input has {tokens} tokens, more than the workdir's max_length: truncated to "
                f"{max_length} tokens ({tokens - max_length} dropped)")
    which = ", ".join(f"#{i + 1}" for i in sorted(overlong)[:5]) + (", …" if len(overlong) > 5 else "")
    return (f"warning: {len(overlong)} of {inputs} inputs ({which}) are longer than the workdir's max_length: "
            f"truncated to {max_length} tokens (up to {max(overlong.values()) - max_length} dropped)")


class ExplanationPrinter:
    """Prints explanations on standard output as they come: ``table`` (readable tables; a second scoring of the
    same input under the first), ``json`` (one object when ``single``, else a JSON list written element by element,
    a valid document once closed) or ``jsonl`` (one object per line). Flushed per input, so a pipe sees each one
    as soon as it is done."""

    def __init__(self, form: str, single: bool):
        self.form, self.single, self.count = form, single, 0

    def print(self, per_input: Sequence[Explanation]) -> None:
        """One input's explanations: one per scoring (only the first is printed as JSON)."""
        if self.form == "table":
            for i, result in enumerate(per_input):
                print_explanation(result, header=i == 0)
        elif self.form == "jsonl":
            print(json.dumps(per_input[0].to_json(), ensure_ascii=False), flush=True)
        else:
            text = json.dumps(per_input[0].to_json(), ensure_ascii=False, indent=2)
            if not self.single:
                text = ("[\n" if self.count == 0 else ",\n") + textwrap.indent(text, "  ")
            print(text, end="" if not self.single else "\n", flush=True)
        self.count += 1

    def close(self) -> None:
        """End the JSON list of a batch."""
        if self.form == "json" and not self.single:
            print("\n]" if self.count else "[]", flush=True)


def _table(title: str, rows: list[Neighbour], style: str) -> Table:
    table = Table(title=title, title_justify="left", title_style=f"bold {style}", expand=False)
    table.add_column("id", justify="right")
    table.add_column("label")
    table.add_column("score", justify="right", style=style)
    table.add_column("text", overflow="fold", max_width=90)
    for row in rows:
        table.add_row(str(row.id), row.label, f"{row.score:+.4f}", row.text)
    return table


QUESTIONS = {"raw": "counterfactual: the training examples whose removal would change this prediction most",
             "cosine": "similar effect: the training examples that pull the model the same way as this input"}
"""The question each scoring answers (raw predicts retraining best, cosine names planted causes best)."""


def print_explanation(result: Explanation, header: bool = True) -> None:
    """The prediction (unless ``header`` is False: a second scoring of the same input), the question the scoring
    answers, the supporting and opposing training examples as tables, then the timing."""
    p = result.prediction
    what = result.text if isinstance(result.text, str) else f"{len(result.text)} inputs (aggregate)"
    counts = f"  {p['counts']}" if "counts" in p else ""
    if header:
        stdout.print(f"[bold]{what}[/bold]")
        stdout.print(f"prediction: [bold]{p['label']}[/bold] (probability {p['probability']:.3f}){counts}")
    stdout.print(f"[italic]{result.scoring}: {QUESTIONS[result.scoring]}[/italic]")
    stdout.print(_table(f"supporting ({result.method}, {result.scoring})", result.supporting, "green"))
    stdout.print(_table(f"opposing ({result.method}, {result.scoring})", result.opposing, "red"))
    t = result.timing
    cached = " (cached)" if t.get("cached") else ""
    stdout.print(f"[dim]query vectors {t['query_vectors_s'] * 1000:.0f} ms{cached} ({t['cost']}); "
                 f"search {t['search_s'] * 1000:.1f} ms ({t['index']} index)[/dim]\n")
