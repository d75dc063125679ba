"""The engine never imports Qt or pyqtgraph (DESIGN.md §2), checked in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GUI_PREFIXES = ("PySide6", "shiboken6", "PyQt", "pyqtgraph")

PROBE = f"""
import importlib, json, pkgutil, sys
import engine
for module in pkgutil.walk_packages(engine.__path__, "engine."):  # every engine module, stages' runners too
    importlib.import_module(module.name)
print(json.dumps(sorted(m for m in sys.modules if m.startswith({GUI_PREFIXES!r}))))
print(json.dumps("torch" in sys.modules and "transformers" in sys.modules))
"""


def test_engine_imports_no_gui_module():
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    gui_modules, heavy_loaded = map(json.loads, done.stdout.splitlines()[-2:])
    assert gui_modules == []
    assert heavy_loaded  # the probe really imported the engine's heavy dependencies
