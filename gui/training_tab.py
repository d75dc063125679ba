"""Training tab: stage timeline, progress with ETA and tokens/s, live loss and learning-rate curves, log.

Everything here is driven by engine events (`handle(event)`), whether they come from a run started
in this window (`RunWorker`) or from a run folder written by another process (`RunFollower`).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QFontDatabase
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from engine.errors import RecipeError
from engine.events import (
    Artifact,
    EvalDevScore,
    EvalProgress,
    Event,
    Failure,
    Log,
    Metric,
    Progress,
    QualityWarning,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
)
from engine.runfolder import RunFolder
from gui.durations import format_duration
from gui.errors import details, message
from gui.layouts import splitter
from gui.loss_plots import CurvePanel
from gui.run_follower import RunFollower
from gui.stage_timeline import StageTimeline
from gui.style import show_error
from gui.worker import Outcome, RunWorker


class TrainingTab(QWidget):
    """Start, cancel, resume and watch runs."""

    status_message = Signal(str)
    run_finished = Signal(object, str)  # run folder (or None), status
    running_changed = Signal(bool)

    def __init__(self, recipe_provider: Callable[[], Any] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.recipe_provider = recipe_provider
        self.worker: RunWorker | None = None
        self.follower: RunFollower | None = None
        self.run_dir: Path | None = None
        self.run_status = ""
        self.failure: tuple[str, str] | None = None  # (message, details) of the live run's error, shown at its end
        self.can_start = True
        self.started_at: float | None = None
        self._build()
        self._update_buttons()

    # ---- layout ----
    def _build(self) -> None:
        self.start_button = QPushButton("Start")
        self.start_button.setObjectName("primary")
        self.start_button.setToolTip("Compress the recipe in the Setup tab (F5)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop at the next step; finished stages stay on disk (Shift+F5)")
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue this failed or cancelled run from its last checkpoint")
        self.export_button = QPushButton("Export curves (CSV)…")
        self.log_scale = QCheckBox("Log-scale loss")
        self.run_label = QLabel("No run")
        self.run_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.run_label.setStyleSheet("color: #374151;")
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_button.clicked.connect(lambda: self.resume())
        self.export_button.clicked.connect(self._export_dialog)

        buttons = QHBoxLayout()
        for button in (self.start_button, self.cancel_button, self.resume_button):
            buttons.addWidget(button)
        buttons.addSpacing(12)
        buttons.addWidget(self.run_label, 1)
        buttons.addWidget(self.log_scale)
        buttons.addWidget(self.export_button)

        self.timeline = StageTimeline()
        self.overall = QProgressBar()
        self.overall.setRange(0, 1000)
        self.overall.setValue(0)
        self.overall.setFormat("Overall: –")
        self.stage_bar = QProgressBar()
        self.stage_bar.setValue(0)
        self.stage_bar.setFormat("Stage: –")
        progress = QGroupBox("Progress")
        grid = QGridLayout(progress)
        grid.setHorizontalSpacing(10)
        grid.addWidget(self.timeline, 0, 0, 1, 2)
        grid.addWidget(QLabel("Run"), 1, 0)
        grid.addWidget(self.overall, 1, 1)
        grid.addWidget(QLabel("Stage"), 2, 0)
        grid.addWidget(self.stage_bar, 2, 1)

        self.curves = CurvePanel()
        self.log_scale.toggled.connect(self.curves.set_log_scale)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        mono.setStyleHint(QFont.StyleHint.Monospace)
        self.log.setFont(mono)
        self.log.setPlaceholderText("Run log")
        split = splitter(Qt.Orientation.Vertical, self.curves, self.log, stretch=(3, 1))
        split.setChildrenCollapsible(False)
        split.setSizes([560, 180])

        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 12, 12, 12)
        layout.setSpacing(10)
        layout.addLayout(buttons)
        layout.addWidget(progress)
        layout.addWidget(split, 1)

    # ---- actions ----
    def is_running(self) -> bool:
        return self.worker is not None

    def set_can_start(self, ok: bool) -> None:
        self.can_start = ok
        self._update_buttons()

    def start(self) -> bool:
        """Start a run on the recipe from the provider (the Setup tab)."""
        if self.is_running() or self.recipe_provider is None:
            return False
        try:
            recipe = self.recipe_provider()
        except RecipeError as exc:
            show_error(self, "The recipe is not ready", str(exc))
            return False
        return self.start_recipe(recipe)

    def start_recipe(self, recipe: Any) -> bool:
        if self.is_running():
            return False
        self._stop_following()
        self._clear()
        self.run_label.setText("Preparing the run (loading the engine and checking the teacher)…")
        self._launch(RunWorker(recipe))
        return True

    def resume(self, run_dir: Path | None = None) -> bool:
        """Resume a failed or cancelled run (this tab's run unless given) from its checkpoints."""
        run_dir = Path(run_dir) if run_dir is not None else self.run_dir
        if self.is_running() or run_dir is None:
            return False
        self.open_run(run_dir, follow=False)
        self._launch(RunWorker(resume=run_dir))
        return True

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            self.status_message.emit("Cancelling: the run stops at its next step…")
            self.cancel_button.setEnabled(False)

    def cancel_and_wait(self, msecs: int = 120_000) -> bool:
        """Cancel a run in this window and wait for its thread to end."""
        worker = self.worker
        if worker is None:
            return True
        worker.cancel()
        return worker.wait(msecs)

    def open_run(self, run_dir: Path, follow: bool = True) -> bool:
        """Show a run folder: replay its events, and follow it while it is still being written."""
        if self.is_running():
            self.status_message.emit("A run is going in this window: cancel it before opening another.")
            return False
        self._stop_following()
        self._clear()
        self.run_dir = Path(run_dir)
        self.run_status = RunFolder(self.run_dir).status()
        self.follower = RunFollower(self.run_dir, parent=self)
        self.follower.event.connect(self.handle)
        self.follower.finished.connect(self._update_buttons)
        self.follower.start()
        if not follow or self.run_status != "running":
            self.follower.stop()
        self.curves.redraw(everything=True)
        self._show_run_label()
        self._update_buttons()
        following = " (following it live)" if self.follower.following else ""
        self.status_message.emit(f"Opened run {self.run_dir.name}{following}")
        return True

    def export_csv(self, path: Path) -> int:
        """Write every curve point as CSV; returns the number of points."""
        rows = self.curves.rows()
        with Path(path).open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["stage_index", "stage", "phase", "name", "split", "step", "value"])
            writer.writerows(rows)
        return len(rows)

    # ---- events ----
    def handle(self, event: Event) -> None:
        """Draw one engine event."""
        if isinstance(event, RunStarted):
            self.run_dir = Path(event.run_dir)
            self.run_status = "running"
            if not (event.resumed and self.timeline.kinds == list(event.stages)):
                self.timeline.set_stages(event.stages)
                self.curves.reset(event.stages)
            self.started_at = event.time
            self._show_run_label()
            self._update_buttons()
            self._log(event, f"run started: {event.run_dir}" + (" (resumed)" if event.resumed else ""))
        elif isinstance(event, StageStarted):
            self.timeline.set_status(event.index, "running")
            if event.total_steps:
                self.stage_bar.setRange(0, event.total_steps)
                self.stage_bar.setValue(0)
            else:
                self.stage_bar.setRange(0, 0)
            self.stage_bar.setFormat(f"{event.index} · {event.stage}: starting")
            self._overall(event.index - 1)
            self._log(event, f"[{event.index:02d} {event.stage}] started")
        elif isinstance(event, Progress):
            self.stage_bar.setRange(0, max(event.total, 1))
            self.stage_bar.setValue(event.step)
            done = (f"step {event.step}/{event.total} · {event.tokens_per_second:,.0f} tokens/s"
                    if event.unit == "step" else event.text)  # else a pass over the corpus: lines, lines/s
            eta = format_duration(event.eta_seconds)
            self.stage_bar.setFormat(f"{event.index} · {event.stage}: {done} · ETA {eta}")
            self._overall(event.index - 1 + event.step / max(event.total, 1))
        elif isinstance(event, Metric):
            if not self.curves.add(event):
                self._log(event, f"[{event.index:02d} {event.stage}] {event.name} = {_number(event.value)}")
            elif event.split != "train":
                self._log(event, f"[{event.index:02d} {event.stage}] {event.split} {event.name} = "
                                 f"{_number(event.value)}")
        elif isinstance(event, EvalProgress):  # the recipe's [evaluation], after the last stage
            self.stage_bar.setRange(0, max(event.total, 1))
            self.stage_bar.setValue(event.done)
            now = f" · {event.task}, {event.model}, seed {event.seed}" if event.task else ""
            self.stage_bar.setFormat(f"evaluation: {event.done}/{event.total}{now} · "
                                     f"ETA {format_duration(event.eta_seconds)}")
        elif isinstance(event, EvalDevScore):
            self._log(event, f"[eval] {event.task} {event.model} seed {event.seed}: {event.text}")
        elif isinstance(event, StageFinished):
            self.timeline.set_status(event.index, event.status)
            if event.status in ("completed", "skipped"):
                self.stage_bar.setRange(0, 1)
                self.stage_bar.setValue(1)
                self.stage_bar.setFormat(f"{event.index} · {event.stage}: done")
                self._overall(event.index)
            else:
                self.stage_bar.setRange(0, 1)
                self.stage_bar.setFormat(f"{event.index} · {event.stage}: {event.status}")
            if event.status != "skipped":
                self._log(event, f"[{event.index:02d} {event.stage}] {event.status}")
        elif isinstance(event, Artifact):
            self._log(event, f"[{event.index:02d} {event.stage}] saved {event.path} — {event.params:,} parameters, "
                             f"{event.bytes / 1e6:,.1f} MB")
        elif isinstance(event, Log):
            self._log(event, event.message if event.level == "info" else f"{event.level}: {event.message}")
        elif isinstance(event, QualityWarning):
            self.timeline.warn(event.index, event.message)
            self._log(event, f"[{event.index:02d} {event.stage}] warning: {event.message}")
        elif isinstance(event, Failure):
            self._log(event, f"error: {event.message}")
            if self.worker is not None:  # live: shown when the worker ends (a replayed one is in the log)
                self.failure = (event.message, event.traceback)
        elif isinstance(event, RunFinished):
            self.run_status = event.status
            self._log(event, f"run {event.status}" + (f": {event.message}" if event.message else ""))
            self.overall.setFormat(f"Overall: {event.status} · %p%")
            self._show_run_label()
            self._update_buttons()
            self.status_message.emit(f"Run {event.status}" + (f": {event.message}" if event.message else ""))

    # ---- internals ----
    def _launch(self, worker: RunWorker) -> None:
        self.worker, self.failure = worker, None
        worker.event.connect(self.handle)
        worker.failed.connect(self._worker_failed)
        worker.finished.connect(self._worker_finished)
        worker.start()
        self.status_message.emit("Run starting…")
        self._update_buttons()
        self.running_changed.emit(True)

    def _worker_failed(self, error: BaseException) -> None:
        if self.failure is None:  # the engine's Failure event words it better; before the run folder, there is none
            self.failure = (message(error), details(error))

    def _worker_finished(self, outcome: Outcome) -> None:
        self.worker = None
        self.curves.redraw(everything=True)
        if outcome.result is not None:
            self.run_dir = Path(outcome.result)
        if self.run_dir is not None:
            self.run_status = RunFolder(self.run_dir).status() or self.run_status
        self._show_run_label()
        self._update_buttons()
        self.running_changed.emit(False)
        self.run_finished.emit(self.run_dir, self.run_status)
        failure, self.failure = self.failure, None
        if failure is not None:
            if self.run_dir is None:  # no run folder: the run failed while it was being prepared
                self.run_label.setText("The run did not start")
            self.status_message.emit(f"Run failed: {failure[0]}")
            show_error(self, "The run failed", *failure)

    def _stop_following(self) -> None:
        if self.follower is not None:
            self.follower.stop()
            self.follower.deleteLater()
            self.follower = None

    def _clear(self) -> None:
        self.run_dir, self.run_status, self.started_at = None, "", None
        self.timeline.set_stages(())
        self.curves.reset()
        self.log.clear()
        self.overall.setValue(0)
        self.overall.setFormat("Overall: –")
        self.stage_bar.setRange(0, 1)
        self.stage_bar.setValue(0)
        self.stage_bar.setFormat("Stage: –")

    def _overall(self, stages_done: float) -> None:
        total = max(len(self.timeline.kinds), 1)
        self.overall.setValue(int(1000 * min(stages_done / total, 1.0)))
        elapsed = f" · elapsed {format_duration(time.time() - self.started_at)}" if self.started_at else ""
        self.overall.setFormat(f"Overall: %p% of {total} stages{elapsed}")

    def _log(self, event: Event, text: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
        self.log.appendPlainText(f"{stamp}  {text}")

    def _show_run_label(self) -> None:
        if self.run_dir is None:
            self.run_label.setText("No run")
            return
        following = " · following live" if self.follower is not None and self.follower.following else ""
        self.run_label.setText(f"<b>{self.run_dir.name}</b> — {self.run_status or 'unknown'}{following}")

    def _update_buttons(self) -> None:
        running = self.is_running()
        self.start_button.setEnabled(not running and self.can_start and self.recipe_provider is not None)
        self.cancel_button.setEnabled(running and not (self.worker and self.worker.token.cancelled))
        self.resume_button.setEnabled(not running and self.run_dir is not None
                                      and self.run_status in ("failed", "cancelled"))

    def _export_dialog(self) -> None:
        name = f"{self.run_dir.name}-curves.csv" if self.run_dir else "curves.csv"
        path, _ = QFileDialog.getSaveFileName(self, "Export curve data", name, "CSV files (*.csv)")
        if path:
            count = self.export_csv(Path(path))
            self.status_message.emit(f"Wrote {count:,} points to {path}")


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


