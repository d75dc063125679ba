"""Evaluation charts: per-task score bars (mean ± std over seeds) and speed-up bars, from a summary."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QWidget

from gui.plots import LABEL_COLOUR, TITLE_COLOUR, add_legend, new_plot, plot_grid, set_title
from gui.style import SERIES_COLOURS

TEACHER_COLOUR = "#6b7280"
BAR_PEN = {"color": LABEL_COLOUR, "width": 0.5}


def _plot(title: str, left: str) -> pg.PlotWidget:
    widget = new_plot(title, left, grid_x=False)
    widget.setMinimumSize(300, 220)
    item = widget.getPlotItem()
    item.setMouseEnabled(x=False, y=False)
    item.hideButtons()
    return widget


def _colours(names: list[str], teacher: str) -> list[str]:
    students = [n for n in names if n != teacher]
    return [TEACHER_COLOUR if n == teacher else SERIES_COLOURS[students.index(n) % len(SERIES_COLOURS)]
            for n in names]


def _value_label(item: pg.PlotItem, text: str, x: float, y: float) -> None:
    label = pg.TextItem(text, color=TITLE_COLOUR, anchor=(0.5, 1.0))
    label.setPos(x, y)
    item.addItem(label)


def _model_axis(item: pg.PlotItem, names: list[str]) -> None:
    """Every model named under its bar (long names shortened from the left; the table has them whole)."""
    axis = item.getAxis("bottom")
    font = QFont()
    font.setPointSizeF(8.5)
    axis.setStyle(hideOverlappingLabels=False, tickFont=font)
    axis.setTicks([[(i, n if len(n) <= 14 else "…" + n[-13:]) for i, n in enumerate(names)]])
    item.setXRange(-0.6, len(names) - 0.4, padding=0)


class ResultPlots(QWidget):
    """Per-task score bars (mean ± std over seeds) and speed-up bars, redrawn from a summary."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.grid = plot_grid(self)
        self.task_plots: dict[str, pg.PlotWidget] = {}  # kept and reused across summaries
        self.speed_plot = _plot("Speed-up over the teacher (CPU)", "× teacher")
        add_legend(self.speed_plot.getPlotItem(), (10, 10))
        self.bars: dict[str, dict[str, float]] = {}  # plot name -> model -> bar height
        self.shown: dict[str, pg.PlotWidget] = {}  # the charts of the current summary, by name

    def plots(self) -> dict[str, pg.PlotWidget]:
        return {**self.task_plots, "speed": self.speed_plot}

    def show_summary(self, summary: dict[str, Any]) -> None:
        from engine.evaluate.report import headline

        for plot in self.plots().values():
            plot.getPlotItem().clear()
            plot.hide()
            self.grid.removeWidget(plot)
        self.bars, self.shown = {}, {}
        names = [m["name"] for m in summary.get("models") or []]
        if not names:
            names = list(dict.fromkeys(r["model"] for r in summary.get("results") or []))
        colours = _colours(names, summary.get("teacher", ""))
        for task in dict.fromkeys(r["task"] for r in summary.get("results") or []):
            metric = headline(task)
            rows = {r["model"]: r for r in summary["results"] if r["task"] == task and r["metric"] == metric}
            plot = self.task_plots.get(task) or self.task_plots.setdefault(task, _plot("", "score (%)"))
            set_title(plot.getPlotItem(), f"{task} — test {metric.replace('_', ' ')} (mean ± std over seeds)")
            self._bars(plot, task, names, colours, {n: (100 * r["mean"], 100 * r["std"]) for n, r in rows.items()})
            self.shown[task] = plot
        models = {m["name"]: m for m in summary.get("models") or []}
        if any(m.get("speedup_latency") for m in models.values()):
            self._speed(names, models)
            self.shown["speed"] = self.speed_plot
        for i, plot in enumerate(self.shown.values()):
            self.grid.addWidget(plot, i // 2, i % 2)
            plot.show()

    def _bars(self, plot: pg.PlotWidget, task: str, names: list[str], colours: list[str],
              values: dict[str, tuple[float, float]]) -> None:
        item = plot.getPlotItem()
        xs = [i for i, n in enumerate(names) if n in values]
        means = [values[names[i]][0] for i in xs]
        stds = [values[names[i]][1] for i in xs]
        item.addItem(pg.BarGraphItem(x=xs, height=means, width=0.6, brushes=[colours[i] for i in xs],
                                     pen=pg.mkPen(**BAR_PEN)))
        item.addItem(pg.ErrorBarItem(x=np.array(xs, float), y=np.array(means), top=np.array(stds),
                                     bottom=np.array(stds), beam=0.18, pen=pg.mkPen(TITLE_COLOUR)))
        for x, mean, std in zip(xs, means, stds, strict=True):
            _value_label(item, f"{mean:.1f}", x, mean + std)
        _model_axis(item, names)
        top = max((m + s for m, s in zip(means, stds, strict=True)), default=100.0)
        item.setYRange(0, top * 1.15 or 1, padding=0)
        self.bars[task] = dict(zip([names[i] for i in xs], means, strict=True))

    def _speed(self, names: list[str], models: dict[str, dict[str, Any]]) -> None:
        item = self.speed_plot.getPlotItem()
        latency = [float(models.get(n, {}).get("speedup_latency") or 0) for n in names]
        throughput = [float(models.get(n, {}).get("speedup_throughput") or 0) for n in names]
        xs = list(range(len(names)))
        item.addItem(pg.BarGraphItem(x=[x - 0.2 for x in xs], height=latency, width=0.38, brush="#0072B2",
                                     pen=pg.mkPen(**BAR_PEN), name="latency (batch 1)"))
        item.addItem(pg.BarGraphItem(x=[x + 0.2 for x in xs], height=throughput, width=0.38, brush="#E69F00",
                                     pen=pg.mkPen(**BAR_PEN), name="throughput (batch 32)"))
        item.addItem(pg.InfiniteLine(pos=1.0, angle=0, pen=pg.mkPen(TEACHER_COLOUR, style=Qt.PenStyle.DashLine)))
        for x, a, b in zip(xs, latency, throughput, strict=True):
            _value_label(item, f"{a:.1f}×", x - 0.2, a)
            _value_label(item, f"{b:.1f}×", x + 0.2, b)
        _model_axis(item, names)
        item.setYRange(0, max([*latency, *throughput, 1.0]) * 1.2, padding=0)
        self.bars["speed"] = dict(zip(names, latency, strict=True))
