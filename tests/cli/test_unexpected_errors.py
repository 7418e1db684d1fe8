"""A bug (any exception other than DatablameError) reaching the CLI: one line naming it and where to report it,
exit status 1; with -v its traceback first."""

import pytest
from typer.testing import CliRunner

from datablame.cli.errors import ISSUES_URL
from datablame.cli.main import app

BUG = f"this is a bug in datablame; rerun with -v for the traceback and report it at {ISSUES_URL}"


def broken(*args, **kwargs):
    raise RuntimeError("index file\n  is corrupt")


@pytest.fixture
def broken_explainer(monkeypatch):
    monkeypatch.setattr("datablame.index.explain.Explainer.__init__", broken)


def test_unexpected_error_is_one_line(broken_explainer, tmp_path):
    r = CliRunner().invoke(app, ["explain", str(tmp_path), "goal team", "--method", "tracin"])
    assert r.exit_code == 1, r.output
    assert r.stderr.splitlines() == [f"error: unexpected RuntimeError: index file is corrupt ({BUG})"]
    assert r.stdout == ""


def test_verbose_shows_the_traceback(broken_explainer, tmp_path):
    r = CliRunner().invoke(app, ["explain", str(tmp_path), "goal team", "--method", "tracin", "-v"])
    assert r.exit_code == 1, r.output
    lines = r.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):" and any("in broken" in line for line in lines)
    assert lines[-1] == ("error: unexpected RuntimeError: index file is corrupt (this is a bug in datablame; "
                         f"report it with the traceback above at {ISSUES_URL})")


def test_command_without_verbose_option():
    import typer

    from datablame.cli.errors import report_errors

    @report_errors
    def without_verbose() -> None:
        broken()

    quiet_app = typer.Typer()  # every datablame command has -v: one made for the test has none
    quiet_app.command()(without_verbose)
    r = CliRunner().invoke(quiet_app, [])
    assert r.exit_code == 1, r.output
    assert r.stderr.splitlines() == [f"error: unexpected RuntimeError: index file is corrupt (this is a bug in "
                                     f"datablame; report it at {ISSUES_URL})"]


def test_the_frameworks_own_exit_is_not_a_bug(monkeypatch, tmp_path):
    import typer

    def stop(*args, **kwargs):
        raise typer.Exit(3)

    monkeypatch.setattr("datablame.index.explain.Explainer.__init__", stop)
    r = CliRunner().invoke(app, ["explain", str(tmp_path), "goal team", "--method", "tracin"])
    assert r.exit_code == 3 and "bug" not in r.output
