"""gui.worker: runs on a QThread with events on the GUI thread, cancel, errors, background tasks, following."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from engine.events import JsonlSink, Log, Metric, Progress, RunFinished, RunStarted
from gui.worker import BackgroundTask, RunFollower, RunWorker, live_workers


def _collect(worker: RunWorker) -> list:
    events: list = []
    worker.event.connect(lambda e: events.append((e, threading.current_thread() is threading.main_thread())))
    return events


def test_run_worker_delivers_events_on_the_gui_thread(qtbot, make_recipe):
    worker = RunWorker(make_recipe())
    events = _collect(worker)
    failures: list = []
    worker.failed.connect(lambda *a: failures.append(a))
    with qtbot.waitSignal(worker.finished, timeout=120_000) as finished:
        worker.start()
    run_dir = finished.args[0]
    assert not failures
    assert all(on_gui for _, on_gui in events)
    kinds = [type(e) for e, _ in events]
    assert Progress in kinds and Metric in kinds
    assert events[-1][0] == RunFinished(status="completed", time=events[-1][0].time)
    assert json.loads((Path(run_dir) / "manifest.json").read_text())["status"] == "completed"
    qtbot.waitUntil(lambda: not live_workers())


def test_cancel_ends_the_thread_and_marks_the_run_cancelled(qtbot, make_recipe):
    worker = RunWorker(make_recipe(steps=2000))
    events = _collect(worker)
    worker.event.connect(lambda e: worker.cancel() if isinstance(e, Progress) else None)
    with qtbot.waitSignal(worker.finished, timeout=120_000) as finished:
        worker.start()
    assert worker.wait(10_000)
    run_dir = Path(finished.args[0] or next(e.run_dir for e, _ in events if isinstance(e, RunStarted)))
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "cancelled"
    assert not (run_dir / "stages" / "01-distill" / "model").exists()
    assert isinstance(events[-1][0], RunFinished) and events[-1][0].status == "cancelled"


def test_error_before_the_run_starts_arrives_as_failed(qtbot, make_recipe, tmp_path):
    recipe = make_recipe()
    recipe = recipe.replace(teacher=recipe.teacher.__class__(source=str(tmp_path / "no-such-teacher")))
    worker = RunWorker(recipe)
    with qtbot.waitSignal(worker.failed, timeout=60_000) as failed:
        worker.start()
    message, details = failed.args
    assert "no-such-teacher" in message
    assert "Traceback" in details
    assert worker.wait(10_000)


def test_background_task_reports_result_or_error(qtbot):
    task = BackgroundTask(lambda a, b: a + b, 2, 3)
    with qtbot.waitSignal(task.done, timeout=60_000) as done:
        task.start()
    assert done.args == [5]

    task = BackgroundTask(lambda: 1 / 0)
    with qtbot.waitSignal(task.failed, timeout=60_000) as failed:
        task.start()
    assert failed.args[0].startswith("ZeroDivisionError") and "Traceback" in failed.args[1]
    assert task.wait(5_000)


def test_follower_reads_a_growing_events_file(qtbot, tmp_path):
    sink = JsonlSink(tmp_path / "events.jsonl")
    sink.emit(RunStarted(run_dir=str(tmp_path), stages=("distill",)))
    follower = RunFollower(tmp_path, interval_ms=20)
    seen: list = []
    follower.event.connect(seen.append)
    follower.start()
    assert [type(e) for e in seen] == [RunStarted] and follower.following

    with (tmp_path / "events.jsonl").open("a") as f:  # half a line: not read until complete
        f.write(Log(message="half").to_json()[:10])
    qtbot.wait(100)
    assert len(seen) == 1
    with (tmp_path / "events.jsonl").open("a") as f:
        f.write(Log(message="half").to_json()[10:] + "\n")
    sink.emit(Metric(index=1, stage="distill", name="distill/total", value=1.5, step=1))
    qtbot.waitUntil(lambda: len(seen) == 3, timeout=5_000)
    assert seen[1].message == "half" and seen[2].value == 1.5

    with qtbot.waitSignal(follower.finished, timeout=5_000):
        sink.emit(RunFinished(status="completed"))
    assert not follower.following and isinstance(seen[-1], RunFinished)
