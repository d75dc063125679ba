"""Packaging: `preset:` names, and a non-editable install of the wheel that works away from the checkout.

The slow test builds the wheel from a copy of the sources, installs it into a fresh venv that sees the project
venv's packages (linked one by one) but not its editable MiniGlot, and runs both entry points in another folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from engine.errors import RecipeError
from engine.recipe import Recipe
from engine.resources import DEFAULT_RECIPE, RECIPES_DIR, load_recipe

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SELF_TEST = re.compile(r"^MiniGlot \S+ self-test OK: 4 stages, (\d+)k -> (\d+)k params, reload max diff (\S+), "
                       r"offline data: [\d,]+ Chichewa verses, teachers .+, [\d.]+ s$")
# Entries of this venv's site-packages not linked into the test venv: MiniGlot's (editable or not), bytecode.
NOT_LINKED = {"engine", "gui", "miniglot_resources", "__pycache__"}


def test_every_folder_of_modules_under_engine_and_gui_is_a_listed_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    modules = [path for top in ("engine", "gui") for path in (ROOT / top).rglob("*.py")]
    folders = {".".join(path.parent.relative_to(ROOT).parts) for path in modules}
    assert listed == folders | {"miniglot_resources"}


def test_a_preset_name_loads_the_preset_with_its_runs_folder_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("preset:offline-default")
    assert recipe == Recipe.load(DEFAULT_RECIPE)
    assert Path(recipe.resolved().run.runs_dir) == tmp_path.resolve() / "runs"
    assert Path(load_recipe(str(DEFAULT_RECIPE)).base_dir) == RECIPES_DIR.resolve()  # a path stays a path


@pytest.mark.parametrize("name", ["no-such-preset", "../samples/self-test", ""])
def test_an_unknown_preset_is_refused_with_the_names_there_are(name):
    with pytest.raises(RecipeError) as caught:
        load_recipe(f"preset:{name}")
    presets = sorted(path.stem for path in RECIPES_DIR.glob("*.toml"))
    assert len(presets) >= 2
    assert str(caught.value) == f"no preset recipe named {name!r}; the presets are " + ", ".join(
        f"preset:{preset}" for preset in presets)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_installed_elsewhere_has_its_resources_presets_and_passes_the_self_test(tmp_path):
    python = venv_without_miniglot(tmp_path / "venv")
    wheel = build_wheel(tmp_path)
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    elsewhere, home = tmp_path / "elsewhere", tmp_path / "home"
    elsewhere.mkdir()
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1", QT_QPA_PLATFORM="offscreen", HOME=str(home))

    def run(*args: str | Path) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=elsewhere,
                              timeout=300)

    where = run(python, "-c", "import json, engine.cli, gui.app, engine.resources as r; print(json.dumps("
                "[engine.cli.__file__, gui.app.__file__, str(r.resource_path()), str(r.DEFAULT_RECIPE), str(r.ICON), "
                "str(r.LANGUAGES_FILE), str(r.SAMPLES)]))")
    assert where.returncode == 0, where.stderr
    paths = [Path(p) for p in json.loads(where.stdout)]
    venv = (tmp_path / "venv").resolve()
    assert all(path.resolve().is_relative_to(venv) and path.exists() for path in paths), paths
    installed = {p.relative_to(paths[2]) for p in paths[2].rglob("*") if p.is_file()}
    assert installed == {p.relative_to(ROOT / "resources") for p in (ROOT / "resources").rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts}

    estimate = run(python.parent / "miniglot-cli", "estimate", "preset:offline-default")
    assert estimate.returncode == 0, estimate.stderr
    kinds = [stage["kind"] for stage in tomllib.loads(DEFAULT_RECIPE.read_text(encoding="utf-8"))["stages"]]
    assert all(f"{i:02d}-{kind}" in estimate.stdout for i, kind in enumerate(kinds, start=1)), estimate.stdout
    unknown = run(python.parent / "miniglot-cli", "estimate", "preset:no-such-preset")
    assert unknown.returncode == 2 and "preset:offline-default" in unknown.stderr, unknown.stderr

    # the self-test compresses, reloads and opens the window: one summary line, and nothing left behind (the
    # packaged teacher's conversion that `estimate` cached in ~/.cache stays as it was)
    before = sorted(home.rglob("*"))
    self_test = run(python.parent / "miniglot", "--self-test")
    assert self_test.returncode == 0, self_test.stdout + self_test.stderr[-3000:]
    lines = self_test.stdout.splitlines()
    match = SELF_TEST.match(lines[0]) if len(lines) == 1 else None
    assert match, self_test.stdout
    teacher, student, diff = int(match[1]), int(match[2]), float(match[3])
    assert student < teacher / 2 and diff <= 1e-4
    assert list(elsewhere.iterdir()) == [] and sorted(home.rglob("*")) == before


def venv_without_miniglot(venv: Path) -> Path:
    """A fresh venv with links to every entry of this venv's site-packages but MiniGlot's; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if entry.name not in NOT_LINKED and not entry.name.startswith(("__editable__", "miniglot-")):
            (site / entry.name).symlink_to(entry)
    return python


def build_wheel(tmp: Path) -> Path:
    """The wheel pip builds, offline, from a copy of the sources (so no build/ folder lands in the checkout)."""
    source = tmp / "source"
    for name in ("engine", "gui", "resources"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    stale = source / "resources" / "__pycache__" / "__init__.cpython-311.pyc"  # a checkout's, never shipped
    stale.parent.mkdir()
    stale.write_bytes(b"")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--wheel-dir", str(tmp / "wheel"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp / "wheel").glob("miniglot-*.whl")
    return wheel
