"""Training tab: stage timeline, progress with ETA and tokens/s, live loss and learning-rate curves, log.

Everything here is driven by engine events (`handle(event)`), whether they come from a run started
in this window (`RunWorker`) or from a run folder written by another process (`RunFollower`).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
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
    QSizePolicy,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from engine.errors import RecipeError
from engine.events import (
    Artifact,
    Event,
    Failure,
    Log,
    Metric,
    Progress,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
)
from engine.runfolder import RunFolder
from gui.style import SERIES_COLOURS, STATUS_LABELS, show_error, status_css
from gui.worker import RunFollower, RunWorker

TRAINING_STAGES = ("adapt", "distill", "shrink")
REDRAW_MS = 50  # 20 Hz, one plot per tick: each repaint pass stays short


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Series:
    """One curve: preallocated, growing numpy buffers and a plot item redrawn only when dirty."""

    def __init__(self, item: pg.PlotDataItem, plot: int, capacity: int = 512) -> None:
        self.item = item
        self.plot = plot  # stage index of its loss plot, 0 for the learning-rate plot
        self.x = np.empty(capacity)
        self.y = np.empty(capacity)
        self.n = 0
        self.dirty = False

    def append(self, x: float, y: float) -> None:
        if self.n == len(self.x):
            self.x = np.concatenate([self.x, np.empty(len(self.x))])
            self.y = np.concatenate([self.y, np.empty(len(self.y))])
        self.x[self.n], self.y[self.n] = x, y
        self.n += 1
        self.dirty = True

    def redraw(self) -> None:
        if self.dirty:
            self.item.setData(self.x[: self.n], self.y[: self.n], skipFiniteCheck=True)
            self.dirty = False


def _plot(title: str, left: str) -> pg.PlotWidget:
    widget = pg.PlotWidget(background="w")
    widget.setMinimumSize(260, 200)
    item = widget.getPlotItem()
    item.setTitle(title, color="#111827", size="10pt")
    item.setLabel("bottom", "step", color="#374151")
    item.setLabel("left", left, color="#374151")
    item.showGrid(x=True, y=True, alpha=0.25)
    item.setClipToView(True)
    item.setDownsampling(auto=True, mode="peak")
    item.addLegend(offset=(-10, 10), labelTextSize="9pt", labelTextColor="#1f2937",
                   brush=pg.mkBrush(255, 255, 255, 210))
    for axis in ("bottom", "left"):
        item.getAxis(axis).setTextPen("#374151")
        item.getAxis(axis).setPen("#9ca3af")
        item.getAxis(axis).enableAutoSIPrefix(False)
    return widget


class CurvePanel(QWidget):
    """Loss curves, one plot per training stage, and one learning-rate plot for the whole run."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(8)
        self.loss_plots: dict[int, pg.PlotWidget] = {}
        self.spare = [_plot("", "loss") for _ in range(2)]  # built ahead: a run's start stays quick
        for plot in self.spare:
            plot.setParent(self)
            plot.hide()
        self.next_plot = 0
        self.series: dict[tuple[int, str, str, str], Series] = {}  # (stage index, phase, name, split)
        self.stage_kinds: dict[int, str] = {}
        self.colours: dict[str, str] = {}
        self.lr_plot = _plot("Learning rate", "learning rate")
        self.empty = QLabel("Curves appear here when a run trains (distill, shrink and adapt stages).")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setStyleSheet("color: #6b7280;")
        self._relayout()
        self.timer = QTimer(self)
        self.timer.setInterval(REDRAW_MS)
        self.timer.timeout.connect(lambda: self.redraw())
        self.timer.start()

    def reset(self, stages: tuple[str, ...] = ()) -> None:
        for plot in self.loss_plots.values():
            plot.getPlotItem().clear()
            plot.hide()
            self.spare.append(plot)
        self.loss_plots.clear()
        self.series.clear()
        self.lr_plot.getPlotItem().clear()
        self.stage_kinds = dict(enumerate(stages, start=1))
        for index, kind in self.stage_kinds.items():
            if kind in TRAINING_STAGES:
                self._loss_plot(index)
        self._relayout()

    def set_log_scale(self, on: bool) -> None:
        for plot in self.loss_plots.values():
            plot.getPlotItem().setLogMode(y=on)

    def add(self, event: Metric) -> bool:
        """Add a training metric point; False when the metric is not a curve (e.g. a final statistic)."""
        if "/" not in event.name or event.value is None or not math.isfinite(event.value):
            return False
        phase, name = event.name.rsplit("/", 1)
        key = (event.index, phase, name, event.split)
        series = self.series.get(key) or self._new_series(key, event.stage)
        series.append(event.step, event.value)
        return True

    def redraw(self, everything: bool = False) -> None:
        """Push new points to the plot items: every plot, or (on the timer) the next plot with news."""
        dirty = sorted({s.plot for s in self.series.values() if s.dirty})
        if not dirty:
            return
        if not everything:
            dirty = [next((p for p in dirty if p >= self.next_plot), dirty[0])]
            self.next_plot = dirty[0] + 1
        for series in self.series.values():
            if series.plot in dirty:
                series.redraw()

    def rows(self) -> list[tuple[int, str, str, str, str, float, float]]:
        """(stage index, stage, phase, name, split, step, value) for every point."""
        out = []
        for (index, phase, name, split), s in self.series.items():
            kind = self.stage_kinds.get(index, phase)
            points = zip(s.x[: s.n].tolist(), s.y[: s.n].tolist(), strict=True)
            out += [(index, kind, phase, name, split, x, y) for x, y in points]
        return out

    def _loss_plot(self, index: int) -> pg.PlotWidget:
        if index not in self.loss_plots:
            kind = self.stage_kinds.get(index, "stage")
            plot = self.spare.pop() if self.spare else _plot("", "loss")
            plot.getPlotItem().setTitle(f"Stage {index} · {kind} — loss", color="#111827", size="10pt")
            plot.show()
            self.loss_plots[index] = plot
            self._relayout()
        return self.loss_plots[index]

    def _new_series(self, key: tuple[int, str, str, str], stage: str) -> Series:
        index, phase, name, split = key
        self.stage_kinds.setdefault(index, stage)
        colour = self.colours.setdefault(name, SERIES_COLOURS[len(self.colours) % len(SERIES_COLOURS)])
        if name == "learning_rate":
            colour = SERIES_COLOURS[(index - 1) % len(SERIES_COLOURS)]
            item = self.lr_plot.getPlotItem().plot(pen=pg.mkPen(colour, width=2), name=f"{index} · {phase}")
        else:
            label = name if phase == stage else f"{phase} {name}"
            plot = self._loss_plot(index).getPlotItem()
            if split == "train":  # the total solid, its components dashed (they may coincide with it)
                style = Qt.PenStyle.SolidLine if name == "total" else Qt.PenStyle.DashLine
                item = plot.plot(pen=pg.mkPen(colour, width=2, style=style), name=label)
            else:
                item = plot.plot(pen=None, symbol="o", symbolSize=8, symbolBrush=colour,
                                 symbolPen=pg.mkPen("w", width=1), name=f"{label} ({split})")
        self.series[key] = Series(item, 0 if name == "learning_rate" else index)
        return self.series[key]

    def _relayout(self) -> None:
        while self.grid.count():
            self.grid.takeAt(0)
        widgets = [self.loss_plots[i] for i in sorted(self.loss_plots)] or [self.empty]
        self.empty.setVisible(not self.loss_plots)
        for column, widget in enumerate([*widgets, self.lr_plot]):
            self.grid.addWidget(widget, 0, column)
            self.grid.setColumnStretch(column, 1)


