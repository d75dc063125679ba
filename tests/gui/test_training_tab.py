"""Training tab: live runs drive the timeline, progress and curves; cancel, failure dialog, resume,
opening finished and still-running run folders, CSV export, and events delivered in batches."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import pytest

from engine import pipeline
from engine.events import (
    Collect,
    EvalDevScore,
    EvalProgress,
    JsonlSink,
    Metric,
    Progress,
    QualityWarning,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
)
from engine.runfolder import Manifest
from gui import training_tab
from gui.training_tab import TrainingTab


@pytest.fixture()
def dialogs(monkeypatch) -> list[tuple[str, str, str]]:
    """Error dialogs recorded instead of shown."""
    shown: list[tuple[str, str, str]] = []
    monkeypatch.setattr(training_tab, "show_error", lambda parent, title, message, details="":
                        shown.append((title, message, details)))
    return shown


def _tab(qtbot, recipe=None) -> TrainingTab:
    tab = TrainingTab(lambda: recipe)
    qtbot.addWidget(tab)
    tab.resize(1200, 800)
    return tab


def _run(qtbot, tab: TrainingTab, action=None, timeout: int = 120_000) -> tuple[Path, str]:
    with qtbot.waitSignal(tab.run_finished, timeout=timeout) as finished:
        (action or tab.start)()
    return finished.args[0], finished.args[1]


def test_a_run_updates_progress_curves_and_log(qtbot, make_recipe, tmp_path, dialogs):
    tab = _tab(qtbot, make_recipe(steps=6))
    progress: list[int] = []
    tab.stage_bar.valueChanged.connect(progress.append)
    _run_dir, status = _run(qtbot, tab)
    assert status == "completed" and not dialogs
    assert tab.timeline.kinds == ["distill", "prune", "shrink", "trim_vocab"]
    assert tab.timeline.statuses == ["completed"] * 4
    assert tab.overall.value() == 1000 and 6 in progress
    tab.curves.redraw(everything=True)
    total = tab.curves.series[(1, "distill", "total", "train")]
    assert total.n == 6 and list(total.x[:6]) == [1, 2, 3, 4, 5, 6]
    assert total.item.getData()[0] is not None and len(total.item.getData()[0]) == 6
    assert (1, "distill", "total", "validation") in tab.curves.series
    assert tab.curves.series[(3, "shrink", "learning_rate", "train")].n == 3
    assert "run completed" in tab.log.toPlainText()
    assert not tab.is_running() and tab.start_button.isEnabled() and not tab.cancel_button.isEnabled()

    count = tab.export_csv(tmp_path / "curves.csv")
    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    assert len(rows) == count and {"distill", "shrink"} <= {r["stage"] for r in rows}
    assert {"train", "validation"} == {r["split"] for r in rows}


def test_events_arrive_in_batches_from_the_worker_thread(qtbot, monkeypatch, dialogs):
    """Events the run's thread emits are queued and drained on the GUI thread; a batch keeps only the
    latest progress of a stage. (How responsive the window stays is bench/gui_responsiveness.py's job.)"""
    queued, release = threading.Event(), threading.Event()

    def streaming_run(recipe, sink, token, resume=None):
        for step in range(1, 21):
            sink.emit(Progress(index=1, stage="distill", step=step, total=20))
            sink.emit(Metric(index=1, stage="distill", name="distill/total", value=1 / step, step=step))
        queued.set()
        release.wait(60)

    monkeypatch.setattr(pipeline, "run", streaming_run)
    tab = _tab(qtbot, recipe=object())
    delivered: list[tuple[type, bool]] = []  # (event type, arrived on the GUI thread)

    def record(event) -> None:
        delivered.append((type(event), threading.current_thread() is threading.main_thread()))

    assert tab.start()
    tab.worker.event.connect(record)
    assert queued.wait(120) and not delivered  # all 40 events queued while the GUI thread was not draining
    with qtbot.waitSignal(tab.run_finished, timeout=60_000):
        release.set()
    assert delivered.count((Progress, True)) == 1 and delivered.count((Metric, True)) == 20
    assert len(delivered) == 21 and not dialogs
    assert tab.stage_bar.value() == 20 and tab.curves.series[(1, "distill", "total", "train")].n == 20


def test_cancel_then_resume(qtbot, make_recipe, dialogs):
    tab = _tab(qtbot, make_recipe(steps=3000))
    tab.start()
    qtbot.waitUntil(lambda: tab.stage_bar.value() >= 2, timeout=120_000)
    assert tab.cancel_button.isEnabled()
    run_dir, status = _run(qtbot, tab, tab.cancel)
    assert status == "cancelled" and not dialogs
    assert tab.timeline.statuses[0] == "cancelled"
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "cancelled"
    assert not (run_dir / "stages" / "01-distill" / "model").exists()
    assert tab.resume_button.isEnabled() and not tab.is_running()


def test_engine_failure_is_shown_as_a_dialog_with_the_traceback(qtbot, make_recipe, monkeypatch, dialogs,
                                                                 swap_runner):
    def broken_prune(ctx):
        raise RuntimeError("pruning exploded")

    swap_runner("prune", broken_prune)
    tab = _tab(qtbot, make_recipe())
    run_dir, status = _run(qtbot, tab)
    assert status == "failed"
    qtbot.waitUntil(lambda: len(dialogs) == 1)
    _title, message, details = dialogs[0]
    assert "pruning exploded" in message and "Traceback" in details and "broken_prune" in details
    assert tab.timeline.statuses[:2] == ["completed", "failed"]
    assert tab.resume_button.isEnabled()

    monkeypatch.undo()  # the engine is fixed: resume finishes the run in the same folder
    monkeypatch.setattr(training_tab, "show_error", lambda *a, **k: dialogs.append(a))
    resumed_dir, status = _run(qtbot, tab, tab.resume)
    assert resumed_dir == run_dir and status == "completed" and len(dialogs) == 1
    assert tab.timeline.statuses == ["completed"] * 4


def test_resume_of_a_run_another_writer_holds_is_refused_and_leaves_it_alone(qtbot, make_recipe, dialogs):
    import os

    from engine.runfolder import RunFolder

    tab = _tab(qtbot, make_recipe())
    run_dir, status = _run(qtbot, tab)
    assert status == "completed"
    before = (run_dir / "events.jsonl").read_text()
    with RunFolder(run_dir).lock():  # as a CLI resume of the same run would hold it
        _run(qtbot, tab, tab.resume)
        qtbot.waitUntil(lambda: len(dialogs) == 1)
    _title, message, _details = dialogs[0]
    assert f"being written by pid {os.getpid()}" in message
    assert (run_dir / "events.jsonl").read_text() == before
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "completed"


def test_a_run_that_fails_before_its_folder_exists_says_so(qtbot, make_recipe, tmp_path, dialogs):
    recipe = make_recipe()
    recipe = recipe.replace(teacher=recipe.teacher.__class__(source=str(tmp_path / "no-such-teacher")))
    tab = _tab(qtbot, recipe)
    run_dir, _status = _run(qtbot, tab)
    assert run_dir is None and not tab.is_running()
    [(_title, message, details)] = dialogs
    assert "no-such-teacher" in message and "Traceback" in details
    assert tab.run_label.text() == "The run did not start" and not tab.resume_button.isEnabled()


def test_invalid_recipe_is_reported_not_started(qtbot, dialogs):
    from engine.errors import RecipeError

    def provider():
        raise RecipeError("shrink.hidden must be divisible by the heads")

    tab = TrainingTab(provider)
    qtbot.addWidget(tab)
    assert tab.start() is False and not tab.is_running()
    assert dialogs and "divisible" in dialogs[0][1]


def test_opening_a_finished_run_replays_it(qtbot, make_recipe):
    collect = Collect()
    run_dir = pipeline.run(make_recipe(steps=5), collect)
    tab = _tab(qtbot)
    assert tab.open_run(run_dir)
    assert not tab.follower.following and tab.run_status == "completed"
    assert tab.timeline.statuses == ["completed"] * 4
    train_points = [m for m in collect.of(Metric) if "/" in m.name]
    assert sum(s.n for s in tab.curves.series.values()) == len(train_points)
    assert tab.curves.series[(1, "distill", "total", "train")].item.getData()[0].size == 5
    assert run_dir.name in tab.run_label.text() and not tab.resume_button.isEnabled()


def test_following_a_run_folder_that_is_still_being_written(qtbot, tmp_path):
    run_dir = tmp_path / "20260101-000000-headless"
    run_dir.mkdir()
    Manifest(run_dir, {"status": "running", "stages": [{"kind": "distill", "status": "running"}]}).save()
    sink = JsonlSink(run_dir / "events.jsonl")
    sink.emit(RunStarted(run_dir=str(run_dir), stages=("distill",)))
    sink.emit(StageStarted(index=1, stage="distill", total_steps=10))
    tab = _tab(qtbot)
    tab.open_run(run_dir)
    assert tab.follower.following and "following" in tab.run_label.text()
    tab.follower._timer.setInterval(20)
    for step in range(1, 4):
        sink.emit(Metric(index=1, stage="distill", name="distill/total", value=1 / step, step=step))
        sink.emit(Progress(index=1, stage="distill", step=step, total=10, tokens_per_second=1000, eta_seconds=30))
    qtbot.waitUntil(lambda: tab.stage_bar.value() == 3, timeout=5_000)
    assert tab.curves.series[(1, "distill", "total", "train")].n == 3
    assert "ETA 0:30" in tab.stage_bar.format() and "1,000 tokens/s" in tab.stage_bar.format()
    warning = "fidelity fell from 1.000 to 0.800, more than the 0.10 a distill stage should lose: raise max_steps"
    sink.emit(QualityWarning(index=1, stage="distill", metric="fidelity", before=1.0, after=0.8, message=warning))
    sink.emit(StageFinished(index=1, stage="distill", status="completed"))
    sink.emit(EvalProgress(done=1, total=2, task="pos", model="01-distill", seed=0, eta_seconds=60))
    sink.emit(EvalDevScore(task="pos", model="01-distill", seed=0, metric="accuracy", value=0.75, epoch=2))
    sink.emit(RunFinished(status="completed"))
    qtbot.waitUntil(lambda: not tab.follower.following, timeout=5_000)
    assert tab.timeline.statuses == ["completed"] and tab.run_status == "completed"
    assert tab.timeline.chips[0].text().endswith("done  ⚠ quality") and tab.timeline.chips[0].toolTip() == warning
    assert f"[01 distill] warning: {warning}" in tab.log.toPlainText()
    assert tab.stage_bar.format() == "evaluation: 1/2 · pos, 01-distill, seed 0 · ETA 1:00"
    assert "[eval] pos 01-distill seed 0: dev accuracy 0.750 (epoch 2)" in tab.log.toPlainText()
    assert list(tab.curves.series) == [(1, "distill", "total", "train")]  # evaluation draws no training curve
