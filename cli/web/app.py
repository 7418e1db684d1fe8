"""The Starlette app of ``datablame serve``: three pages over the store and the index, and their JSON API.

Pages (Jinja2, autoescaped; the rows are drawn by ``static/*.js`` from JSON, with ``textContent`` only):

    /flags     flagged examples: filters, sort, keyset pages, checkboxes, hotkeys, the evidence of a row
    /explain   a text (or a list, as one aggregate): prediction, supporting and opposing training examples
    /run       the report's summary, flag counts (refreshed), plots, and the export form

API (JSON; writes are POSTs with the CSRF header, see :mod:`.guard`; the reviewer is ``--user`` or the name
the page asked for, kept in a cookie):

    GET  /api/flags?status&kind&label&suggested&source&text&sort&after&limit    one page (store.flags.page_flags)
    POST /api/review        {action: accept|reject|reopen|relabel, label?, note?, ids, expected} or {…, filter}
    POST /api/undo          the reviewer's latest review action
    GET  /api/flags/{id}/evidence, /api/flags/{id}/history
    POST /api/explain       {text} or {texts, aggregate: true}, top?
    POST /api/flag-example  {example_id, kind, note?, label?}
    GET  /api/summary       flag counts by kind and status
    POST /api/export        {out?, format?, drop?, force?}: what 'datablame export' writes
    POST /api/user          {name}

A user error answers 400 ``{"error": …}``; a stale write (someone changed the flag first) answers 409
``{"error": …, "current": [flags as they are now]}`` and writes nothing; a write to a read-only store, 403.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import secrets
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from datablame.influence.errors import DatablameError
from datablame.influence.workdir import Workdir
from datablame.store import flags as store_flags
from datablame.store.db import Database, default_url, open_db
from datablame.store.export import export
from datablame.store.flags import FlagFilter, StaleFlag
from datablame.store.scans import ensure_dataset, find_dataset
from datablame.store.schema import FLAG_KINDS, FLAG_STATUSES, Dataset, Example, Flag, Score

from .evidence import Evidence
from .guard import LOOPBACK_NAMES, Guard

USER_COOKIE = "datablame_user"
PAGE_SIZE = 50
MAX_PAGE = 500
STATIC = Path(__file__).parent / "static"


@dataclass
class Server:
    """What every request shares: the workdir, its store and dataset (None before a scan when the store is
    read-only), the fixed reviewer (None: each browser names its own), the CSRF token, the explainer."""

    workdir: Path
    db: Database
    dataset: Dataset | None
    user: str | None
    csrf: str
    evidence: Evidence
    db_url: str

    def require_dataset(self) -> Dataset:
        if self.dataset is None:
            raise DatablameError("this store has no data of this workdir yet",
                                 f"run 'datablame scan {self.workdir}' first")
        return self.dataset


def _open_dataset(workdir: Path, db: Database) -> Dataset | None:
    """The workdir's dataset in the store, registered first when the store can be written."""
    config = Workdir(workdir).load()
    try:
        return find_dataset(db, config.data_fingerprint)
    except DatablameError:
        if db.read_only:
            return None
    ensure_dataset(db, Workdir(workdir).load_examples(config))
    return find_dataset(db, config.data_fingerprint)


