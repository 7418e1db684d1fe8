"""Every command-line option that datablame's code names (in an error's hint, a help text, a docstring) exists."""

import re
from pathlib import Path

import typer

from datablame.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]")


def real_options() -> set[str]:
    found: set[str] = set()

    def walk(command) -> None:
        for param in command.params:
            found.update(o for o in [*param.opts, *param.secondary_opts] if o.startswith("--"))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return found


def test_every_named_option_exists():
    options = real_options()
    named = {}
    for folder in ("influence", "index", "store", "cli"):
        for path in (ROOT / folder).rglob("*.py"):
            for match in OPTION.finditer(path.read_text(encoding="utf-8")):
                named.setdefault(match.group(0), set()).add(str(path.relative_to(ROOT)))
    missing = {name: sorted(paths) for name, paths in named.items() if name not in options}
    assert not missing, missing
    assert {"--damping", "--encoding", "--force", "--curvature"} <= options
