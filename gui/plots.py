"""pyqtgraph plots in the app's light look: white background, dark titles, grey axes, a boxed legend."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtWidgets import QGridLayout, QWidget

TITLE_COLOUR = "#111827"
LABEL_COLOUR = "#374151"
AXIS_COLOUR = "#9ca3af"


def new_plot(title: str = "", left: str = "", bottom: str = "", *, grid_x: bool = True,
             axis_items: dict[str, pg.AxisItem] | None = None) -> pg.PlotWidget:
    """A plot widget with the app's colours; `left`/`bottom` label the axes when given."""
    widget = pg.PlotWidget(background="w", axisItems=axis_items)
    item = widget.getPlotItem()
    set_title(item, title)
    for axis, label in (("left", left), ("bottom", bottom)):
        if label:
            item.setLabel(axis, label, color=LABEL_COLOUR)
    item.showGrid(x=grid_x, y=True, alpha=0.25)
    for axis in ("bottom", "left"):
        item.getAxis(axis).setTextPen(LABEL_COLOUR)
        item.getAxis(axis).setPen(AXIS_COLOUR)
        item.getAxis(axis).enableAutoSIPrefix(False)
    return widget


def set_title(item: pg.PlotItem, title: str) -> None:
    item.setTitle(title, color=TITLE_COLOUR, size="10pt")


def add_legend(item: pg.PlotItem, offset: tuple[int, int]) -> pg.LegendItem:
    """A legend on a translucent white box; a negative x offset anchors it to the right."""
    return item.addLegend(offset=offset, labelTextSize="9pt", labelTextColor="#1f2937",
                          brush=pg.mkBrush(255, 255, 255, 210))


def plot_grid(owner: QWidget) -> QGridLayout:
    """The layout of a panel of plots: no margins, 8 px between plots."""
    grid = QGridLayout(owner)
    grid.setContentsMargins(0, 0, 0, 0)
    grid.setSpacing(8)
    return grid
