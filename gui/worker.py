"""The only bridge between the GUI thread and work threads (DESIGN.md §3).

- `RunWorker` runs `engine.pipeline.run` on a QThread; every engine event arrives on the GUI
  thread through the `event` signal; errors arrive as a `Failure` event or, for errors raised
  before the run folder exists, through `failed(message, traceback)`.
- `TaskWorker` runs any long job `fn(sink, token, *args)` (evaluation) with events like `RunWorker`.
- `BackgroundTask` runs a short function (teacher inspection, corpus statistics, copying) the
  same way and reports `done(result)` or `failed(message, traceback)`.
- `RunFollower` watches the `events.jsonl` of a run folder written by another process.

Cancellation is cooperative (`CancelToken`); threads are never terminated.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyqtgraph.util.garbage_collector import GarbageCollector
from PySide6.QtCore import QEventLoop, QObject, QThread, QTimer, Signal, Slot

from engine.events import CancelToken, Event, Failure, Progress, RunFinished, read_events

DELIVERY_MS = 50  # events reach the GUI in batches, at most 20 times a second
SWITCH_INTERVAL = 0.001  # seconds a Python thread may hold the GIL before the GUI thread gets a turn

_IMPORT_LOCK = threading.Lock()
_imported = False
_LIVE: set[_Threaded] = set()  # started workers, kept alive until their thread has ended
_collector: GarbageCollector | None = None  # while work threads run: cyclic garbage collected on the GUI thread


def live_workers() -> list[_Threaded]:
    """Workers whose thread is still running (the test fixture checks this is empty).

    A worker leaves `_LIVE` only after its `_ended` slot has returned, so no Python wrapper is
    collected while its thread or its final queued signals are still on the way.
    """
    return [w for w in _LIVE if w.is_running()]


def collecting_on_gui_thread() -> bool:
    return _collector is not None


def _collect_on_gui_thread(active: bool) -> None:
    """While work threads run, the cyclic garbage collector runs only on the GUI thread, on a timer.

    Otherwise it runs in whichever thread allocates when a threshold is crossed — a work thread
    building tensors, say — and destroys any Qt objects caught in garbage cycles there, which
    crashes Qt (seen: a segfault in the window's event loop while a work thread read a tokenizer).
    """
    global _collector
    if active and _collector is None:
        _collector = GarbageCollector(interval=0.25)  # disables automatic collection until stopped
    elif not active and _collector is not None:
        _collector.timer.stop()
        _collector = None
        gc.enable()


def _release(worker: _Threaded) -> None:
    _LIVE.discard(worker)
    if not _LIVE:
        _collect_on_gui_thread(False)


def wait_for_all(msecs: int = 30_000) -> bool:
    """Wait for every live worker thread to end; True when none is left."""
    for worker in list(_LIVE):
        worker.wait(msecs)
    return not live_workers()


def import_engine() -> None:
    """Import the engine's heavy libraries once, one thread at a time.

    transformers' lazy top-level module is not safe to import from two threads at once (it raises
    "cannot import name 'AutoConfig'"), so every work thread passes through here first.
    """
    global _imported
    with _IMPORT_LOCK:
        if _imported:
            return
        import transformers

        import engine.pipeline  # noqa: F401  (torch, transformers' BERT classes, every stage)

        for name in ("AutoConfig", "AutoTokenizer", "AutoModel", "AutoModelForMaskedLM"):
            getattr(transformers, name)
        # the libraries' millions of long-lived objects leave the collector's view: a full collection
        # in a work thread would otherwise hold the GIL (and freeze the window) for a tenth of a second
        gc.freeze()
        _imported = True


def run_event_loop(msecs: int) -> None:
    """Process GUI events for `msecs` while work threads go on (for scripted use: screenshots, self-test).

    `QTest.qWait` keeps the GIL between its event-processing rounds, which starves work threads:
    a teacher inspection that takes 6 s under a real event loop never finished under it.
    """
    loop = QEventLoop()
    QTimer.singleShot(msecs, loop.quit)
    loop.exec()


def idle_workers(timeout_s: float, settle_ms: int = 600) -> bool:
    """Run the event loop until no worker has run for two settle periods (debounced jobs start late)."""
    deadline, idle = time.monotonic() + timeout_s, 0
    while idle < 2 and time.monotonic() < deadline:
        run_event_loop(settle_ms)
        idle = 0 if live_workers() else idle + 1
    return idle >= 2


def favour_gui_thread() -> None:
    """Shorten the GIL switch interval (default 5 ms) while work threads run.

    The GUI thread gives up the GIL in every Qt call it makes; a work thread running Python code
    then keeps it for a whole interval, so a repaint of a few hundred Qt calls could take a
    second. With 1 ms the event loop stays responsive (measured by bench/gui_responsiveness.py).
    """
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))


def coalesce(events: list[Event]) -> list[Event]:
    """Drop Progress events that a later Progress of the same stage in the batch supersedes."""
    latest = {e.index: i for i, e in enumerate(events) if isinstance(e, Progress)}
    return [e for i, e in enumerate(events) if not isinstance(e, Progress) or latest[e.index] == i]


def compute_threads() -> int:
    """Torch threads for a run: leave one core to the GUI so the event loop stays responsive."""
    return max(1, (os.cpu_count() or 2) - 1)


class _Job(QObject):
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


class _Threaded(QObject):
    """Lives in the GUI thread and owns a QThread; `_work()` runs there once.

    Every public signal fires on the GUI thread (even for plain-function or lambda receivers):
    results are kept until the thread has ended and emitted from `_ended`, a queued slot.

    Lifetime: the Qt objects must be destroyed on the GUI thread, outside their own event handlers.
    The job's reference to `_work` (a cycle through this object) exists only while the thread runs,
    so the last reference is dropped by the owner or by `_LIVE`, never by the cyclic collector,
    which may run in any thread (a worker collected from a work thread crashed the window).
    """

    def __init__(self) -> None:
        super().__init__()
        self._thread = QThread()
        self._thread.setObjectName(type(self).__name__)
        self._job: _Job | None = None
        self._final: list[tuple[str, tuple[Any, ...]]] = []

    def start(self) -> None:
        self._job = _Job(self._work, self._thread)
        self._job.moveToThread(self._thread)
        self._thread.started.connect(self._job.run)
        self._thread.finished.connect(self._ended)
        _LIVE.add(self)
        _collect_on_gui_thread(True)
        favour_gui_thread()
        self._thread.start()

    def is_running(self) -> bool:
        return self._thread.isRunning()

    def wait(self, msecs: int = 30_000) -> bool:
        return self._thread.wait(msecs) if self._thread.isRunning() else True

    def _post_at_end(self, signal: str, *args: Any) -> None:
        """From the work thread: emit `signal(*args)` on the GUI thread once the thread has ended."""
        self._final.append((signal, args))

    @Slot()
    def _ended(self) -> None:
        self._thread.wait()  # `finished` comes from the thread just before it ends: let it end
        self._job.work = None  # break the cycle worker -> job -> bound method -> worker
        self._before_final()
        for signal, args in self._final:
            getattr(self, signal).emit(*args)
        # `_LIVE` may hold the last reference: drop it from the event loop, not inside this slot,
        # which runs in this object's own event handler
        QTimer.singleShot(0, lambda: _release(self))

    def _work(self) -> None:
        raise NotImplementedError

    def _before_final(self) -> None:
        """GUI thread, after the thread ended, before the final signals."""


class _QueueSink:
    """EventSink of a work thread: queues events for the owner's `event` signal on the GUI thread."""

    def __init__(self, owner: RunWorker | TaskWorker) -> None:
        self.owner = owner
        self.saw_failure = False

    def emit(self, event: Event) -> None:
        if isinstance(event, Failure):
            self.saw_failure = True
        self.owner._events.append(event)


