"""Live training curves: one loss plot per training stage and one learning-rate plot, redrawn on a timer."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QLabel, QWidget

from engine.events import Metric
from engine.stages.registry import specs
from gui.plots import add_legend, new_plot, plot_grid, set_title
from gui.style import SERIES_COLOURS

REDRAW_MS = 50  # 20 Hz, one plot per tick: each repaint pass stays short


def training_kinds() -> list[str]:
    """The registered stage kinds that train, each with a loss plot."""
    return [spec.kind for spec in specs() if spec.trains]


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

    def clear(self) -> None:
        self.n = 0
        self.dirty = True

    def redraw(self) -> None:
        if self.dirty:
            self.item.setData(self.x[: self.n], self.y[: self.n], skipFiniteCheck=True)
            self.dirty = False


def curve_plot(title: str, left: str, bottom: str = "step", legend: bool = True) -> pg.PlotWidget:
    """A plot for live curves: clipped to view, peak-downsampled, a legend at the top right when asked."""
    widget = new_plot(title, left, bottom)
    widget.setMinimumSize(260, 200)
    item = widget.getPlotItem()
    item.setClipToView(True)
    item.setDownsampling(auto=True, mode="peak")
    if legend:
        add_legend(item, (-10, 10))
    return widget


class CurvePanel(QWidget):
    """Loss curves, one plot per training stage, and one learning-rate plot for the whole run."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.grid = plot_grid(self)
        self.loss_plots: dict[int, pg.PlotWidget] = {}
        self.spare = [curve_plot("", "loss") for _ in range(2)]  # built ahead: a run's start stays quick
        for plot in self.spare:
            plot.setParent(self)
            plot.hide()
        self.next_plot = 0
        self.series: dict[tuple[int, str, str, str], Series] = {}  # (stage index, phase, name, split)
        self.stage_kinds: dict[int, str] = {}
        self.colours: dict[str, str] = {}
        self.lr_plot = curve_plot("Learning rate", "learning rate")
        self.empty = QLabel(f"Curves appear here when a run trains ({', '.join(training_kinds())} stages).")
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
        training = training_kinds()
        for index, kind in self.stage_kinds.items():
            if kind in training:
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
            plot = self.spare.pop() if self.spare else curve_plot("", "loss")
            set_title(plot.getPlotItem(), f"Stage {index} · {kind} — loss")
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