def _dumps(value: Any) -> str:
    """JSON text of API values: dataclasses as objects, datetimes in ISO format; NaN refused, as JSON has none."""
    return json.dumps(value, default=_plain, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _json(value: Any, status: int = 200) -> Response:
    return Response(_dumps(value), status_code=status, media_type="application/json")


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds")
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _error(exc: DatablameError) -> Response:
    if isinstance(exc, StaleFlag):
        return _json({"error": str(exc), "current": exc.current}, 409)
    return _json({"error": str(exc)}, 400)


def handled(fn):
    """Endpoint decorator: ``fn(request, body)`` (body: the JSON object of a POST, else {}) runs in the thread
    pool, so that the store and the model do not hold up the event loop; a DatablameError becomes its JSON answer
    (400, or 409 for a stale write)."""
    async def endpoint(request: Request) -> Response:
        try:
            body = await _body(request) if request.method == "POST" else {}
            return await run_in_threadpool(fn, request, body)
        except DatablameError as exc:
            return _error(exc)
    return endpoint


async def _body(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise DatablameError("the request body is not JSON", "send a JSON object") from None
    if not isinstance(body, dict):
        raise DatablameError("the request body is not a JSON object", "send a JSON object")
    return body


def _server(request: Request) -> Server:
    return request.app.state.server


def _named(request: Request) -> str:
    """The reviewer: ``--user``, else the name this browser gave ("" before it gave one)."""
    return _server(request).user or urllib.parse.unquote(request.cookies.get(USER_COOKIE, "")).strip()


def reviewer(request: Request) -> str:
    """Who acts (:func:`_named`); a write without a name is refused."""
    name = _named(request)
    if not name:
        raise DatablameError("no reviewer name", "give your name on the page (it goes into the review log)")
    return name


def _writable(server: Server) -> Dataset:
    if server.db.read_only:
        raise DatablameError(f"the store {server.db.name} is read-only", server.db.read_only)
    return server.require_dataset()


def _filter(params) -> FlagFilter:
    return FlagFilter(**{f: params.get(f) or None for f in ("status", "kind", "label", "suggested", "source", "text")})


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DatablameError(f"{what} {value!r} is not a whole number", f"give {what} as a number") from None


# ------------------------------------------------------------------------------------------------ pages


def _page(request: Request, template: str, **context) -> HTMLResponse:
    server, user = _server(request), _named(request)
    labels = server.dataset.label_names if server.dataset else Workdir(server.workdir).load().label_names
    html = request.app.state.templates.get_template(template).render(
        workdir=str(server.workdir), user=user, fixed_user=server.user is not None, csrf=server.csrf,
        labels=labels, read_only=server.db.read_only, scanned=server.dataset is not None,
        page=template.split(".")[0], **context)
    return HTMLResponse(html)


def flags_page(request: Request) -> HTMLResponse:
    server = _server(request)
    where, sort = _filter(request.query_params), request.query_params.get("sort") or "suspicion"
    try:
        first = store_flags.page_flags(server.db, server.dataset, where, sort, limit=PAGE_SIZE) \
            if server.dataset else store_flags.FlagPage([], None, 0)
        problem = ""
    except DatablameError as exc:
        first, problem = store_flags.FlagPage([], None, 0), str(exc)
    return _page(request, "flags.html", where=asdict(where), sort=sort, sorts=store_flags.SORTS,
                 statuses=FLAG_STATUSES, kinds=FLAG_KINDS, problem=problem,
                 first=json.loads(_dumps(first)))


def explain_page(request: Request) -> HTMLResponse:
    return _page(request, "explain.html", kinds=FLAG_KINDS)


def run_page(request: Request) -> HTMLResponse:
    from datablame.cli.report import _demo_section, _details_section, _summary_cards, gather

    server = _server(request)
    summary, _, plots, demo = gather(server.workdir, server.db_url, with_flags=False)
    by_status: dict[str, int] = {}
    for statuses in _counts(server).values():
        for status, n in statuses.items():
            by_status[status] = by_status.get(status, 0) + n
    return _page(request, "run.html", summary=Markup(_summary_cards(summary, by_status)),
                 details=Markup(_details_section(summary)), demo=Markup(_demo_section(demo)),
                 plots=[(p.name, p.caption) for p in plots], default_out=str(server.workdir / "cleaned.csv"))


def report_css(request: Request) -> Response:
    from datablame.cli.report import STYLE

    return Response(STYLE, media_type="text/css")


def plot(request: Request) -> Response:
    name = request.path_params["name"]
    folder = Workdir(_server(request).workdir).plots_dir
    path = folder / name
    if Path(name).name != name or path.suffix != ".png" or not path.is_file():
        return Response("no such plot", status_code=404)
    return FileResponse(path, media_type="image/png")


# ------------------------------------------------------------------------------------------------ API


@handled
def api_flags(request: Request, body: dict) -> Response:
    server = _server(request)
    params = request.query_params
    limit = min(max(_int(params.get("limit", PAGE_SIZE), "limit"), 1), MAX_PAGE)
    page = store_flags.page_flags(server.db, server.require_dataset(), _filter(params),
                                  params.get("sort") or "suspicion", params.get("after") or None, limit)
    return _json(page)


@handled
def api_review(request: Request, body: dict) -> Response:
    server = _server(request)
    dataset, who = _writable(server), reviewer(request)
    action = body.get("action")
    statuses = {"accept": "accepted", "reject": "rejected", "reopen": "open"}
    if action not in (*statuses, "relabel"):
        raise DatablameError(f"unknown action {action!r}", "use accept, reject, reopen or relabel")
    if "filter" in body:
        if action == "relabel" or not isinstance(body["filter"], dict):
            raise DatablameError("a filter takes accept, reject or reopen", "relabel selected rows instead")
        where = _filter(body["filter"])
        changed = store_flags.set_status_matching(server.db, dataset, where, statuses[action], who)
        return _json({"changed": changed})
    ids = [_int(i, "flag id") for i in body.get("ids") or []]
    expected = {_int(k, "flag id"): _int(v, "version") for k, v in (body.get("expected") or {}).items()}
    if action == "relabel":
        changed = store_flags.relabel(server.db, dataset, ids, str(body.get("label")), who, body.get("note"),
                                      expected)
    else:
        changed = store_flags.set_status(server.db, dataset, ids, statuses[action], who, expected)
    return _changed(server, dataset, ids, changed)


@handled
def api_undo(request: Request, body: dict) -> Response:
    server = _server(request)
    dataset = _writable(server)
    ids = store_flags.undo(server.db, dataset, reviewer(request))
    return _changed(server, dataset, ids, len(ids))


def _changed(server: Server, dataset: Dataset, ids: list[int], changed: int) -> Response:
    """An action's answer: how many flags changed, and the flags as they are now (None past MAX_PAGE of them:
    the page reloads instead)."""
    return _json({"changed": changed,
                  "flags": store_flags.get_flags(server.db, dataset, ids) if len(ids) <= MAX_PAGE else None})


def _flag_and_example(server: Server, flag_id: int) -> tuple[store_flags.FlagView, Example, dict | None]:
    dataset = server.require_dataset()
    found = store_flags.get_flags(server.db, dataset, [flag_id])
    if not found:
        raise DatablameError(f"unknown flag id {flag_id}", "reload the page")
    flag = found[0]
    with server.db.transaction() as session:
        example = session.get(Example, (dataset.id, flag.example_id))
        row = session.execute(select(Score).join(Flag, (Flag.run_id == Score.run_id)
                                                 & (Flag.example_id == Score.example_id))
                              .where(Flag.id == flag_id)).scalar_one_or_none()
        scan = None if row is None else {
            "rank": row.rank, "score": row.score, "label_probability": row.label_probability,
            "suggested_label": dataset.label_names[row.suggested_label], "self_influence": row.self_influence}
    return flag, example, scan


@handled
def api_evidence(request: Request, body: dict) -> Response:
    server = _server(request)
    flag, example, scan = _flag_and_example(server, _int(request.path_params["flag_id"], "flag id"))
    text = example.text if example.text_pair is None else (example.text, example.text_pair)
    try:
        found, problem = server.evidence.for_example(text, flag.example_id), ""
    except DatablameError as exc:
        found, problem = None, str(exc)
    return _json({"flag": flag, "scan": scan, "evidence": found, "problem": problem})


@handled
def api_history(request: Request, body: dict) -> Response:
    server = _server(request)
    return _json(store_flags.history(server.db, server.require_dataset(),
                                     _int(request.path_params["flag_id"], "flag id")))


@handled
def api_explain(request: Request, body: dict) -> Response:
    server = _server(request)
    aggregate = bool(body.get("aggregate"))
    texts = [str(t) for t in body.get("texts") or []] if aggregate else [str(body.get("text") or "")]
    texts = [t for t in (t.strip() for t in texts) if t]
    if not texts:
        raise DatablameError("no text to explain", "type a text, or one per line with 'aggregate'")
    top = min(max(_int(body.get("top", 10), "top"), 1), 100)
    return _json(server.evidence.explain(texts, aggregate, top))


@handled
def api_flag_example(request: Request, body: dict) -> Response:
    server = _server(request)
    dataset = _writable(server)
    flag_id = store_flags.add_flag(server.db, dataset, _int(body.get("example_id"), "example id"),
                                   str(body.get("kind")), str(body.get("note") or ""), "explain",
                                   body.get("label") or None, reviewer(request))
    return _json({"flags": store_flags.get_flags(server.db, dataset, [flag_id])})


def _counts(server: Server) -> dict[str, dict[str, int]]:
    """{kind: {status: flags}} of the workdir's dataset, from one GROUP BY."""
    counts: dict[str, dict[str, int]] = {}
    if server.dataset is not None:
        with server.db.transaction() as session:
            for kind, status, n in session.execute(
                    select(Flag.kind, Flag.status, func.count()).where(Flag.dataset_id == server.dataset.id)
                    .group_by(Flag.kind, Flag.status)):
                counts.setdefault(kind, {})[status] = n
    return counts


@handled
def api_summary(request: Request, body: dict) -> Response:
    return _json({"counts": _counts(_server(request))})


@handled
def api_export(request: Request, body: dict) -> Response:
    server = _server(request)
    out = Path(str(body.get("out") or "cleaned.csv")).expanduser()
    out = out if out.is_absolute() else server.workdir / out
    report = export(server.db, server.require_dataset(), out, body.get("format") or None, bool(body.get("drop")),
                    server.workdir, bool(body.get("force")))
    return _json({"rows": report.rows, "relabeled": report.relabeled, "dropped": report.dropped,
                  "out": str(report.out), "changes": str(report.changes_path)})


@handled
def api_user(request: Request, body: dict) -> Response:
    name = " ".join(str(body.get("name") or "").split())[:200]
    if not name:
        raise DatablameError("no name given", "type your name")
    response = _json({"user": name})
    response.set_cookie(USER_COOKIE, urllib.parse.quote(name), samesite="strict", max_age=365 * 24 * 3600)
    return response


def create_app(workdir: str | Path, db_url: str | None = None, user: str | None = None, token: str | None = None,
               allowed_hosts: tuple[str, ...] | None = LOOPBACK_NAMES, device: str = "auto",
               evidence: Evidence | None = None, preload: bool = True) -> ASGIApp:
    """The app over the workdir's store (``db_url``, default its SQLite file) and index.

    user: the reviewer of every action (None: each browser gives a name); token: required on every request
    (None: no token); allowed_hosts: the Host names served (None: any); preload: load the explainer in the
    background at start (else on the first evidence or explanation asked for)."""
    workdir = Path(workdir).resolve()
    db_url = db_url or default_url(workdir)
    db = open_db(db_url, write=False)  # a read-only store is served for reading
    server = Server(workdir, db, _open_dataset(workdir, db), user, secrets.token_urlsafe(24),
                    evidence or Evidence(workdir, device), db_url)
    routes = [
        Route("/", lambda request: RedirectResponse("/flags", status_code=303)),
        Route("/flags", flags_page), Route("/explain", explain_page), Route("/run", run_page),
        Route("/plots/{name}", plot), Route("/report.css", report_css),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api/flags", api_flags), Route("/api/review", api_review, methods=["POST"]),
        Route("/api/undo", api_undo, methods=["POST"]),
        Route("/api/flags/{flag_id}/evidence", api_evidence), Route("/api/flags/{flag_id}/history", api_history),
        Route("/api/explain", api_explain, methods=["POST"]),
        Route("/api/flag-example", api_flag_example, methods=["POST"]),
        Route("/api/summary", api_summary), Route("/api/export", api_export, methods=["POST"]),
        Route("/api/user", api_user, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if preload:
            server.evidence.warm()  # loads the model in the background: the first evidence comes sooner
        yield
        db.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.server = server
    app.state.templates = Environment(loader=PackageLoader("datablame.cli.web"), autoescape=select_autoescape())
    guarded = Guard(app, server.csrf, token, allowed_hosts)
    guarded.server = server
    return guarded
