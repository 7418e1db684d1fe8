"""Reading inputs and printing explanations (readable tables or JSON, on standard output)."""

from __future__ import annotations

import codecs
import json
import textwrap
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from rich.console import Console
from rich.cells import cell_len, set_cell_size
from rich.text import Text

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


def _table(out: Text, title: str, rows: list[Neighbour], style: str, width: int) -> None:
    """Append a titled table of training examples to ``out``: id, label, score and the text, one line each, the
    text cut with "…" to fit ``width`` columns (plain aligned columns: printing thousands is cheap)."""
    out.append(title + "\n", style=f"bold {style}")
    scores = [f"{r.score:+.4g}" for r in rows]  # 4 significant digits: raw scores can be 1e-5 or 1e3
    id_w = max([2] + [len(str(r.id)) for r in rows])
    label_w = max([5] + [cell_len(r.label) for r in rows])
    score_w = max([5] + [len(s) for s in scores])
    text_w = max(20, width - id_w - label_w - score_w - 6)
    out.append(f"{'id':>{id_w}}  {'label':<{label_w}}  {'score':>{score_w}}  text\n", style="dim")
    for r, score in zip(rows, scores):
        text = Text(" ".join(r.text.split()), no_wrap=True)
        text.truncate(text_w, overflow="ellipsis")
        out.append(f"{r.id:>{id_w}}  {set_cell_size(r.label, label_w)}  ")
        out.append(f"{score:>{score_w}}", style=style)
        out.append("  ")
        out.append_text(text)
        out.append("\n")


def print_verification(v: dict) -> None:
    """What retraining without the explanation's examples did to the predicted label's margin (nats; the
    probability in brackets), and whether the explanation holds (see :mod:`datablame.index.verify`)."""
    m, p, k = v["margin"], v["probability"], v["k"]
    rand = np.array(m["without_random"])
    what = f"margin of '{v['label']}'" if v.get("inputs", 1) == 1 else \
        f"mean over the {v['inputs']} inputs of each one's predicted label's margin"
    retrained = v.get("retrained", "head")
    out = Text(f"verified by retraining the {retrained} ({v['seconds']:.1f} s); {what} in nats (probability):\n",
               style="bold")
    rows = [("original", f"{m['original']:+.3f} ({p['original']:.3f})"),
            (f"without the top {k} supporters", f"{m['without_top']:+.3f} ({p['without_top']:.3f})"
             + (f"  {v['flipped_share']:.0%} of the predictions flip" if v.get("inputs", 1) > 1 else
                "  flips the prediction" if v["flipped"] else "")),
            (f"without {k} random, same labels", f"{rand.mean():+.3f} ± {rand.std():.3f}, min {rand.min():+.3f} "
             f"({len(rand)} draws)"),
            (f"without the top {k} opponents", f"{m['without_opposing']:+.3f} ({p['without_opposing']:.3f})")]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        out.append(f"  {name:<{width}}  {value}\n")
    lower, raise_ = m["without_top"] < rand.min(), m["without_opposing"] > m["original"]
    out.append("  the explanation ")
    out.append("holds" if v["holds"] else "does not hold", style="green" if v["holds"] else "red")
    out.append(": removing the supporters lowers the margin " + ("more than every random removal" if lower else
               "less than some random removal") + "; removing the opponents " +
               ("raises" if raise_ else "does not raise") + " it")
    stdout.print(out)


def print_stability(s: dict) -> None:
    """How robust the supporters are (see :mod:`datablame.index.stability`): overlap of the checkpoints' and the
    other scoring's top lists, and which supporters are in most of them."""
    o, k = s["overlap"], s["k"]
    parts = []
    if o["checkpoints"] is not None:
        parts.append(f"checkpoints' top {k} agree {o['checkpoints']:.2f} (mean Jaccard), each with the sum's "
                     f"{o['checkpoint_vs_sum']:.2f}")
    if o["scorings"] is not None:
        parts.append(f"the {s['other_scoring']} top {k} agrees {o['scorings']:.2f}")
    if o.get("seeds") is not None:
        parts.append(f"a second projection seed's top {k} agrees {o['seeds']:.2f}")
    robust = [e["id"] for e in s["examples"] if (e["checkpoints"] is None or 2 * e["checkpoints"] > e["of"])
              and e["other_scoring"] is not False and e.get("other_seed") is not False]
    out = Text(f"stability of the top {k} supporters: " + ("; ".join(parts) or "one checkpoint, one scoring") +
               f"; robust (in most checkpoints' lists, both scorings' and both seeds'): {len(robust)} of "
               f"{len(s['examples'])}"
               + (f" ({', '.join(map(str, robust))})" if robust else "") + f"; seed: {s['seed']}", style="dim")
    stdout.print(out)


QUESTIONS = {"raw": "counterfactual: the training examples whose removal would change this prediction most",
             "cosine": "similar effect: the training examples that pull the model the same way as this input"}
"""The question each scoring answers (raw predicts retraining best, cosine names planted causes best)."""


def print_explanation(result: Explanation, header: bool = True) -> None:
    """The prediction (unless ``header`` is False: a second scoring of the same input), the question the scoring
    answers, the supporting and opposing training examples as tables, then the timing."""
    p = result.prediction
    what = result.text if isinstance(result.text, str) else f"{len(result.text)} inputs (aggregate)"
    out = Text()
    if header:
        out.append(what + "\n", style="bold")
        out.append("prediction: ")
        out.append(p["label"], style="bold")
        out.append(f" (probability {p['probability']:.3f})" + (f"  {p['counts']}" if "counts" in p else "") + "\n")
    out.append(f"{result.scoring}: {QUESTIONS[result.scoring]}\n", style="italic")
    for title, rows, style in (("supporting", result.supporting, "green"), ("opposing", result.opposing, "red")):
        _table(out, f"{title} ({result.method}, {result.scoring})", rows, style, stdout.width)
    out.rstrip()
    stdout.print(out, soft_wrap=True)
    if result.verification:
        print_verification(result.verification)
    if result.stability:
        print_stability(result.stability)
    t = result.timing
    cached = " (cached)" if t.get("cached") else ""
    stdout.print(f"query vectors {t['query_vectors_s'] * 1000:.0f} ms{cached} ({t['cost']}); "
                 f"search {t['search_s'] * 1000:.1f} ms ({t['index']} index)\n", style="dim", markup=False)
