"""The only bridge between the GUI thread and work threads (DESIGN.md §3).

`Worker` runs a job `job(sink, token, *args)` once on its own QThread, after superqt's `thread_worker`:
one fixed set of signals, all delivered on the GUI thread, errors as exception objects.

- `event(Event)`: each engine event the job emits into `sink`;
- `failed(BaseException)`: the exception the job raised (anything but `Cancelled`: KeyboardInterrupt and
  SystemExit too); `gui.errors` words it and formats its traceback. Nobody listening: `sys.excepthook`;
- `finished(Outcome)`: last, once the thread has ended: completed (with the job's result), cancelled or failed.

`RunWorker` runs `engine.pipeline.run`; `BackgroundTask` a short plain function `fn(*args, **kwargs)`
(teacher inspection, corpus statistics, copying), started by `run_in_background`.
Cancellation is cooperative (`CancelToken`); threads are never terminated.
"""

from __future__ import annotations

import functools
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QMetaMethod, QObject, QThread, QTimer, Signal, Slot

from engine.errors import Cancelled
from engine.events import CancelToken, Event, Progress
from gui.gil import collect_on_gui_thread, compute_threads, favour_gui_thread, import_engine

DELIVERY_MS = 50  # events reach the GUI in batches, at most 20 times a second
COMPLETED, CANCELLED, FAILED = "completed", "cancelled", "failed"

_LIVE: set[Worker] = set()  # started workers, kept alive until their thread has ended


@dataclass(frozen=True)
class Outcome:
    """How a job ended: `status` is COMPLETED, CANCELLED or FAILED; `result` is a completed job's return value."""

    status: str
    result: Any = None


def live_workers() -> list[Worker]:
    """Workers whose thread is still running (the test fixture checks this is empty).

    A worker leaves `_LIVE` only after its `_ended` slot has returned, so no Python wrapper is
    collected while its thread or its final queued signals are still on the way.
    """
    return [w for w in _LIVE if w.is_running()]


def wait_for_all(msecs: int = 30_000) -> bool:
    """Wait for every live worker thread to end; True when none is left."""
    for worker in list(_LIVE):
        worker.wait(msecs)
    return not live_workers()


def _release(worker: Worker) -> None:
    _LIVE.discard(worker)
    if not _LIVE:
        collect_on_gui_thread(False)


def coalesce(events: list[Event]) -> list[Event]:
    """Drop Progress events that a later Progress of the same stage in the batch supersedes."""
    latest = {e.index: i for i, e in enumerate(events) if isinstance(e, Progress)}
    return [e for i, e in enumerate(events) if not isinstance(e, Progress) or latest[e.index] == i]


class _Runner(QObject):
    """Lives in the work thread and runs the work once."""

    def __init__(self, work: Callable[[], None], thread: QThread) -> None:
        super().__init__()
        self.work, self.thread = work, thread

    @Slot()
    def run(self) -> None:
        try:
            self.work()
        finally:
            self.thread.quit()


class _Queue:
    """The job's EventSink: events wait here, in the work thread, for the GUI thread's next delivery."""

    def __init__(self) -> None:
        self.events: deque[Event] = deque()

    def emit(self, event: Event) -> None:
        self.events.append(event)


