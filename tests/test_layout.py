"""The layout holds: the runtime's layers and acyclic siblings (import-linter, contracts in pyproject.toml), and no
module takes another module's ``_private`` names (the library, the exporter, benchmarks and scripts alike)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("runtime", "export", "benchmarks", "scripts")


def private_imports(source: str) -> list[tuple[int, str, str]]:
    """``(line, module, name)`` of each ``_name`` imported from this project's modules.

    >>> private_imports("from .tables import Chunk, _groups\\nfrom os import _exit\\nfrom __future__ import annotations")
    [(1, '.tables', '_groups')]
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = "." * node.level + (node.module or "")
        if node.level == 0 and not module.startswith("longclip"):
            continue
        found += [(node.lineno, module, a.name) for a in node.names
                  if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_names():
    offenders = [f"{path.relative_to(ROOT)}:{line}: {name} from {module}"
                 for folder in CHECKED for path in sorted((ROOT / folder).rglob("*.py"))
                 for line, module, name in private_imports(path.read_text(encoding="utf-8"))]
    assert offenders == []


def test_the_check_sees_a_relative_private_import_across_modules():
    assert private_imports("from ..decode.preprocess import _os_error") == [(1, "..decode.preprocess", "_os_error")]
    assert private_imports("import longclip.runtime.tables as t\nfrom longclip.runtime.x import _y") == [
        (2, "longclip.runtime.x", "_y")]


def lint_imports(config: Path) -> subprocess.CompletedProcess:
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code, str(config)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_import_contracts_are_kept():
    """`lint-imports` with the contracts of pyproject.toml: layers top to bottom, no cycles between siblings."""
    pytest.importorskip("importlinter", reason="import-linter comes with the test extra")
    done = lint_imports(ROOT / "pyproject.toml")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "runtime layers follow the data flow KEPT" in done.stdout
    assert "no import cycles between sibling modules KEPT" in done.stdout


def test_a_layer_upside_down_is_reported(tmp_path):
    """The same machinery on a contract the code breaks (cli imports contract, so contract cannot sit above it)."""
    pytest.importorskip("importlinter", reason="import-linter comes with the test extra")
    config = tmp_path / "upside-down.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["longclip.runtime"]\n\n'
                      '[[tool.importlinter.contracts]]\nname = "upside down"\ntype = "layers"\n'
                      'layers = ["longclip.runtime.contract", "longclip.runtime.cli"]\n')
    done = lint_imports(config)
    assert done.returncode == 1 and "upside down BROKEN" in done.stdout
