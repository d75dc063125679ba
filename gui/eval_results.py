"""The Evaluation tab's results side: an evaluation's `summary.json` as a table and charts, the live
results and log of a running evaluation, and the exports (CSV, Markdown, PNG charts)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from engine.events import EvalResult
from gui.eval_charts import ResultPlots
from gui.layouts import read_only_table, splitter

DROP_ALERT_PTS = 5  # drops of this many points or more are shown in red


class ResultsPanel(QWidget):
    """Status line and exports, the results table, then Charts | Live results and log."""

    def __init__(self, default_folder: Callable[[], Path], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.default_folder = default_folder  # where the export dialogs start
        self.summary: dict[str, Any] | None = None
        self.status = QLabel("No results yet: choose models and tasks, then run the evaluation.")
        self.status.setWordWrap(True)
        self.status.setStyleSheet("color: #374151;")
        self.table = read_only_table(0)
        self.table.setAlternatingRowColors(True)
        self.table.setMinimumHeight(120)

        self.plots = ResultPlots()
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.plots)
        self.live = read_only_table(4)
        self.live.setHorizontalHeaderLabels(["Model", "Task", "Seed", "Test metrics"])
        self.live.horizontalHeader().setStretchLastSection(True)
        self.log = QPlainTextEdit(readOnly=True)
        self.log.setMaximumBlockCount(2000)
        live = splitter(Qt.Orientation.Vertical, self.live, self.log)
        self.views = QTabWidget()
        self.views.addTab(scroll, "Charts")
        self.views.addTab(live, "Live results and log")

        export_csv = QPushButton("Export CSV…")
        export_csv.clicked.connect(lambda: self._export_dialog("csv"))
        export_md = QPushButton("Export Markdown…")
        export_md.clicked.connect(lambda: self._export_dialog("md"))
        export_png = QPushButton("Save charts as PNG…")
        export_png.clicked.connect(self._export_plots_dialog)
        self.export_buttons = (export_csv, export_md, export_png)
        exports = QHBoxLayout()
        exports.addWidget(self.status, 1)
        for button in self.export_buttons:
            button.setEnabled(False)
            exports.addWidget(button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 0, 0, 0)
        layout.addLayout(exports)
        layout.addWidget(splitter(Qt.Orientation.Vertical, self.table, self.views, stretch=(0, 2), sizes=[200, 600]), 1)

    def clear(self) -> None:
        self.summary = None
        self.table.setRowCount(0)
        self.table.setColumnCount(0)
        self.live.setRowCount(0)
        self.plots.show_summary({"results": [], "models": []})
        for button in self.export_buttons:
            button.setEnabled(False)

    def add_result(self, event: EvalResult) -> None:
        """One finished fine-tuning or probe, as a row of the live table."""
        row = self.live.rowCount()
        self.live.insertRow(row)
        metrics = ", ".join(f"{k} {100 * v:.1f}" for k, v in event.metrics.items())
        for column, value in enumerate((event.model, event.task, str(event.seed), metrics)):
            self.live.setItem(row, column, QTableWidgetItem(value))
        self.live.scrollToBottom()

    def load_summary(self, path: Path) -> bool:
        try:
            summary = json.loads(Path(path).read_text(encoding="utf-8"))
            self.show_summary(summary, source=Path(path).parent)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.status.setText(f"Cannot read {path}: {exc}")
            return False
        return True

    def show_summary(self, summary: dict[str, Any], source: Path | None = None) -> None:
        """Fill the results table (mean ± std, drop vs teacher, size, speed-up) and the charts."""
        from engine.evaluate.report import table_rows

        header, rows = table_rows(summary)
        self.table.setColumnCount(len(header))
        self.table.setHorizontalHeaderLabels(header)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                cell = QTableWidgetItem(value)
                if c:
                    cell.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if "drop (pts)" in header[c] and value.startswith("+") and float(value) >= DROP_ALERT_PTS:
                    cell.setForeground(QColor("#b91c1c"))
                self.table.setItem(r, c, cell)
        self.plots.show_summary(summary)
        self.summary = summary
        for button in self.export_buttons:
            button.setEnabled(True)
        where = f" from {source}" if source is not None else ""
        self.status.setText(f"Results{where}: {len(rows)} models; the reference is <b>{summary['teacher']}</b>. "
                            "Scores are test-set % (mean ± std over seeds).")

    def export_table(self, path: Path) -> None:
        """The results table as CSV (`.csv`) or Markdown (anything else)."""
        from engine.evaluate.report import csv_text, markdown

        if self.summary is None:
            raise ValueError("no results to export")
        path = Path(path)
        text = csv_text(self.summary) if path.suffix.lower() == ".csv" else markdown(self.summary)
        path.write_text(text, encoding="utf-8")

    def export_plots(self, folder: Path) -> list[Path]:
        """One PNG per visible chart into `folder`; returns the files written."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, plot in self.plots.shown.items():
            path = folder / f"eval-{name}.png"
            plot.grab().save(str(path))
            written.append(path)
        return written

    def _export_dialog(self, kind: str) -> None:
        start = str(self.default_folder() / f"summary.{kind}")
        filters = "CSV (*.csv)" if kind == "csv" else "Markdown (*.md)"
        path, _ = QFileDialog.getSaveFileName(self, "Export results table", start, filters)
        if path:
            self.export_table(Path(path))
            self.status.setText(f"Exported the table to {path}")

    def _export_plots_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save charts into", str(self.default_folder()))
        if folder:
            written = self.export_plots(Path(folder))
            self.status.setText(f"Saved {len(written)} charts to {folder}")
