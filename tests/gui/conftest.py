"""GUI test fixtures: offscreen Qt, settings in a temporary folder, no thread left behind, tiny runs."""

from __future__ import annotations

import gc
import importlib.util
import os
import threading
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMessageBox

# pytest drops sys.modules["conftest"] when it loads this file, so the suite's shared helpers are
# re-exported here: `from conftest import recipe_toml` keeps working in every test module.
_spec = importlib.util.spec_from_file_location("miniglot_tests_conftest", Path(__file__).parents[1] / "conftest.py")
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)
SHARED_DATA = _shared.SHARED_DATA
recipe_toml = _shared.recipe_toml
four_stages = _shared.four_stages

from tiny import tiny_model_dir, write_corpus  # noqa: E402  (sys.path set by the shared conftest)


@pytest.fixture(autouse=True)
def no_threads_left():
    """Fail a test that leaves a worker thread (or any new Python thread) running."""
    from PySide6.QtCore import QCoreApplication

    from gui.gil import collecting_on_gui_thread
    from gui.worker import live_workers, wait_for_all

    before = set(threading.enumerate())
    yield
    # runs and evaluations must be finished or cancelled by the test; short background jobs
    # (teacher inspection, corpus counts) end by themselves and only have to end
    leftover = [type(w).__name__ for w in live_workers() if type(w).__name__ != "BackgroundTask"]
    finished = wait_for_all(120_000)
    assert not leftover, f"the test left worker threads running: {leftover}"
    assert finished, "background jobs did not end within two minutes"
    for _ in range(3):  # ended workers are released from the event loop
        QCoreApplication.processEvents()
    assert not collecting_on_gui_thread() and gc.isenabled(), "automatic garbage collection was not restored"
    extra = [t.name for t in threading.enumerate()
             if t not in before and t.is_alive() and not isinstance(t, threading._DummyThread)]
    assert not extra, f"the test left Python threads running: {extra}"


@pytest.fixture(autouse=True)
def no_unexpected_dialogs(monkeypatch):
    """A message box a test did not ask for fails the test with its text instead of blocking it forever.

    Offscreen, nobody can click a modal dialog away: a run that fails for a reason the test did not
    foresee would otherwise hang the suite. Tests that expect a dialog replace `show_error`/`confirm`.
    """
    shown: list[str] = []

    def record(box, *args, **kwargs):
        shown.append(f"{box.windowTitle()}: {box.text()}\n{box.detailedText()}")
        return QMessageBox.StandardButton.Ok

    def record_static(parent, title, text, *args, **kwargs):
        shown.append(f"{title}: {text}")
        return QMessageBox.StandardButton.No

    monkeypatch.setattr(QMessageBox, "exec", record)
    monkeypatch.setattr(QMessageBox, "open", record)
    for name in ("question", "warning", "critical", "information", "about"):
        monkeypatch.setattr(QMessageBox, name, staticmethod(record_static))
    yield
    assert not shown, "unexpected dialog(s):\n" + "\n".join(shown)


@pytest.fixture(autouse=True)
def temporary_settings(tmp_path_factory, qapp):
    """QSettings (geometry, last recipe) go to a fresh folder, never the user's."""
    folder = tmp_path_factory.mktemp("settings")
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("gui-teacher") / "bert", "bert", mlm_head=True)


@pytest.fixture()
def make_recipe(tiny_teacher, tmp_path):
    """A fast four-stage recipe on the tiny teacher (verify off); `steps` sets the distill length."""
    from engine.recipe import Recipe

    corpus = write_corpus(tmp_path / "corpus.txt", 240, seed=1)

    def make(steps: int = 4, shrink_steps: int = 3):
        stages = four_stages().replace("max_steps = 4", f"max_steps = {steps}").replace(
            "max_steps = 3", f"max_steps = {shrink_steps}")
        return Recipe.from_toml(recipe_toml(tiny_teacher, corpus, stages, verify=False, name="gui"), tmp_path)

    return make
