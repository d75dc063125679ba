"""The live parameter budget: stacked bars per component for the teacher and each stage, plus sizes.

Rows come from `engine.estimate.estimate`, which is pure arithmetic, so the panel can follow every
edit of the compression targets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

COMPONENTS = (("embeddings", "Embeddings", "#4C72B0"), ("encoder", "Encoder layers", "#DD8452"),
              ("head", "Pooler + MLM head", "#55A868"))
COLUMNS = ("Model", "Parameters", "fp32 MB", "fp16 MB", "% of teacher")
BAR_WIDTH = 0.6


def millions(count: int) -> str:
    return f"{count / 1e6:,.1f}M"


class BudgetPanel(QWidget):
    """Parameters per component (stacked bars), a size table and a one-line summary."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._rows: list[dict[str, Any]] = []
        title = QLabel("<b>Parameter budget</b>")
        self.plot = pg.PlotWidget()
        self.plot.setBackground("w")
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.showGrid(y=True, alpha=0.25)
        self.plot.setLabel("left", "parameters (millions)")
        self.plot.setMinimumHeight(240)
        legend = self.plot.addLegend(offset=(-10, 10), labelTextColor="#222")
        legend.setBrush(pg.mkBrush(255, 255, 255, 220))
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).setTextPen("#333")
            self.plot.getAxis(axis).setPen("#888")
        self.bars: dict[str, pg.BarGraphItem] = {}
        for key, label, color in COMPONENTS:
            bar = pg.BarGraphItem(x=np.zeros(0), height=np.zeros(0), y0=np.zeros(0), width=BAR_WIDTH,
                                  brush=pg.mkBrush(color), pen=pg.mkPen("w", width=1))
            self.plot.addItem(bar)
            legend.addItem(bar, label)
            self.bars[key] = bar

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)

        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setStyleSheet("color: #8a6d00;")
        self.message.hide()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(title)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.table)
        layout.addWidget(self.summary)
        layout.addWidget(self.message)

    # ---- public ----
    def rows(self) -> list[dict[str, Any]]:
        """The rows last shown."""
        return list(self._rows)

    def update_rows(self, rows: list[dict[str, Any]]) -> None:
        """Show `engine.estimate.estimate` rows: bars, table and summary."""
        self._rows = list(rows)
        self.message.hide()
        x = np.arange(len(rows), dtype=float)
        base = np.zeros(len(rows))
        for key, _, _ in COMPONENTS:
            height = np.array([row["params"][key] / 1e6 for row in rows], dtype=float)
            self.bars[key].setOpts(x=x, height=height, y0=base.copy(), width=BAR_WIDTH)
            base += height
        self.plot.getAxis("bottom").setTicks([[(i, _short(row["name"])) for i, row in enumerate(rows)]])
        if rows:
            self.plot.setXRange(-0.6, len(rows) - 0.4, padding=0)
            self.plot.setYRange(0, float(base.max()) * 1.08 or 1.0, padding=0)
        self._fill_table(rows)
        self.summary.setText(_summary(rows))

    def show_message(self, text: str) -> None:
        """A note under the chart (e.g. why the budget is stale or unknown); the last rows stay."""
        self.message.setText(text)
        self.message.setVisible(bool(text))

    # ---- internals ----
    def _fill_table(self, rows: list[dict[str, Any]]) -> None:
        self.table.setRowCount(len(rows))
        height = self.table.horizontalHeader().height() + 2 * self.table.frameWidth()
        self.table.setFixedHeight(height + sum(self.table.rowHeight(r) for r in range(len(rows))))
        for r, row in enumerate(rows):
            values = (row["name"], millions(row["total_params"]), f"{row['fp32_bytes'] / 1e6:,.1f}",
                      f"{row['fp16_bytes'] / 1e6:,.1f}", f"{row['percent_of_teacher']:.1f}%")
            for c, value in enumerate(values):
                item = QTableWidgetItem(value)
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                item.setToolTip(_row_tooltip(row))
                self.table.setItem(r, c, item)


def _short(name: str) -> str:
    """`02-trim_vocab` -> `2 trim vocab` for the axis."""
    number, _, kind = name.partition("-")
    return f"{int(number)} {kind.replace('_', ' ')}" if kind and number.isdigit() else name


def _row_tooltip(row: dict[str, Any]) -> str:
    s = row["shape"]
    p = row["params"]
    return (f"{s['layers']} layers, hidden {s['hidden']}, FFN {s['ffn']}, {s['heads']} heads, "
            f"vocabulary {s['vocab']:,}\nembeddings {p['embeddings']:,} · encoder {p['encoder']:,} · "
            f"head {p['head']:,}")


def _summary(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    teacher, final = rows[0], rows[-1]
    saved = 100.0 - final["percent_of_teacher"]
    return (f"Teacher <b>{millions(teacher['total_params'])}</b> → student "
            f"<b>{millions(final['total_params'])}</b> parameters · "
            f"{final['fp32_bytes'] / 1e6:,.1f} MB fp32 · {final['fp16_bytes'] / 1e6:,.1f} MB fp16 · "
            f"<b>{saved:.1f}% smaller</b>")
