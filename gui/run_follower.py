"""`RunFollower`: the events of a run folder written by another process (a CLI run on a server, say).

It polls `events.jsonl` on a QTimer in the GUI thread; no thread is involved.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from engine.events import RunFinished, read_events
from engine.runfolder import RunFolder


class RunFollower(QObject):
    """Polls a run folder's `events.jsonl` and emits new events until the run finishes."""

    event = Signal(object)
    finished = Signal()

    def __init__(self, run_dir: Path, interval_ms: int = 500, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.path = RunFolder(run_dir).events_file
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
