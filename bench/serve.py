"""Web app benchmark: how long the pages, the JSON API and the review actions of ``datablame serve`` take.

The real server (uvicorn in a background thread, the app of ``create_app(workdir, user="bench")``) answers
``httpx`` requests over HTTP on 127.0.0.1, so each time includes routing, the guard, the store, JSON and the
socket. It serves a COPY of the workdir's store (SQLite backup into a temporary folder): the workdir is never
changed. ``--flag-all`` first flags every training example not flagged ``mislabeled`` yet in that copy (open scan
flags of the scan's run, in rank order, as ``record_scan(..., flag_top=1.0)`` would), to show that keyset pages
stay fast with as many flags as examples.

Measured, each as median and p95 ms over --repeats calls after one warm-up:

- pages: /flags (first page, sort suspicion), /flags?status=open, /run, /explain;
- api: /api/flags per sort (suspicion, id): the first page, page --deep-page (reached by walking the cursors, or
  the last page) and a text filter (text=the); /api/summary and a flag's /api/flags/{id}/history;
- actions: accept, relabel and reject of one flag with its expected version, each undone at once (/api/undo,
  timed as "undo"), so that every repeat starts from the same state;
- evidence: /api/flags/{id}/evidence cold (its first call loads the model and index) then warm over other flags;
  /api/explain of one text, first call and warm; the query-vector disk cache is off (each text is computed, as
  on a flag seen for the first time, and WORKDIR/cache is not written);
- bulk: accept every open flag with one suggested label (one filter action), then its undo, once each.

Targets (issue): under 100 ms per action, under 300 ms per page, on 2 cores, at 67k training examples;
``meets_targets`` compares the p95s (evidence and explain warm medians count as pages). Prints one JSON object
and writes it (atomically) to --out.

    HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/minilm python bench/serve.py --workdir WD [--repeats 20] \\
        [--action-repeats 30] [--flag-all] [--deep-page 50] [--out bench/results/serve.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import sqlite3
import sys
import tempfile
import threading
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from sqlalchemy import func, insert, literal, select  # noqa: E402

from datablame.cli.web.app import create_app  # noqa: E402
from datablame.cli.web.evidence import Evidence  # noqa: E402
from datablame.influence.atomic import atomic_write_json  # noqa: E402
from datablame.influence.workdir import Workdir  # noqa: E402
from datablame.store.db import open_db  # noqa: E402
from datablame.store.scans import find_dataset  # noqa: E402
from datablame.store.schema import Flag, Run, Score, utcnow  # noqa: E402

TARGETS = {"action_ms": 100, "page_ms": 300}
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


class UncachedEvidence(Evidence):
    """The app's explainer without its on-disk query cache: every text's query vector is computed (what a
    reviewer waits for on a flag not seen before), and the workdir's cache folder is left alone."""

    def _load(self):
        explainer = super()._load()
        explainer.cache = None
        return explainer


def copy_store(workdir: pathlib.Path, folder: pathlib.Path) -> str:
    """The URL of a consistent copy (SQLite backup, WAL included) of the workdir's store in ``folder``."""
    copy = folder / "datablame.db"
    with sqlite3.connect(workdir / "datablame.db") as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    return f"sqlite:///{copy}"


def flag_all(workdir: pathlib.Path, db_url: str) -> int:
    """Flag every example not yet flagged ``mislabeled`` as an open scan flag of the scan's run (the run of the
    existing scan flags, else the latest), in rank order; returns how many flags were added."""
    db = open_db(db_url)
    try:
        dataset = find_dataset(db, Workdir(workdir).load().data_fingerprint)
        with db.transaction() as session:
            run_id = session.scalar(select(Flag.run_id).where(Flag.dataset_id == dataset.id, Flag.source == "scan",
                                                              Flag.run_id.is_not(None))
                                    .group_by(Flag.run_id).order_by(func.count().desc())) \
                or session.scalar(select(Run.id).where(Run.dataset_id == dataset.id).order_by(Run.created_at.desc()))
            taken = select(Flag.example_id).where(Flag.dataset_id == dataset.id, Flag.kind == "mislabeled")
            now = utcnow()
            rows = (select(Score.dataset_id, Score.example_id, literal("mislabeled"), literal("scan"), Score.run_id,
                           Score.suggested_label, literal("open"), literal(""), literal(""), literal(now),
                           literal(now), literal(1))
                    .where(Score.run_id == run_id, Score.example_id.not_in(taken)).order_by(Score.rank))
            columns = ["dataset_id", "example_id", "kind", "source", "run_id", "suggested_label", "status", "note",
                       "who", "created_at", "updated_at", "version"]
            return session.execute(insert(Flag).from_select(columns, rows)).rowcount
    finally:
        db.close()


