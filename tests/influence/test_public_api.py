"""The curated public API: every name in each package's ``__all__`` resolves, lazily (no torch for the CLI)."""

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["datablame.influence", "datablame.index", "datablame.store"])
def test_every_exported_name_resolves(package):
    module = importlib.import_module(package)
    assert module.__all__ and sorted(module.__all__) == module.__all__
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    with pytest.raises(AttributeError):
        getattr(module, "no_such_name")


def test_importing_a_package_or_the_registry_loads_no_torch():
    code = ("import sys, datablame.influence, datablame.index, datablame.store, datablame.influence.registry; "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
