"""Everyday use of the command line: every command takes -q and -v (-q silences the messages on stderr, never the
result on stdout), and the tables of ``flags list`` and ``scan`` fit the terminal: one line per row at 80 columns,
the text cut with "…"."""

import json
import logging
import shutil

import pytest
import typer
from conftest import make_rows, write_csv
from datablame.cli.main import app
from rich.cells import cell_len
from typer.testing import CliRunner

# the flags that the workdir fixture makes: id → (example id, status, label → label shown, kind)
FLAGS = {1: (1, "accepted", "food → tech", "mislabeled"), 2: (4, "relabeled", "food → tech", "mislabeled"),
         3: (5, "open", "tech", "biased"), 4: (7, "open", "food → sports", "mislabeled")}
NOTE = "a note long enough to be cut at eighty columns, about why this label is wrong"


def invoke(*args, columns: int = 80):
    r = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})
    assert r.exit_code == 0, (r.output, r.exception)
    return r


@pytest.fixture(scope="module")
def workdir(tiny_bert, tmp_path_factory):
    """A workdir made by ``init`` from the untrained tiny BERT over 12 examples whose texts are long, span lines
    and hold rich markup; with the flags of FLAGS (example 4 relabeled by its reviewer, with a note)."""
    folder = tmp_path_factory.mktemp("everyday")
    rows = [{**row, "text": f"[bold]{row['text']}[/x]\n" + " ".join([row["text"]] * 4)} for row in make_rows(12)]
    wd = folder / "wd"
    invoke("init", wd, "--data", write_csv(folder / "train.csv", rows), "--checkpoint", tiny_bert, "-q")
    invoke("flags", wd, "add", "1", "--kind", "mislabeled", "--label", "tech", "-q")
    invoke("flags", wd, "add", "4", "--kind", "mislabeled", "--label", "sports", "-q")
    invoke("flags", wd, "add", "5", "--kind", "biased", "-q")
    invoke("flags", wd, "add", "7", "--kind", "mislabeled", "--label", "sports", "-q")
    invoke("flags", wd, "accept", "1", "-q")
    invoke("flags", wd, "relabel", "2", "--label", "tech", "--note", NOTE, "-q")
    return wd


@pytest.fixture
def scratch(workdir, tmp_path):
    """A copy of the workdir, for commands that change it."""
    return shutil.copytree(workdir, tmp_path / "wd")


def table_rows(output: str, width: int) -> list[list[str]]:
    """The body rows of a rich table, as stripped cells, after checking that no line is wider than ``width``."""
    lines = output.splitlines()
    assert lines and all(cell_len(line) <= width for line in lines), output
    return [[cell.strip() for cell in line.strip("│").split("│")] for line in lines if line.startswith("│")]


def leaf_commands(command, name="datablame"):
    """(name, click command) of every command that runs something: subcommands of groups, not the groups."""
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        return [(name, command)]
    return [leaf for sub_name, sub in subcommands.items() for leaf in leaf_commands(sub, f"{name} {sub_name}")]


def test_every_command_takes_quiet_and_verbose():
    commands = leaf_commands(typer.main.get_command(app))
    names = {name for name, _ in commands}
    assert {"datablame report", "datablame export", "datablame flags list", "datablame flags add"} <= names
    for name, command in commands:
        options = {o for param in command.params for o in param.opts}
        assert {"-q", "--quiet", "-v", "--verbose"} <= options, name


def test_flags_list_is_one_line_per_flag_at_80_columns(workdir):
    flags = json.loads(invoke("flags", workdir, "list", "--json").stdout)
    r = invoke("flags", workdir, "list")
    header = next(line for line in r.stdout.splitlines() if line.startswith("┃"))
    assert [c.strip() for c in header.strip("┃").split("┃")] == ["id", "example", "status", "label → suggested",
                                                                 "kind", "text"]  # kind: the flags' kinds differ
    rows = table_rows(r.stdout, 80)
    assert len(rows) == len(flags) == len(FLAGS)
    assert max(cell_len(line) for line in r.stdout.splitlines()) == 80  # the text takes the width left
    for row, flag in zip(rows, flags):
        assert row[:5] == [str(flag["id"]), *map(str, FLAGS[flag["id"]])]
        text = " ".join(flag["text"].split())
        assert row[5].endswith("…") and text.startswith(row[5][:-1]) and len(row[5]) > 10, row
    assert "[bold]" in r.stdout  # the data's text is shown as is, not as rich markup
    assert r.stderr == ""