class _EventWorker(_Threaded):
    """A worker whose job emits engine events: queued by the work thread, delivered in batches."""

    event = Signal(object)  # every engine event, delivered on the GUI thread

    def __init__(self) -> None:
        super().__init__()
        self.token = CancelToken()
        self._events: deque[Event] = deque()  # filled by the work thread, drained on the GUI thread
        self._drain_timer = QTimer(self)
        self._drain_timer.setInterval(DELIVERY_MS)
        self._drain_timer.timeout.connect(self._drain)

    def start(self) -> None:
        self._drain_timer.start()
        super().start()

    def cancel(self) -> None:
        """Ask the job to stop at its next step; the thread then ends by itself."""
        self.token.cancel()

    @Slot()
    def _drain(self) -> None:
        batch = [self._events.popleft() for _ in range(len(self._events))]
        for event in coalesce(batch):
            self.event.emit(event)

    def _before_final(self) -> None:
        self._drain_timer.stop()
        self._drain()


class RunWorker(_EventWorker):
    """Runs one recipe (or resumes one run folder) through `engine.pipeline.run`."""

    failed = Signal(str, str)  # message, traceback — only for errors that produced no Failure event
    finished = Signal(object)  # after the thread has ended: run folder (Path) or None

    def __init__(self, recipe: Any = None, resume: Path | None = None, threads: int | None = None) -> None:
        super().__init__()
        self.recipe = recipe
        self.resume = Path(resume) if resume is not None else None
        self.threads = threads or compute_threads()
        self.run_dir: Path | None = None

    def _work(self) -> None:
        sink = _QueueSink(self)
        try:
            import_engine()
            import torch

            from engine import pipeline
            from engine.errors import Cancelled

            torch.set_num_threads(self.threads)
            try:
                self.run_dir = pipeline.run(self.recipe, sink, self.token, resume=self.resume)
            except Cancelled:
                pass
        except BaseException as exc:
            if not sink.saw_failure:
                self._post_at_end("failed", _message(exc), traceback.format_exc())
        finally:
            self._post_at_end("finished", self.run_dir)


