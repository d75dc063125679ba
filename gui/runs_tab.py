"""Runs tab: the run folders under the runs folder, as the shared `RunsModel` read them; double-click opens one."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from gui.runs_model import RunsModel, RunSummary
from gui.style import STATUS_COLOURS

COLUMNS = ("Run", "Status", "Date", "Teacher", "Language", "Stages", "Final size", "Compression")


def _size(params: int | None, size: int | None) -> str:
    if params is None:
        return "–"
    return f"{params / 1e6:,.1f}M params" + (f" · {size / 1e6:,.0f} MB" if size else "")


class RunsTab(QWidget):
    """A table of past runs; `open_requested(Path)` on double-click or Open."""

    open_requested = Signal(object)

    def __init__(self, runs: RunsModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runs = runs
        self.shown: list[RunSummary] = []  # the table's rows
        self.folder_label = QLabel()
        self.folder_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        change = QPushButton("Change folder…")
        refresh = QPushButton("Refresh")
        self.open_button = QPushButton("Open run")
        self.open_button.setObjectName("primary")
        change.clicked.connect(self._choose_folder)
        refresh.clicked.connect(self.runs.refresh)
        self.open_button.clicked.connect(self._open_selected)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setShowGrid(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(5, QHeaderView.ResizeMode.Stretch)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.open_row(row))
        self.table.itemSelectionChanged.connect(
            lambda: self.open_button.setEnabled(bool(self.table.selectedItems())))
        self.empty = QLabel()
        self.empty.setStyleSheet("color: #6b7280;")

        top = QHBoxLayout()
        top.addWidget(QLabel("Runs folder:"))
        top.addWidget(self.folder_label, 1)
        top.addWidget(change)
        top.addWidget(refresh)
        top.addWidget(self.open_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 12, 12, 12)
        layout.setSpacing(8)
        layout.addLayout(top)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.empty)
        self.runs.changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        """Fill the table from the runs model, keeping the selected run selected."""
        selected = self._selected()
        self.folder_label.setText(f"<b>{self.runs.runs_dir.resolve()}</b>")
        self.shown = list(self.runs.runs)
        self.table.setRowCount(len(self.shown))
        for row, run in enumerate(self.shown):
            compression = f"−{run.compression:.1%}" if run.compression is not None else "–"
            values = (run.path.name, run.status, time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started)),
                      run.teacher, run.language, run.stages, _size(run.final_params, run.final_bytes), compression)
            for column, value in enumerate(values):
                item = QTableWidgetItem(value)
                item.setToolTip(str(run.path) if column == 0 else value)
                if column == 1:
                    background, text = STATUS_COLOURS.get(value, STATUS_COLOURS["pending"])
                    item.setForeground(QColor(text))
                    item.setBackground(QColor(background))
                self.table.setItem(row, column, item)
        self.table.clearSelection()
        rows = [row for row, run in enumerate(self.shown) if run.path == selected]
        if rows:
            self.table.selectRow(rows[0])
        self.open_button.setEnabled(bool(rows))
        self.empty.setText("" if self.shown else
                           "No runs here yet. Start one in the Training tab, or choose another runs folder.")
        self.empty.setVisible(not self.shown)

    def open_row(self, row: int) -> None:
        if 0 <= row < len(self.shown):
            self.open_requested.emit(self.shown[row].path)

    def _selected(self) -> Path | None:
        rows = self.table.selectionModel().selectedRows()
        return self.shown[rows[0].row()].path if rows and rows[0].row() < len(self.shown) else None

    def _open_selected(self) -> None:
        selected = self._selected()
        if selected is not None:
            self.open_requested.emit(selected)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Runs folder", str(self.runs.runs_dir))
        if folder:
            self.runs.set_runs_dir(Path(folder))