def test_flags_list_of_one_kind_and_wider_terminals(workdir):
    rows = table_rows(invoke("flags", workdir, "list", "--kind", "mislabeled").stdout, 80)
    assert [row[:4] for row in rows] == [[str(i), *map(str, FLAGS[i][:3])] for i in (1, 2, 4)]
    assert {len(row) for row in rows} == {5}  # no kind column: the flags are all of one kind
    wide = invoke("flags", workdir, "list", columns=120).stdout
    assert max(cell_len(line) for line in wide.splitlines()) == 120
    assert len(table_rows(wide, 120)[0][5]) > len(table_rows(invoke("flags", workdir, "list").stdout, 80)[0][5])


def test_flags_list_wide_shows_every_field_in_full(workdir):
    flags = json.loads(invoke("flags", workdir, "list", "--json").stdout)
    r = invoke("flags", workdir, "list", "--wide")
    rows = table_rows(r.stdout, 80)
    assert {len(row) for row in rows} == {10}  # id, example, status, label, kind, source, who, note, updated, text
    starts = [i for i, row in enumerate(rows) if row[0]]
    assert [rows[i][0] for i in starts] == [str(f["id"]) for f in flags] and len(rows) > len(flags)
    for flag, start, end in zip(flags, starts, [*starts[1:], len(rows)]):
        joined = ["".join(cell.replace(" ", "") for cell in column) for column in zip(*rows[start:end])]
        assert joined[-1] == "".join(flag["text"].split())  # the text in full, wrapped
        assert joined[-3] == flag["note"].replace(" ", "")  # the note too
        assert "…" not in "".join(joined)


@pytest.fixture(autouse=True)
def restore_logging():
    """-v turns the datablame loggers on for the rest of the process: turn them off again after each test."""
    logger = logging.getLogger("datablame")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers


def test_quiet_keeps_the_result_and_silences_the_messages(scratch, tmp_path):
    r = invoke("flags", scratch, "reject", "3")
    assert "1 flags rejected" in r.stderr and r.stdout == ""
    for args in [("flags", scratch, "accept", "4", "-q"), ("flags", scratch, "relabel", "3", "--label", "food", "-q"),
                 ("flags", scratch, "list", "-q")]:
        assert invoke(*args).stderr == "", args
    r = invoke("flags", scratch, "add", "9", "--kind", "other", "-q")
    assert r.stdout.strip() == "5" and r.stderr == ""
    r = invoke("export", scratch, "--out", tmp_path / "clean.csv", "-q")
    assert r.stdout.strip() == str(tmp_path / "clean.csv") and r.stderr == ""
    r = invoke("export", scratch, "--out", tmp_path / "again.csv", "-v")
    assert "→" in r.stderr and r.stdout.strip() == str(tmp_path / "again.csv")
    for flag in ("-q", "-v"):
        r = invoke("report", scratch, "--out", tmp_path / f"report{flag}.html", flag)
        assert r.stdout.strip() == str(tmp_path / f"report{flag}.html") and r.stderr == ""


def test_scan_table_is_one_line_per_example_at_80_columns(scratch):
    r = invoke("scan", scratch, "--folds", "2", "--repeats", "1", "--device", "cpu", "-q")
    rows = table_rows(r.stdout, 80)
    assert len(rows) == 10 and len({row[0] for row in rows}) == 10
    assert all(row[3].endswith("…") for row in rows) and r.stderr == ""
    assert "new open 'mislabeled' flags" in invoke("scan", scratch, "--folds", "2", "--repeats", "1", "--device",
                                                   "cpu").stderr
