"""Main window: default recipe, remembered recipe and geometry, menus, opening runs, closing during a
run, Start through the Setup tab, and `miniglot --screenshots`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, QRect, QSize

from engine import pipeline
from engine.events import Collect, Progress
from engine.recipe import Recipe
from engine.runfolder import RunFolder
from gui import app, main_window
from gui.main_window import DEFAULT_RECIPE, MainWindow


@pytest.fixture()
def window(qtbot, tmp_path):
    win = MainWindow(runs_dir=tmp_path / "runs")
    qtbot.addWidget(win)
    yield win
    win.training_tab.cancel_and_wait()
    win.close()


@pytest.fixture(scope="module")
def finished_run(tiny_teacher, tmp_path_factory) -> Path:
    from conftest import four_stages, recipe_toml
    from tiny import write_corpus

    folder = tmp_path_factory.mktemp("finished")
    corpus = write_corpus(folder / "corpus.txt", 240, seed=1)
    recipe = Recipe.from_toml(recipe_toml(tiny_teacher, corpus, four_stages(), verify=False), folder)
    return pipeline.run(recipe, Collect())


def test_opens_with_the_embedded_default_recipe(window):
    window.restore_recipe()
    recipe = window.setup_tab.recipe()
    default = Recipe.load(DEFAULT_RECIPE)
    assert recipe.teacher.source == default.teacher.source and recipe.language == default.language
    assert [s.kind for s in recipe.stages] == [s.kind for s in default.stages]
    assert [window.tabs.tabText(i) for i in range(window.tabs.count())] == \
        ["Setup", "Training", "Trade-offs", "Evaluation", "Task model", "Runs"]


def test_recipe_argument_takes_a_preset_name_and_never_saves_over_it(window, monkeypatch):
    errors = []
    monkeypatch.setattr(main_window, "show_error", lambda parent, title, message, details="": errors.append(message))
    args = app.parse_args(["--recipe", "preset:xlmr-maximum"])
    assert window.load_recipe(args.recipe)
    preset = Recipe.load(DEFAULT_RECIPE.parent / "xlmr-maximum.toml")
    recipe = window.setup_tab.recipe()
    assert recipe.teacher.source == preset.teacher.source and recipe.stages == preset.stages
    assert window.recipe_path is None  # Save asks where, the installed preset stays as shipped
    assert not window.load_recipe("preset:no-such-preset") and "preset:xlmr-maximum" in errors[0]


def test_last_recipe_and_geometry_are_remembered(qtbot, tmp_path, make_recipe):
    path = tmp_path / "mine.toml"
    make_recipe().save(path)
    first = MainWindow(runs_dir=tmp_path / "runs")
    qtbot.addWidget(first)
    assert first.load_recipe(path)
    screen = first.screen().availableGeometry()
    first.setGeometry(QRect(QPoint(10, 20), QSize(screen.width() - 30, screen.height() - 40)))
    size = first.size()
    assert size != MainWindow(runs_dir=tmp_path).size()
    first.close()

    second = MainWindow(runs_dir=tmp_path / "runs")
    qtbot.addWidget(second)
    second.restore_recipe()
    assert second.recipe_path == path and "mine.toml" in second.windowTitle()
    assert second.size() == size
    second.close()


def test_plans_are_saved_in_the_apps_runs_folder_not_beside_the_installed_recipe(window, tmp_path):
    window.restore_recipe()  # the embedded default, loaded from the package's resources
    dialog = window.setup_tab.open_plan()
    assert dialog.out_path.parent == (tmp_path / "runs" / "plans").resolve()
    dialog.close()
    window.runs.set_runs_dir(tmp_path / "elsewhere")
    dialog = window.setup_tab.open_plan()
    assert dialog.out_path.parent == (tmp_path / "elsewhere" / "plans").resolve()
    dialog.close()


def test_menus_have_shortcuts_for_common_actions(window):
    assert window.start_action.shortcut().toString() == "F5"
    assert window.cancel_action.shortcut().toString() == "Shift+F5"
    assert not window.cancel_action.isEnabled() and window.start_action.isEnabled()
    titles = [a.text().replace("&", "") for a in window.menuBar().actions()]
    assert titles == ["File", "Run", "View", "Help"]


def test_runs_tab_lists_runs_and_double_click_opens_one(qtbot, window, finished_run):
    window.runs.set_runs_dir(finished_run.parent)
    table = window.runs_tab.table
    assert table.rowCount() == 1
    assert table.item(0, 0).text() == finished_run.name and table.item(0, 1).text() == "completed"
    assert "params" in table.item(0, 6).text()
    window.runs_tab.open_row(0)
    assert window.tabs.currentWidget() is window.training_tab
    assert window.training_tab.timeline.statuses == ["completed"] * 4


def test_the_tabs_share_one_reading_of_each_manifest(qtbot, finished_run, monkeypatch):
    reads: list[Path] = []
    original = RunFolder.read_manifest
    monkeypatch.setattr(RunFolder, "read_manifest", lambda self: reads.append(self.path) or original(self))
    win = MainWindow(runs_dir=finished_run.parent)
    qtbot.addWidget(win)
    assert reads == [finished_run.resolve()]
    assert win.runs_tab.table.rowCount() == 1 and win.tradeoffs_tab.run_list.count() == 1
    assert win.evaluation_tab.tree.topLevelItem(0).text(0) == finished_run.name
    win.close()


def test_export_student_copies_a_stage_model(qtbot, window, finished_run, tmp_path):
    window.open_run(finished_run)
    stages = main_window._completed_stages(finished_run)
    assert len(stages) == 4
    task = window.export_student(list(stages.values())[-1], tmp_path / "student")
    with qtbot.waitSignal(task.finished, timeout=30_000) as finished:
        pass
    assert finished.args[0].status == "completed"
    assert (tmp_path / "student" / "config.json").is_file()


def test_start_from_setup_then_close_cancels_and_waits(qtbot, window, make_recipe, monkeypatch):
    asked: list[str] = []
    monkeypatch.setattr(main_window, "confirm", lambda parent, title, text: asked.append(title) or True)
    window.set_recipe(make_recipe(steps=3000))
    window.start_action.trigger()
    assert window.training_tab.is_running()
    worker = window.training_tab.worker
    qtbot.waitUntil(lambda: window.training_tab.stage_bar.value() >= 1, timeout=120_000)
    assert isinstance(window.training_tab.worker, type(worker))
    window.close()
    assert asked == ["A run is going"]
    assert not worker.is_running()
    qtbot.waitUntil(lambda: not window.training_tab.is_running(), timeout=10_000)
    run_dir = window.training_tab.run_dir
    assert run_dir.parent == window.runs.runs_dir.resolve()
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "cancelled"


def test_screenshots_visit_every_tab(tmp_path, finished_run, qapp):
    out = tmp_path / "shots"
    assert app.main(["--screenshots", str(out), "--run", str(finished_run), "--recipe", str(DEFAULT_RECIPE)]) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["01-setup.png", "02-training.png", "03-trade-offs.png", "04-evaluation.png", "05-task-model.png",
                     "06-runs.png"]
    assert all(p.stat().st_size > 10_000 for p in out.glob("*.png"))


def test_progress_events_are_coalesced():
    from gui.worker import coalesce

    a, b = Progress(index=1, stage="distill", step=1, total=9), Progress(index=1, stage="distill", step=2, total=9)
    assert coalesce([a, b]) == [b]


def test_screenshots_of_a_broken_recipe_say_why_and_exit_instead_of_waiting_for_a_click(tmp_path):
    """Batch mode has nobody to answer a dialog: the error goes to stderr and the app exits 2, in seconds."""
    import os
    import subprocess
    import sys

    bad = tmp_path / "bad.toml"
    bad.write_text('[corpus]\ntrain = ["a.txt"]\n[[stages]]\nkind = "prune"\nffn = "many"\n', encoding="utf-8")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path)}
    command = [sys.executable, "-m", "gui.app", "--recipe", str(bad), "--screenshots", str(tmp_path / "out")]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "miniglot: stages[1] (prune).ffn must be a number, got 'many'\n"
    assert not (tmp_path / "out").exists()