class StageTimeline(QWidget):
    """One coloured chip per stage: pending / running / done / failed / cancelled."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.row = QHBoxLayout(self)
        self.row.setContentsMargins(0, 0, 0, 0)
        self.row.setSpacing(6)
        self.chips: list[QLabel] = []
        self.kinds: list[str] = []
        self.statuses: list[str] = []
        self.placeholder = QLabel("No run yet: press Start (F5) to compress the recipe in the Setup tab.")
        self.placeholder.setStyleSheet("color: #6b7280;")
        self.row.addWidget(self.placeholder)
        self.row.addStretch(1)

    def set_stages(self, kinds: tuple[str, ...] | list[str]) -> None:
        for chip in self.chips:
            chip.setParent(None)
            chip.deleteLater()
        self.kinds, self.statuses, self.chips = list(kinds), ["pending"] * len(kinds), []
        self.placeholder.setVisible(not kinds)
        for i, _kind in enumerate(self.kinds):
            chip = QLabel()
            chip.setAlignment(Qt.AlignmentFlag.AlignCenter)
            chip.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            self.row.insertWidget(i, chip)
            self.chips.append(chip)
            self._paint(i)

    def set_status(self, index: int, status: str) -> None:
        if 1 <= index <= len(self.chips):
            if status == "skipped" and self.statuses[index - 1] == "completed":
                return
            self.statuses[index - 1] = status
            self._paint(index - 1)

    def status(self, index: int) -> str:
        return self.statuses[index - 1]

    def _paint(self, i: int) -> None:
        status = self.statuses[i]
        self.chips[i].setText(f"{i + 1} · {self.kinds[i]}  —  {STATUS_LABELS.get(status, status)}")
        self.chips[i].setStyleSheet(status_css(status))


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
        self.can_start = True
        self.started_at: float | None = None
        self.finished_stages = 0
        self._build()
        self._update_buttons()

    # ---- layout ----
    def _build(self) -> None:
        self.start_button = QPushButton("Start")
        self.start_button.setObjectName("primary")
        self.start_button.setToolTip("Compress the recipe in the Setup tab (F5)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop at the next step; finished stages stay on disk (Ctrl+.)")
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
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.curves)
        splitter.addWidget(self.log)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        splitter.setChildrenCollapsible(False)
        splitter.setSizes([560, 180])

        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 12, 12, 12)
        layout.setSpacing(10)
        layout.addLayout(buttons)
        layout.addWidget(progress)
        layout.addWidget(splitter, 1)

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
                self.finished_stages = 0
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
            self.stage_bar.setFormat(
                f"{event.index} · {event.stage}: step {event.step}/{event.total} · "
                f"{event.tokens_per_second:,.0f} tokens/s · ETA {format_duration(event.eta_seconds)}")
            self._overall(event.index - 1 + event.step / max(event.total, 1))
        elif isinstance(event, Metric):
            if not self.curves.add(event):
                self._log(event, f"[{event.index:02d} {event.stage}] {event.name} = {_number(event.value)}")
            elif event.split != "train":
                self._log(event, f"[{event.index:02d} {event.stage}] {event.split} {event.name} = "
                                 f"{_number(event.value)}")
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
        elif isinstance(event, Failure):
            self._log(event, f"error: {event.message}")
            if self.worker is not None:  # live failure: tell the user now (a replayed one is in the log)
                QTimer.singleShot(0, lambda e=event: self._show_failure(e.message, e.traceback))
        elif isinstance(event, RunFinished):
            self.run_status = event.status
            self._log(event, f"run {event.status}" + (f": {event.message}" if event.message else ""))
            self.overall.setFormat(f"Overall: {event.status} · %p%")
            self._show_run_label()
            self._update_buttons()
            self.status_message.emit(f"Run {event.status}" + (f": {event.message}" if event.message else ""))

    # ---- internals ----
    def _launch(self, worker: RunWorker) -> None:
        self.worker = worker
        worker.event.connect(self.handle)
        worker.failed.connect(self._show_failure)
        worker.finished.connect(self._worker_finished)
        worker.start()
        self.status_message.emit("Run starting…")
        self._update_buttons()
        self.running_changed.emit(True)

    def _worker_finished(self, run_dir: Path | None) -> None:
        self.worker = None
        self.curves.redraw(everything=True)
        if run_dir is not None:
            self.run_dir = Path(run_dir)
        if self.run_dir is not None:
            self.run_status = RunFolder(self.run_dir).status() or self.run_status
        self._show_run_label()
        self._update_buttons()
        self.running_changed.emit(False)
        self.run_finished.emit(self.run_dir, self.run_status)

    def _show_failure(self, message: str, details: str = "") -> None:
        if self.run_label.text().startswith("Preparing"):
            self.run_label.setText("The run did not start")
        self.status_message.emit(f"Run failed: {message}")
        show_error(self, "The run failed", message, details)

    def _stop_following(self) -> None:
        if self.follower is not None:
            self.follower.stop()
            self.follower.deleteLater()
            self.follower = None

    def _clear(self) -> None:
        self.run_dir, self.run_status, self.started_at, self.finished_stages = None, "", None, 0
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


