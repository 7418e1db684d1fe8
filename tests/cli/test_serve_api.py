"""``datablame serve``'s app through Starlette's test client: pages, the review API (stale writes, undo, bulk by
filter, keyset pages), evidence, explain, flagging from an explanation, export as the CLI does it, and the guard
(hosts, token, CSRF, escaping)."""

import csv
import re

import pytest
from serve_helpers import HOSTILE, IMG, SCRIPT, review_copy, review_workdir  # noqa: F401 (fixtures)
from starlette.testclient import TestClient
from test_cli import datablame

from datablame.cli.web.app import create_app
from datablame.store import flags as store_flags
from datablame.store.db import default_url, open_db
from datablame.store.scans import find_dataset


@pytest.fixture
def served(review_copy):
    app = create_app(review_copy, allowed_hosts=("testserver",), device="cpu")
    with TestClient(app) as client:
        client.post("/api/user", json={"name": "ann"}, headers=csrf(app))
        yield app, client, review_copy


def csrf(app) -> dict:
    return {"X-CSRF-Token": app.server.csrf}


def store(wd):
    from datablame.influence.workdir import Workdir

    db = open_db(default_url(wd))
    return db, find_dataset(db, Workdir(wd).load().data_fingerprint)


def test_pages_render_and_user_text_is_never_markup(served):
    app, client, _ = served
    for path in ("/flags", "/flags?status=open&sort=id", "/explain", "/run", "/static/flags.js", "/report.css"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert "default-src 'self'" in r.headers["content-security-policy"]
    page = client.get("/flags").text
    assert "<script>alert" not in page and "<img src=x" not in page  # the hostile texts travel as escaped JSON
    assert "\\u003cscript\\u003ealert" in page
    assert not re.search(r'src="(https?:)?//', page), "every asset is served by the app itself"
    assert client.get("/plots/../config.json").status_code == 404


def test_review_stale_write_undo_and_history(served):
    app, client, wd = served
    first = client.get("/api/flags", params={"status": "open", "limit": 2}).json()
    a, b = first["flags"]
    r = client.post("/api/review", json={"action": "accept", "ids": [a["id"]], "expected": {a["id"]: a["version"]}},
                    headers=csrf(app))
    assert r.status_code == 200 and r.json()["flags"][0]["status"] == "accepted" and r.json()["flags"][0]["who"] == "ann"
    # a second reviewer who saw the old version gets 409 and the flag as it is now; nothing is written
    r = client.post("/api/review", json={"action": "reject", "ids": [a["id"]], "expected": {a["id"]: a["version"]}},
                    headers=csrf(app))
    assert r.status_code == 409 and r.json()["current"][0]["status"] == "accepted"
    r = client.post("/api/review", json={"action": "relabel", "label": "tech", "ids": [b["id"]],
                                         "expected": {b["id"]: b["version"]}}, headers=csrf(app))
    assert r.json()["flags"][0]["reviewer_label"] == "tech"
    r = client.post("/api/undo", json={}, headers=csrf(app))
    assert r.status_code == 200 and r.json()["flags"][0]["status"] == "open"
    history = client.get(f"/api/flags/{b['id']}/history").json()
    assert [(h["action"], h["who"]) for h in history] == [("undo", "ann"), ("relabel", "ann")]
    db, dataset = store(wd)
    now = {f.id: f for f in store_flags.list_flags(db, dataset)}
    assert (now[a["id"]].status, now[b["id"]].status, now[b["id"]].reviewer_label) == ("accepted", "open", None)


def test_bulk_accept_by_filter_and_keyset_pages(served):
    app, client, wd = served
    where = {"status": "open", "suggested": "tech"}
    matching = client.get("/api/flags", params={**where, "limit": 500}).json()
    walked, after = [], ""
    while True:
        page = client.get("/api/flags", params={**where, "limit": 3, "after": after}).json()
        assert page["total"] == (matching["total"] if not after else None)
        walked += [f["id"] for f in page["flags"]]
        if not page["next"]:
            break
        after = page["next"]
    assert walked == [f["id"] for f in matching["flags"]] and len(walked) == matching["total"] > 0
    r = client.post("/api/review", json={"action": "accept", "filter": where}, headers=csrf(app))
    assert r.json()["changed"] == matching["total"]
    db, dataset = store(wd)
    assert {f.id for f in store_flags.list_flags(db, dataset, status="accepted")} == set(walked)


def test_evidence_explain_and_flag_from_an_explanation(served):
    app, client, _ = served
    flag = client.get("/api/flags").json()["flags"][0]
    r = client.get(f"/api/flags/{flag['id']}/evidence").json()
    e = r["evidence"]
    assert r["problem"] == "" and e["method"] == "tracin" and r["scan"]["rank"] >= 0
    assert set(e["probabilities"]) == {"sports", "food", "tech"}
    assert abs(sum(e["probabilities"].values()) - 1) < 1e-3 and e["self_influence"] > 0
    listed = e["supporting"] + e["opposing"]
    assert listed and flag["example_id"] not in {n["id"] for n in listed}
    assert all(n["label"] in ("sports", "food", "tech") for n in listed)
    assert [n["score"] for n in e["supporting"]] == sorted((n["score"] for n in e["supporting"]), reverse=True)
    r = client.post("/api/explain", json={"text": "pasta soup dinner", "top": 3}, headers=csrf(app)).json()
    assert r["prediction"]["label"] == "food" and len(r["supporting"]) == 3 and "> 0 supports" in r["sign"]
    supporter = r["supporting"][0]["id"]
    r = client.post("/api/flag-example", json={"example_id": supporter, "kind": "biased", "note": "stereotype"},
                    headers=csrf(app))
    assert r.status_code == 200 and r.json()["flags"][0]["source"] == "explain"
    again = client.post("/api/flag-example", json={"example_id": supporter, "kind": "biased"}, headers=csrf(app))
    assert again.status_code == 400 and "already flagged biased" in again.json()["error"]
    agg = client.post("/api/explain", json={"texts": ["pasta soup", "goal match", ""], "aggregate": True},
                      headers=csrf(app)).json()
    assert sum(agg["prediction"]["counts"].values()) == 2


def test_export_writes_what_the_cli_writes(served):
    app, client, wd = served
    flag = client.get("/api/flags").json()["flags"][0]
    client.post("/api/review", json={"action": "accept", "ids": [flag["id"]]}, headers=csrf(app))
    r = client.post("/api/export", json={"out": "from-app.csv"}, headers=csrf(app)).json()
    assert r["relabeled"] == 1 and r["out"] == str(wd.resolve() / "from-app.csv")
    cli = datablame("export", wd, "--out", wd / "from-cli.csv")
    assert cli.returncode == 0, cli.stderr
    for suffix in (".csv", ".changes.csv"):
        assert (wd / f"from-app{suffix}").read_bytes() == (wd / f"from-cli{suffix}").read_bytes()
    refused = client.post("/api/export", json={"out": str(wd / "config.json"), "format": "csv", "force": True},
                          headers=csrf(app))
    assert refused.status_code == 400 and "workdir's own files" in refused.json()["error"]
    with open(wd / "from-app.csv", newline="") as fh:
        texts = {row["text"] for row in csv.DictReader(fh)}
    assert {SCRIPT, IMG} <= texts


def test_writes_need_the_csrf_token_a_name_and_post(served, review_copy):
    app, client, _ = served
    flag = client.get("/api/flags").json()["flags"][0]
    body = {"action": "accept", "ids": [flag["id"]]}
    assert client.post("/api/review", json=body).status_code == 403
    assert client.post("/api/review", json=body, headers={"X-CSRF-Token": "guess"}).status_code == 403
    assert client.get("/api/review").status_code == 405
    anonymous = TestClient(create_app(review_copy, allowed_hosts=("testserver",), device="cpu"))
    r = anonymous.post("/api/review", json=body, headers=csrf(anonymous.app))
    assert r.status_code == 400 and "no reviewer name" in r.json()["error"]
    assert client.post("/api/review", json={"action": "maybe", "ids": [1]}, headers=csrf(app)).status_code == 400
    assert client.post("/api/review", content=b"not json", headers=csrf(app)).status_code == 400


def test_hosts_and_the_access_token(review_copy):
    local = TestClient(create_app(review_copy, device="cpu"))  # loopback names only
    assert local.get("/flags").status_code == 421
    assert local.get("/flags", headers={"host": "127.0.0.1:8765"}).status_code == 200
    team = create_app(review_copy, token="s3cret", allowed_hosts=None, device="cpu")
    client = TestClient(team)
    assert client.get("/flags").status_code == 401 and client.get("/api/flags").status_code == 401
    r = client.get("/flags?token=s3cret&status=open", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/flags?status=open" and "s3cret" not in r.headers["location"]
    assert client.get("/flags?status=open").status_code == 200  # the cookie carries it now
    assert TestClient(team).get("/flags?token=wrong").status_code == 401
    assert TestClient(team).get("/flags", headers={"cookie": 'broken="\\'}).status_code == 401  # not a 500


def test_serve_refuses_a_folder_that_is_no_workdir(tmp_path):
    r = datablame("serve", tmp_path, "--port", "0")
    assert r.returncode == 2 and "not a datablame workdir" in r.stderr and "Traceback" not in r.stderr