class BackgroundTask(_Threaded):
    """Runs `fn(*args, **kwargs)` on a thread: `done(result)` or `failed(message, traceback)`."""

    done = Signal(object)  # both after the thread has ended
    failed = Signal(str, str)

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def _work(self) -> None:
        try:
            import_engine()
            result = self.fn(*self.args, **self.kwargs)
        except Exception as exc:
            self._post_at_end("failed", _message(exc), traceback.format_exc())
        else:
            self._post_at_end("done", result)


class TaskWorker(_EventWorker):
    """Runs `fn(sink, token, *args)` on a thread, like `RunWorker` for any long job (e.g. evaluation).

    Events the function emits arrive through `event` on the GUI thread; then `done(result)`,
    `failed(message, traceback)` or neither (cancelled), and finally `finished()`.
    """

    done = Signal(object)
    failed = Signal(str, str)
    finished = Signal()

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        super().__init__()
        self.fn, self.args = fn, args

    def _work(self) -> None:
        from engine.errors import Cancelled

        try:
            import_engine()
            result = self.fn(_QueueSink(self), self.token, *self.args)
        except Cancelled:
            pass
        except Exception as exc:
            self._post_at_end("failed", _message(exc), traceback.format_exc())
        else:
            self._post_at_end("done", result)
        finally:
            self._post_at_end("finished")


def run_in_background(fn: Callable[..., Any], *args: Any, on_done: Callable[[Any], None] | None = None,
                      on_error: Callable[[str, str], None] | None = None, **kwargs: Any) -> BackgroundTask:
    """Start a `BackgroundTask` with optional callbacks (run on the GUI thread)."""
    task = BackgroundTask(fn, *args, **kwargs)
    if on_done is not None:
        task.done.connect(on_done)
    if on_error is not None:
        task.failed.connect(on_error)
    task.start()
    return task


class RunFollower(QObject):
    """Polls a run folder's `events.jsonl` and emits new events until the run finishes."""

    event = Signal(object)
    finished = Signal()

    def __init__(self, run_dir: Path, interval_ms: int = 500, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.path = Path(run_dir) / "events.jsonl"
        self.offset = 0
        self.done = False
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.poll)

    def start(self) -> None:
        """Replay what is already written, then keep polling while the run goes on."""
        self.poll()
        if not self.done:
            self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    @property
    def following(self) -> bool:
        return self._timer.isActive()

    @Slot()
    def poll(self) -> None:
        if not self.path.is_file():
            return
        try:
            events, self.offset = read_events(self.path, self.offset)
        except (OSError, ValueError, KeyError):
            return  # a line in an unexpected shape: try again at the next tick
        for event in events:
            self.event.emit(event)
            if isinstance(event, RunFinished):
                self.done = True
        if self.done:
            self.stop()
            self.finished.emit()


def _message(exc: BaseException) -> str:
    text = str(exc)
    return text if text and type(exc).__module__.startswith("engine") else f"{type(exc).__name__}: {text}"
