"""Runs tab: the run folders under a runs folder, read from their manifests; double-click opens one."""

from __future__ import annotations

import time
from dataclasses import dataclass
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

from engine.runfolder import RunFolder
from gui.style import STATUS_COLOURS

COLUMNS = ("Run", "Status", "Date", "Teacher", "Language", "Stages", "Final size", "Compression")


@dataclass(frozen=True)
class RunSummary:
    path: Path
    status: str
    started: float
    teacher: str
    language: str
    stages: str
    final_params: int | None
    final_bytes: int | None
    teacher_params: int | None

    @property
    def compression(self) -> float | None:
        if self.final_params and self.teacher_params:
            return 1 - self.final_params / self.teacher_params
        return None


def summarise(run_dir: Path) -> RunSummary | None:
    """What the table shows about one run folder; None when it is not a run folder."""
    folder = RunFolder(run_dir)
    manifest = folder.read_manifest()
    if not manifest:
        return None
    stages = manifest.get("stages") or []
    done = [s for s in folder.stage_models(manifest) if s.params]
    teacher = manifest.get("teacher") or {}
    return RunSummary(
        path=folder.path,
        status=str(manifest.get("status", "?")),
        started=_started(folder),
        teacher=str(teacher.get("source", "")),
        language=str(manifest.get("language", "")),
        stages=" → ".join(str(s.get("kind", "?")) for s in stages),
        final_params=done[-1].params if done else None,
        final_bytes=done[-1].bytes or None if done else None,
        teacher_params=teacher.get("params"),
    )


def list_runs(runs_dir: Path) -> list[RunSummary]:
    """Every run folder under `runs_dir`, newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = [summarise(p) for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted((s for s in found if s is not None), key=lambda s: s.started, reverse=True)


def newest_run(runs_dir: Path) -> Path | None:
    runs = list_runs(runs_dir)
    return runs[0].path if runs else None


def _started(folder: RunFolder) -> float:
    """The run's start time: from the folder name (`YYYYmmdd-HHMMSS-…`), else the recipe's mtime."""
    try:
        return time.mktime(time.strptime(folder.path.name[:15], "%Y%m%d-%H%M%S"))
    except ValueError:
        return (folder.recipe_file if folder.recipe_file.exists() else folder.path).stat().st_mtime


def _size(params: int | None, size: int | None) -> str:
    if params is None:
        return "–"
    return f"{params / 1e6:,.1f}M params" + (f" · {size / 1e6:,.0f} MB" if size else "")


class RunsTab(QWidget):
    """A table of past runs; `open_requested(Path)` on double-click or Open."""

    open_requested = Signal(object)
    runs_dir_changed = Signal(object)

    def __init__(self, runs_dir: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runs_dir = Path(runs_dir)
        self.runs: list[RunSummary] = []
        self.folder_label = QLabel()
        self.folder_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        change = QPushButton("Change folder…")
        refresh = QPushButton("Refresh")
        self.open_button = QPushButton("Open run")
        self.open_button.setObjectName("primary")
        change.clicked.connect(self._choose_folder)
        refresh.clicked.connect(self.refresh)
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
        self.refresh()

    def set_runs_dir(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir)
        self.refresh()
        self.runs_dir_changed.emit(self.runs_dir)

    def refresh(self) -> None:
        self.folder_label.setText(f"<b>{self.runs_dir.resolve()}</b>")
        self.runs = list_runs(self.runs_dir)
        self.table.setRowCount(len(self.runs))
        for row, run in enumerate(self.runs):
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
        self.open_button.setEnabled(False)
        self.empty.setText("" if self.runs else
                           "No runs here yet. Start one in the Training tab, or choose another runs folder.")
        self.empty.setVisible(not self.runs)

    def open_row(self, row: int) -> None:
        if 0 <= row < len(self.runs):
            self.open_requested.emit(self.runs[row].path)

    def _open_selected(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self.open_row(rows[0].row())

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Runs folder", str(self.runs_dir))
        if folder:
            self.set_runs_dir(Path(folder))