def count_examples(db_url: str) -> int:
    """How many training examples the (SQLite) store holds: all datasets', a workdir's store holds one."""
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as db:
        return int(db.execute("SELECT count(*) FROM examples").fetchone()[0])


def start_server(app) -> tuple[uvicorn.Server, threading.Thread, int]:
    """uvicorn serving ``app`` on a free loopback port, in a daemon thread; returns once it accepts requests."""
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets (without it, Nagle and delayed ACKs
    # add ~40 ms to every keep-alive request)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            sys.exit("the server did not start")
        time.sleep(0.05)
    return server, thread, port


def call(client: httpx.Client, method: str, url: str, body: dict | None = None) -> tuple[float, httpx.Response]:
    """(ms, response) of one request; anything but 2xx stops the benchmark."""
    start = time.perf_counter()
    response = client.request(method, url, json=body)
    ms = 1000 * (time.perf_counter() - start)
    if response.status_code >= 300:
        sys.exit(f"{method} {url} answered {response.status_code}: {response.text[:500]}")
    return ms, response


def stats(ms: list[float]) -> dict:
    """median_ms and p95_ms of some times (and how many)."""
    return {"median_ms": round(float(np.median(ms)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "n": len(ms)}


def repeat(client: httpx.Client, method: str, url: str, repeats: int, body: dict | None = None) -> dict:
    """stats of ``repeats`` calls after one warm-up."""
    call(client, method, url, body)
    return stats([call(client, method, url, body)[0] for _ in range(repeats)])


def deep_cursor(client: httpx.Client, sort: str, page: int) -> tuple[str | None, int]:
    """The cursor of page ``page`` (1-based) of /api/flags in ``sort`` order, or of the last page; and its
    number."""
    cursor, reached = None, 1
    while reached < page:
        found = call(client, "GET", f"/api/flags?sort={sort}" + (f"&after={cursor}" if cursor else ""))[1].json()
        if found["next"] is None:
            break
        cursor, reached = found["next"], reached + 1
    return cursor, reached


def measure_pages(client: httpx.Client, repeats: int) -> dict:
    """The HTML pages."""
    pages = {"flags": "/flags", "flags_open": "/flags?status=open", "run": "/run", "explain": "/explain"}
    return {name: repeat(client, "GET", url, repeats) for name, url in pages.items()}


def measure_api(client: httpx.Client, repeats: int, deep_page: int, flag_id: int) -> dict:
    """/api/flags pages per sort (first, deep, text filter), the summary and one flag's history."""
    out: dict = {}
    for sort in ("suspicion", "id"):
        cursor, reached = deep_cursor(client, sort, deep_page)
        out[f"{sort}_first"] = repeat(client, "GET", f"/api/flags?sort={sort}", repeats)
        out[f"{sort}_deep"] = {"page": reached, **repeat(client, "GET", f"/api/flags?sort={sort}"
                                                         + (f"&after={cursor}" if cursor else ""), repeats)}
        out[f"{sort}_text"] = repeat(client, "GET", f"/api/flags?sort={sort}&text=the", repeats)
    out["summary"] = repeat(client, "GET", "/api/summary", repeats)
    out["history"] = repeat(client, "GET", f"/api/flags/{flag_id}/history", repeats)
    return out


def measure_actions(client: httpx.Client, flags: list[dict], labels: list[str], repeats: int) -> dict:
    """accept, relabel and reject of one flag each (with its expected version), each undone at once."""
    given, suggested = flags[1]["label"], flags[1]["suggested_label"]
    label = suggested if suggested not in (None, given) else next(x for x in labels if x != given)
    cases = {"accept": (flags[0], {}), "relabel": (flags[1], {"label": label}), "reject": (flags[2], {})}
    out: dict = {}
    undo: list[float] = []
    for action, (flag, extra) in cases.items():
        version, times = flag["version"], []
        for i in range(repeats + 1):  # the first is the warm-up
            ms, response = call(client, "POST", "/api/review", {"action": action, "ids": [flag["id"]],
                                                                "expected": {str(flag["id"]): version}, **extra})
            version = response.json()["flags"][0]["version"]
            undo_ms, response = call(client, "POST", "/api/undo", {})
            version = response.json()["flags"][0]["version"]
            if i:
                times.append(ms)
                undo.append(undo_ms)
        out[action] = stats(times)
    out["undo"] = stats(undo)
    return out


def measure_evidence(client: httpx.Client, flags: list[dict], repeats: int) -> dict:
    """A flag's evidence, cold (the first call loads the explainer) then warm over other flags; /api/explain."""
    cold, _ = call(client, "GET", f"/api/flags/{flags[0]['id']}/evidence")
    problem = call(client, "GET", f"/api/flags/{flags[0]['id']}/evidence")[1].json()["problem"]
    warm = [call(client, "GET", f"/api/flags/{flags[1 + i % (len(flags) - 1)]['id']}/evidence")[0]
            for i in range(repeats)]
    texts = [f["text"] for f in flags]
    first, _ = call(client, "POST", "/api/explain", {"text": texts[0]})
    explain = [call(client, "POST", "/api/explain", {"text": texts[1 + i % (len(texts) - 1)]})[0]
               for i in range(repeats)]
    return {"cold_ms": round(cold, 1), "warm": stats(warm), "problem": problem,
            "explain_first_ms": round(first, 1), "explain_warm": stats(explain)}


def measure_bulk(client: httpx.Client, label: str) -> dict:
    """Accept every open flag suggesting ``label`` as one filter action, then undo it; once each."""
    ms, response = call(client, "POST", "/api/review", {"action": "accept",
                                                        "filter": {"status": "open", "suggested": label}})
    changed = response.json()["changed"]
    undo_ms, undone = call(client, "POST", "/api/undo", {}) if changed else (0.0, None)  # nothing to undo
    return {"suggested": label, "changed": changed, "accept_ms": round(ms, 1),
            "undone": undone.json()["changed"] if undone else 0, "undo_ms": round(undo_ms, 1)}


def meets(out: dict) -> dict:
    """Each target against the p95s: pages and API pages (and warm evidence / explain medians) under page_ms,
    single-flag actions and undo under action_ms."""
    page, action = TARGETS["page_ms"], TARGETS["action_ms"]
    found = {"pages": all(v["p95_ms"] < page for v in out["pages"].values()),
             "api": all(v["p95_ms"] < page for v in out["api"].values()),
             "actions": all(v["p95_ms"] < action for v in out["actions"].values()),
             "evidence_warm": out["evidence"]["warm"]["median_ms"] < page
             and out["evidence"]["explain_warm"]["median_ms"] < page}
    return {**found, "all": all(found.values())}


def run(args: argparse.Namespace, folder: pathlib.Path) -> dict:
    """Copy the store (flagging everything with --flag-all), serve it, measure."""
    workdir = args.workdir.resolve()
    db_url = copy_store(workdir, folder)
    added = flag_all(workdir, db_url) if args.flag_all else 0
    start = time.perf_counter()
    app = create_app(workdir, db_url, user="bench", evidence=UncachedEvidence(workdir))
    startup = time.perf_counter() - start
    server, thread, port = start_server(app)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600,
                          headers={"X-CSRF-Token": app.server.csrf}) as client:
            first = call(client, "GET", "/api/flags?limit=100")[1].json()
            flags, labels = first["flags"], app.server.dataset.label_names
            if len(flags) < 3:
                sys.exit(f"{workdir} has {len(flags)} flags: the benchmark needs 3 or more (run a scan)")
            out = {"workdir": str(workdir), "examples": count_examples(db_url), "flags": first["total"],
                   "flag_all": args.flag_all, "flags_added": added, "repeats": args.repeats,
                   "action_repeats": args.action_repeats, "cpus": len(os.sched_getaffinity(0)),
                   "torch_threads": torch.get_num_threads(), "create_app_s": round(startup, 2),
                   "load_average": [round(x, 2) for x in os.getloadavg()]}
            out["pages"] = measure_pages(client, args.repeats)
            out["api"] = measure_api(client, args.repeats, args.deep_page, flags[0]["id"])
            out["actions"] = measure_actions(client, flags, labels, args.action_repeats)
            out["evidence"] = measure_evidence(client, flags, args.repeats)
            open_flag = next((f for f in flags if f["status"] == "open" and f["suggested_label"]), flags[0])
            out["bulk"] = measure_bulk(client, open_flag["suggested_label"] or labels[0])
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    out["load_average_end"] = [round(x, 2) for x in os.getloadavg()]  # other work on the machine skews times
    out["targets"] = TARGETS
    out["meets_targets"] = meets(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=pathlib.Path, required=True, help="a scanned workdir with an index")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (after a warm-up)")
    parser.add_argument("--action-repeats", type=int, default=30, help="timed repeats of each review action")
    parser.add_argument("--flag-all", action="store_true", help="flag every training example first (in the copy)")
    parser.add_argument("--deep-page", type=int, default=50, help="the deep page of /api/flags (or the last)")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "serve.json", help="also write the JSON here")
    args = parser.parse_args()
    if not (args.workdir / "datablame.db").is_file():
        sys.exit(f"{args.workdir} has no store (datablame.db): run 'datablame scan {args.workdir}' first")
    with tempfile.TemporaryDirectory(prefix="datablame-serve-bench-") as tmp:
        result = run(args, pathlib.Path(tmp))
    print(json.dumps(result, indent=2))
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