class Worker(QObject):
    """Runs `job(sink, token, *args)` once on a QThread it owns; see the module docstring for the signals.

    Every signal fires on the GUI thread (even for plain-function or lambda receivers): events in batches
    every DELIVERY_MS, the latest Progress of a stage per batch; `failed` and `finished` from `_ended`, a
    queued slot, after the last events.

    Lifetime: the Qt objects must be destroyed on the GUI thread, outside their own event handlers.
    The runner's reference to `_work` (a cycle through this object) exists only while the thread runs,
    and the failed job's frames are cleared (their locals released; the traceback still formats), so
    the last reference is dropped by the owner or by `_LIVE`, never by the cyclic collector, which may
    run in any thread (a worker collected from a work thread crashed the window).
    """

    event = Signal(object)
    failed = Signal(object)
    finished = Signal(object)

    def __init__(self, job: Callable[..., Any], *args: Any) -> None:
        super().__init__()
        self.job, self.args = job, args
        self.token = CancelToken()
        self._queue = _Queue()
        self._outcome: Outcome | None = None  # both set by the work thread, read once it has ended
        self._error: BaseException | None = None
        self._thread = QThread()
        self._thread.setObjectName(type(self).__name__)
        self._runner: _Runner | None = None
        self._drain_timer = QTimer(self)
        self._drain_timer.setInterval(DELIVERY_MS)
        self._drain_timer.timeout.connect(self._drain)

    def start(self) -> None:
        self._runner = _Runner(self._work, self._thread)
        self._runner.moveToThread(self._thread)
        self._thread.started.connect(self._runner.run)
        self._thread.finished.connect(self._ended)
        _LIVE.add(self)
        collect_on_gui_thread(True)
        favour_gui_thread()
        self._drain_timer.start()
        self._thread.start()

    def cancel(self) -> None:
        """Ask the job to stop at its next step; the thread then ends by itself."""
        self.token.cancel()

    def is_running(self) -> bool:
        return self._thread.isRunning()

    def wait(self, msecs: int = 30_000) -> bool:
        return self._thread.wait(msecs) if self._thread.isRunning() else True

    def _work(self) -> None:
        """Work thread: the one place a job's outcome is decided; every exception is kept for `failed`."""
        try:
            import_engine()
            self._outcome = Outcome(COMPLETED, self.job(self._queue, self.token, *self.args))
        except Cancelled:
            self._outcome = Outcome(CANCELLED)
        except BaseException as exc:
            self._outcome, self._error = Outcome(FAILED), exc

    @Slot()
    def _drain(self) -> None:
        events = self._queue.events
        for event in coalesce([events.popleft() for _ in range(len(events))]):
            self.event.emit(event)

    @Slot()
    def _ended(self) -> None:
        self._thread.wait()  # `finished` comes from the thread just before it ends: let it end
        self._runner.work = None  # break the cycle worker -> runner -> bound method -> worker
        self._drain_timer.stop()
        self._drain()
        error, self._error = self._error, None
        if error is not None:
            traceback.clear_frames(error.__traceback__)  # the failed job's locals (a model, say) are released
            if self.isSignalConnected(QMetaMethod.fromSignal(self.failed)):
                self.failed.emit(error)
            else:  # nothing dies silently in a thread
                sys.excepthook(type(error), error, error.__traceback__)
        self.finished.emit(self._outcome)
        # `_LIVE` may hold the last reference: drop it from the event loop, not inside this slot,
        # which runs in this object's own event handler
        QTimer.singleShot(0, lambda: _release(self))


class JobHost:
    """Mixed into a tab that runs one engine job at a time on a `Worker`: the tab's `handle(event)`,
    `_failed(error)`, `_finished(outcome, target)` and `_set_running(running)` hear it, and its `eta` label
    says when a cancel is pending."""

    worker: Worker | None = None
    started = 0.0
    cancelling = "Cancelling after the current step…"

    def is_running(self) -> bool:
        return self.worker is not None and self.worker.is_running()

    def run_job(self, job: Callable[..., Any], *args: Any, target: Path) -> Worker:
        """Start `job(sink, token, *args)`; `_finished` gets `target` (what the job writes) with the outcome."""
        self.worker = Worker(job, *args)
        self.worker.event.connect(self.handle)
        self.worker.failed.connect(self._failed)
        self.worker.finished.connect(lambda outcome: self._finished(outcome, target))
        self.started = time.monotonic()
        self.worker.start()
        self._set_running(True)
        return self.worker

    def cancel(self) -> None:
        if self.is_running():
            self.worker.cancel()
            self.eta.setText(self.cancelling)

    def cancel_and_wait(self, msecs: int = 60_000) -> None:
        if self.worker is not None:
            self.worker.cancel()
            self.worker.wait(msecs)


class RunWorker(Worker):
    """Runs one recipe (or resumes one run folder) through `engine.pipeline.run`.

    A completed run's `Outcome.result` is its run folder; a failure is reported twice, first by the
    engine as a `Failure` event (for errors once the run folder exists), then by `failed`.
    """

    def __init__(self, recipe: Any = None, resume: Path | None = None, threads: int | None = None) -> None:
        super().__init__(_run_pipeline, recipe, Path(resume) if resume is not None else None,
                         threads or compute_threads())


def _run_pipeline(sink: Any, token: CancelToken, recipe: Any, resume: Path | None, threads: int) -> Path:
    import torch

    from engine import pipeline

    torch.set_num_threads(threads)
    return pipeline.run(recipe, sink, token, resume=resume)


class BackgroundTask(Worker):
    """Runs a short `fn(*args, **kwargs)` that takes no sink or token; its return value is the result."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(_plain, functools.partial(fn, *args, **kwargs))


def _plain(sink: Any, token: CancelToken, call: Callable[[], Any]) -> Any:
    return call()


def run_in_background(fn: Callable[..., Any], *args: Any, on_done: Callable[[Any], None] | None = None,
                      on_error: Callable[[BaseException], None] | None = None, **kwargs: Any) -> BackgroundTask:
    """Start a `BackgroundTask`: `on_done(result)` or `on_error(exception)` on the GUI thread."""
    task = BackgroundTask(fn, *args, **kwargs)
    if on_done is not None:

        def done(outcome: Outcome) -> None:
            if outcome.status == COMPLETED:
                on_done(outcome.result)

        task.finished.connect(done)
    if on_error is not None:
        task.failed.connect(on_error)
    task.start()
    return task
