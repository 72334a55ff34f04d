"""Public surfaces are explicit: sorted __all__, every name importable, no hazmat leaks."""

import ast
import importlib
import pathlib

import pytest

import reelvault

PACKAGES = [
    "reelvault.catalog",
    "reelvault.crypto",
    "reelvault.errors",
    "reelvault.keys",
    "reelvault.storage",
]
SRC = pathlib.Path(reelvault.__file__).parent


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_importable(name):
    module = importlib.import_module(name)
    exported = module.__all__
    assert list(exported) == sorted(exported)
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.{symbol}"


def test_only_the_primitives_module_imports_hazmat():
    importers = []
    for path in SRC.rglob("*.py"):
        if "v1" in path.relative_to(SRC).parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.startswith("cryptography") for n in names):
                importers.append(path.relative_to(SRC).as_posix())
    assert sorted(set(importers)) == ["crypto/_primitives.py"]
