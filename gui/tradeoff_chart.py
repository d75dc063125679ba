"""The Trade-offs scatter plot: model size (log axis) versus a score, one colour per run, the Pareto front."""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6.QtCore import Qt

from gui.plots import LABEL_COLOUR, TITLE_COLOUR, add_legend, new_plot, set_title
from gui.tradeoff_points import NONE, ModelPoint, pareto_front, score_label, tip

SIZE_LABELS = {"params": "parameters (millions, log scale)", "mb": "size on disk (MB, log scale)"}


class SizeAxis(pg.AxisItem):
    """A log-scale axis (data are log10 of the size) labelled with plain numbers at 1, 2 and 5 × 10^k."""

    def __init__(self) -> None:
        super().__init__("bottom")
        self.setLogMode(True)

    def logTickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:
        out = []
        for v in values:
            real = 10 ** v
            mantissa = round(real / 10 ** math.floor(v + 1e-9), 6)
            out.append(f"{real:,.{max(0, -math.floor(v + 1e-9))}f}" if mantissa in (1, 2, 5) else "")
        return out


def y_value(point: ModelPoint, key: str) -> float:
    """The point's height: its score in %, or its stage index when no score is chosen."""
    return float(point.stage) if key == NONE else 100 * point.scores[key][0]


class TradeoffChart:
    """The plot widget (`plot`) and what it shows: `shown` points in drawing order, `front` indices into them."""

    def __init__(self) -> None:
        self.plot = new_plot(axis_items={"bottom": SizeAxis()})
        self.plot.setMinimumHeight(260)
        item = self.plot.getPlotItem()
        self.legend = add_legend(item, (10, 10))
        self.front_curve = pg.PlotDataItem(pen=pg.mkPen("#6b7280", width=1.5, style=Qt.PenStyle.DashLine))
        item.addItem(self.front_curve)
        self.scatters: list[pg.ScatterPlotItem] = []
        self.labels: list[pg.TextItem] = []
        self.shown: list[ModelPoint] = []
        self.front: list[int] = []

    def draw(self, runs: list[tuple[str, str, list[ModelPoint]]], key: str, unit: str) -> None:
        """Draw (run name, colour, points) per run against score `key` and size `unit` ("params" or "mb")."""
        item = self.plot.getPlotItem()
        for old in [*self.scatters, *self.labels]:
            item.removeItem(old)
        self.scatters, self.labels, self.shown = [], [], []
        for run, colour, points in runs:
            spots = []
            for p in points:
                x, y = math.log10(p.size(unit)), y_value(p, key)
                teacher = p.stage == 0
                spots.append({"pos": (x, y), "data": len(self.shown), "symbol": "s" if teacher else "t" if p.trial
                              else "o", "size": 14 if teacher else 9 if p.trial else 11})
                label = pg.TextItem(p.name, color=TITLE_COLOUR, anchor=(0, 1.1))
                label.setPos(x, y)
                item.addItem(label)
                self.labels.append(label)
                self.shown.append(p)
            scatter = pg.ScatterPlotItem(spots=spots, pen=pg.mkPen(TITLE_COLOUR, width=1), brush=pg.mkBrush(colour),
                                         hoverable=True, hoverSize=16, hoverBrush=pg.mkBrush(colour),
                                         tip=lambda x, y, data: tip(self.shown[data], key), name=run)
            item.addItem(scatter)
            self.scatters.append(scatter)
        xs = [math.log10(p.size(unit)) for p in self.shown]
        ys = [y_value(p, key) for p in self.shown]
        final = [i for i, p in enumerate(self.shown) if not p.trial]  # trials are not finished models
        self.front = [final[i] for i in pareto_front([xs[i] for i in final], [ys[i] for i in final])] \
            if key != NONE else []
        self.front_curve.setData([xs[i] for i in self.front], [ys[i] for i in self.front])
        self.legend.removeItem(self.front_curve)
        if key != NONE:
            self.legend.addItem(self.front_curve, "Pareto front (smaller and better)")
        item.setLabel("bottom", SIZE_LABELS[unit], color=LABEL_COLOUR)
        item.setLabel("left", "stage (0 = teacher)" if key == NONE else f"{score_label(key)} (%)", color=LABEL_COLOUR)
        set_title(item, "Size per stage" if key == NONE else f"Size versus {score_label(key)}")
        item.getAxis("left").setTicks([[(i, str(i)) for i in range(8)]] if key == NONE else None)
        item.enableAutoRange()
        self._pad_view(xs, ys)

    def _pad_view(self, xs: list[float], ys: list[float]) -> None:
        """Leave room for the labels on the right and above the points."""
        if not xs:
            return
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        dx, dy = max(x1 - x0, 0.3), max(y1 - y0, 1.0)
        self.plot.getPlotItem().setRange(xRange=(x0 - 0.08 * dx, x1 + 0.25 * dx),
                                         yRange=(y0 - 0.1 * dy, y1 + 0.18 * dy), padding=0)
