"""The engine's layers (pyproject.toml [tool.importlinter]): imports point only down, no package-level cycles,
no Qt; imports inside functions count, `if TYPE_CHECKING:` blocks do not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_every_import_contract_is_kept():
    result = lint_imports()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_an_import_up_a_layer_breaks_the_contract(tmp_path):
    """The contract is not vacuous: the same check on a copy of the engine with one upward import fails."""
    import shutil

    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "engine", copy / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    with (copy / "engine" / "shapes.py").open("a", encoding="utf-8") as f:
        f.write("\n\ndef _reach_up():\n    from engine.pipeline import run  # noqa: F401\n")
    result = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=copy,
                            capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(copy)})
    assert result.returncode != 0
    assert "engine.shapes -> engine.pipeline" in result.stdout
