"""The Task model tab's live curves: the training loss per step and the dev score per epoch, redrawn on a timer."""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QWidget

from engine.events import TASK_LOSS, Metric
from gui.loss_plots import REDRAW_MS, Series, curve_plot
from gui.plots import plot_grid, set_title
from gui.style import SERIES_COLOURS

WHOLE_EPOCH_TICKS = 20  # up to this many epochs, one tick per epoch


def metric_title(name: str) -> str:
    """A metric as people write it: `macro_f1` → macro-F1, `f1` → F1."""
    return name.replace("_", "-").replace("f1", "F1")


class TaskCurves(QWidget):
    """Two plots side by side: the loss of each optimiser step, and the headline dev score (%) of each epoch."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        grid = plot_grid(self)
        self.loss_plot = curve_plot("Training loss", "loss", legend=False)  # one curve each: the titles say it
        self.dev_plot = curve_plot("Dev score per epoch", "score (%)", "epoch", legend=False)
        self.dev_plot.getPlotItem().setClipToView(False)  # a few points: the last one stays whole at the edge
        self.loss = Series(self.loss_plot.getPlotItem().plot(pen=pg.mkPen(SERIES_COLOURS[0], width=2)), 1)
        colour = SERIES_COLOURS[1]
        self.dev = Series(self.dev_plot.getPlotItem().plot(pen=pg.mkPen(colour, width=2), symbol="o", symbolSize=8,
                                                           symbolBrush=colour, symbolPen=pg.mkPen("w", width=1)), 2)
        grid.addWidget(self.loss_plot, 0, 0)
        grid.addWidget(self.dev_plot, 0, 1)
        self.timer = QTimer(self)
        self.timer.setInterval(REDRAW_MS)
        self.timer.timeout.connect(self.redraw)
        self.timer.start()

    def reset(self, headline: str, distilled: bool = False) -> None:
        """Empty curves for a new training scored by `headline`."""
        self.loss.clear()
        self.dev.clear()
        set_title(self.loss_plot.getPlotItem(), "Training loss (gold labels and the teacher's predictions)"
                  if distilled else "Training loss")
        set_title(self.dev_plot.getPlotItem(), f"Dev {metric_title(headline)} per epoch")
        self.redraw()

    def add(self, event: Metric) -> bool:
        """A step's training loss or an epoch's dev score; False for any other metric (the final scores)."""
        if event.value is None or not math.isfinite(event.value):
            return False
        if event.split == "train" and event.name == TASK_LOSS:
            self.loss.append(event.step, event.value)
        elif event.split == "dev" and event.step > 0:
            self.dev.append(event.step, 100 * event.value)
            epochs = self.dev_plot.getPlotItem().getAxis("bottom")
            epochs.setTickSpacing(*((1, 1) if event.step <= WHOLE_EPOCH_TICKS else ()))
        else:
            return False
        return True

    def redraw(self) -> None:
        self.loss.redraw()
        self.dev.redraw()
