"""``datablame serve`` in headless Chromium (Playwright, Debian's Chromium): the real server on a scanned workdir,
driven the way a reviewer drives it: hotkeys, undo, bulk by filter, explain and flag, two reviewers on one flag,
export, hostile training texts. Skipped, with the reason, where Chromium cannot start."""

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from serve_helpers import HOSTILE, IMG, SCRIPT, review_copy, review_workdir  # noqa: F401 (fixtures)
from test_cli import datablame

from datablame.store import flags as store_flags

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if CHROMIUM is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium): the browser tests are skipped")
    with sync_api.sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except Exception as exc:  # noqa: BLE001 - any reason it cannot start is a reason to skip
            pytest.skip(f"Chromium does not start under Playwright: {str(exc).splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.fixture
def server(review_copy):
    """The real app under uvicorn in a thread on a free loopback port: (base URL, workdir)."""
    import uvicorn

    from datablame.cli.web.app import create_app

    app = create_app(review_copy, device="cpu", preload=False)  # the tests that need the model load it
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert instance.started, "the server did not start"
    port = instance.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", review_copy
    instance.should_exit = True
    thread.join(10)


def reviewer(browser, base: str, name: str, path: str = "/flags?status=open&sort=id"):
    """A new browser context that gave its name on the first visit, on ``path``; (context, page, dialogs seen)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    dialogs, errors = [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + path)
    page.fill("#user-input", name)
    page.click("#user-form button")
    page.wait_for_selector("#user-name")
    page.errors = errors
    return context, page, dialogs


def store(wd: Path):
    from datablame.influence.workdir import Workdir
    from datablame.store.db import default_url, open_db
    from datablame.store.scans import find_dataset

    db = open_db(default_url(wd))
    return db, find_dataset(db, Workdir(wd).load().data_fingerprint)


def status_of(page, row: int, status: str) -> None:
    page.wait_for_selector(f"#rows tr:nth-child({row + 1})[data-status='{status}']", timeout=15000)


def test_ten_flags_by_hotkeys_then_undo(browser, server):
    base, wd = server
    context, page, _ = reviewer(browser, base, "ann")
    page.wait_for_selector("#rows tr.current")
    ids = [int(x) for x in page.eval_on_selector_all("#rows tr", "rows => rows.map(r => r.dataset.id)")][:10]
    assert len(ids) == 10
    keys = ["a", "r", "2", "a", "a", "r", "1", "a", "r", "a"]  # 1, 2: relabel to the 1st, 2nd class
    done = {"a": "accepted", "r": "rejected", "1": "relabeled", "2": "relabeled"}
    for row, key in enumerate(keys):  # each action moves to the next row
        page.keyboard.press(key)
        status_of(page, row, done[key])
    page.keyboard.press("u")
    status_of(page, 9, "open")
    db, dataset = store(wd)
    now = {f.id: f for f in store_flags.list_flags(db, dataset)}
    assert [now[i].status for i in ids] == [done[k] for k in keys[:9]] + ["open"]
    labels = dataset.label_names  # key n relabels to the n-th class
    assert (now[ids[2]].reviewer_label, now[ids[6]].reviewer_label) == (labels[1], labels[0])
    assert all(now[i].who == "ann" for i in ids[:9])
    assert [e.action for e in store_flags.history(db, dataset, ids[9])] == ["undo", "accept"]
    assert not page.errors
    context.close()


def test_bulk_accept_by_filter(browser, server):
    base, wd = server
    context, page, _ = reviewer(browser, base, "ann", "/flags?status=open&suggested=tech")
    total = int(page.inner_text("#total"))
    assert total > 0
    page.check("#all-matching")
    page.click("#do-accept")
    from playwright.sync_api import expect

    expect(page.locator("#total")).to_have_text("0", timeout=15000)
    db, dataset = store(wd)
    accepted = store_flags.list_flags(db, dataset, status="accepted")
    assert len(accepted) == total and {f.suggested_label for f in accepted} == {"tech"}
    context.close()


def test_explain_a_text_and_flag_a_supporter(browser, server):
    base, wd = server
    context, page, _ = reviewer(browser, base, "bo", "/explain")
    page.fill("#text", "pasta soup dinner")
    page.click("#explain")
    page.wait_for_selector("#prediction")
    assert page.inner_text("#prediction") == "food"
    assert "> 0 supports the prediction" in page.inner_text(".sign")
    first = page.locator("#supporting tbody tr").first
    example = int(first.get_attribute("data-example"))
    page.fill("#flag-note", "all about food")
    first.locator("button.flag-biased").click()
    page.wait_for_selector("#supporting tbody tr:first-child button.flag-biased[disabled]")
    db, dataset = store(wd)
    flag = [f for f in store_flags.list_flags(db, dataset, kind="biased")]
    assert [(f.example_id, f.source, f.note, f.who) for f in flag] == [(example, "explain", "all about food", "bo")]
    context.close()


def test_two_reviewers_on_one_flag_one_wins_the_other_sees_409(browser, server):
    base, wd = server
    context_a, a, _ = reviewer(browser, base, "ann")
    context_b, b, _ = reviewer(browser, base, "bob")
    for page in (a, b):
        page.wait_for_selector("#rows tr.current")
    flag = int(a.get_attribute("#rows tr.current", "data-id"))
    assert int(b.get_attribute("#rows tr.current", "data-id")) == flag
    a.keyboard.press("a")
    status_of(a, 0, "accepted")
    b.keyboard.press("r")  # bob still sees it open
    b.wait_for_selector("#rows tr:first-child.conflict[data-status='accepted']")
    assert "changed since you saw it" in b.inner_text("#toast")
    db, dataset = store(wd)
    now = store_flags.get_flags(db, dataset, [flag])[0]
    assert (now.status, now.who, now.version) == ("accepted", "ann", 2)
    context_a.close()
    context_b.close()


def test_export_from_the_run_page_matches_the_cli(browser, server):
    base, wd = server
    context, page, _ = reviewer(browser, base, "ann")
    page.wait_for_selector("#rows tr.current")
    page.keyboard.press("a")
    status_of(page, 0, "accepted")
    page.goto(base + "/run")
    page.wait_for_selector("#counts-table")
    assert page.inner_text("#counts-table tr[data-kind='mislabeled'] td[data-status='accepted']") == "1"
    page.fill("#out", str(wd / "from-page.csv"))
    page.click("#export")
    page.wait_for_selector("#export-done")
    r = datablame("export", wd, "--out", wd / "from-cli.csv")
    assert r.returncode == 0, r.stderr
    for suffix in (".csv", ".changes.csv"):
        assert (wd / f"from-page{suffix}").read_bytes() == (wd / f"from-cli{suffix}").read_bytes()
    page.click("#export")  # again: export replaces its own file, as the CLI does
    page.wait_for_selector("#export-done")
    page.fill("#out", str(wd / "config.json"))
    page.select_option("#format", "csv")
    page.click("#export")
    page.wait_for_selector("#export-error")
    assert "workdir's own files" in page.inner_text("#export-error") or "refus" in page.inner_text("#export-error")
    context.close()


def test_hostile_training_texts_render_inert(browser, server):
    base, _ = server
    context, page, dialogs = reviewer(browser, base, "ann", "/flags?sort=id")
    page.wait_for_selector("#rows tr")
    for text in HOSTILE.values():
        assert page.get_by_text(text, exact=True).count() >= 1  # shown as the literal text
    row = page.locator("#rows tr", has_text=SCRIPT).first
    row.click()
    page.wait_for_selector("#evidence h3")
    page.goto(base + "/explain")
    page.fill("#text", IMG)
    page.click("#explain")
    page.wait_for_selector("#prediction")
    assert page.locator("img[onerror]").count() == 0 and page.locator("script:not([src]):not([type])").count() == 0
    assert dialogs == [] and page.evaluate("window.pwned === undefined")
    assert not page.errors
    context.close()


def test_screenshot_of_the_flags_page(browser, server, tmp_path):
    """The README's picture: the flags page with a row's evidence open (written to $DATABLAME_SCREENSHOTS when
    set)."""
    from matplotlib.image import imread

    base, _ = server
    context, page, _ = reviewer(browser, base, "ann", "/flags")
    page.wait_for_selector("#rows tr.current")
    page.keyboard.press("j")
    page.keyboard.press("Enter")
    page.wait_for_selector("#evidence h3")
    shot = Path(os.environ.get("DATABLAME_SCREENSHOTS") or tmp_path) / "serve-flags.png"
    page.screenshot(path=str(shot))
    image = imread(shot)[..., :3]
    assert image.shape[:2] == (900, 1400) and (image < 0.95).any(axis=-1).mean() > 0.05
    context.close()
