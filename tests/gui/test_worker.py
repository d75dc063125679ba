"""gui.worker: runs on a QThread with events on the GUI thread; one signal set (event, failed with the exception
object, finished with the Outcome) for runs and background jobs; cancel; nothing dies silently."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from engine.events import Log, Metric, Progress, RunFinished, RunStarted
from gui.errors import details, message
from gui.worker import CANCELLED, COMPLETED, FAILED, BackgroundTask, Outcome, RunWorker, Worker, live_workers


def _collect(worker: Worker) -> list:
    events: list = []
    worker.event.connect(lambda e: events.append((e, threading.current_thread() is threading.main_thread())))
    return events


def _signals(worker: Worker) -> list[tuple[str, object]]:
    """`failed` and `finished` in the order they fire, each with its argument."""
    fired: list[tuple[str, object]] = []
    worker.failed.connect(lambda exc: fired.append(("failed", exc)))
    worker.finished.connect(lambda outcome: fired.append(("finished", outcome)))
    return fired


def test_run_worker_delivers_events_on_the_gui_thread(qtbot, make_recipe):
    worker = RunWorker(make_recipe())
    events = _collect(worker)
    fired = _signals(worker)
    with qtbot.waitSignal(worker.finished, timeout=120_000) as finished:
        worker.start()
    outcome = finished.args[0]
    assert outcome.status == COMPLETED and fired == [("finished", outcome)]
    assert all(on_gui for _, on_gui in events)
    kinds = [type(e) for e, _ in events]
    assert Progress in kinds and Metric in kinds
    assert events[-1][0] == RunFinished(status="completed", time=events[-1][0].time)
    assert json.loads((Path(outcome.result) / "manifest.json").read_text())["status"] == "completed"
    qtbot.waitUntil(lambda: not live_workers())


def test_cancel_ends_the_thread_and_marks_the_run_cancelled(qtbot, make_recipe):
    worker = RunWorker(make_recipe(steps=2000))
    events = _collect(worker)
    fired = _signals(worker)
    worker.event.connect(lambda e: worker.cancel() if isinstance(e, Progress) else None)
    with qtbot.waitSignal(worker.finished, timeout=120_000) as finished:
        worker.start()
    assert worker.wait(10_000)
    assert finished.args == [Outcome(CANCELLED)] and fired == [("finished", Outcome(CANCELLED))]
    run_dir = Path(next(e.run_dir for e, _ in events if isinstance(e, RunStarted)))
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "cancelled"
    assert not (run_dir / "stages" / "01-distill" / "model").exists()
    assert isinstance(events[-1][0], RunFinished) and events[-1][0].status == "cancelled"


def test_error_before_the_run_starts_arrives_as_failed(qtbot, make_recipe, tmp_path):
    recipe = make_recipe()
    recipe = recipe.replace(teacher=recipe.teacher.__class__(source=str(tmp_path / "no-such-teacher")))
    worker = RunWorker(recipe)
    fired = _signals(worker)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        worker.start()
    assert [name for name, _ in fired] == ["failed", "finished"] and fired[1][1] == Outcome(FAILED)
    error = fired[0][1]
    assert "no-such-teacher" in message(error)
    assert "Traceback" in details(error) and "_run_pipeline" in details(error)
    assert worker.wait(10_000)


def test_a_job_returns_its_result_or_hands_over_its_exception(qtbot):
    def job(sink, token, n):
        for i in range(n):
            sink.emit(Log(message=str(i)))
        return n * 2

    worker = Worker(job, 3)
    events = _collect(worker)
    fired = _signals(worker)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        worker.start()
    assert fired == [("finished", Outcome(COMPLETED, 6))]
    assert [(e.message, on_gui) for e, on_gui in events] == [("0", True), ("1", True), ("2", True)]

    def broken_inner():
        raise ValueError("bad input")

    task = BackgroundTask(broken_inner)
    fired = _signals(task)
    with qtbot.waitSignal(task.finished, timeout=60_000):
        task.start()
    assert [name for name, _ in fired] == ["failed", "finished"] and fired[1][1] == Outcome(FAILED)
    error = fired[0][1]
    assert type(error) is ValueError and str(error) == "bad input"  # the exception object itself
    assert message(error) == "ValueError: bad input"
    assert "broken_inner" in details(error) and details(error).rstrip().endswith("ValueError: bad input")
    assert task.wait(5_000)


def test_a_cancelled_job_finishes_cancelled_without_failing(qtbot):
    started = threading.Event()

    def patient(sink, token):
        started.set()
        while True:
            token.raise_if_cancelled()
            time.sleep(0.01)

    worker = Worker(patient)
    fired = _signals(worker)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        worker.start()
        assert started.wait(30)
        worker.cancel()
    assert fired == [("finished", Outcome(CANCELLED))]


def test_keyboard_interrupt_and_system_exit_in_a_job_are_reported(qtbot):
    for error in (KeyboardInterrupt("stop"), SystemExit(3)):

        def job(sink, token, error=error):
            raise error

        worker = Worker(job)
        fired = _signals(worker)
        with qtbot.waitSignal(worker.finished, timeout=60_000):
            worker.start()
        assert fired == [("failed", error), ("finished", Outcome(FAILED))]
        assert type(error).__name__ in details(error)


def test_an_error_nobody_listens_for_goes_to_the_excepthook(qtbot, monkeypatch):
    hooked: list[BaseException] = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, exc, tb: hooked.append(exc))
    task = BackgroundTask(lambda: 1 / 0)
    with qtbot.waitSignal(task.finished, timeout=60_000) as finished:
        task.start()
    assert finished.args == [Outcome(FAILED)]
    assert len(hooked) == 1 and isinstance(hooked[0], ZeroDivisionError)
