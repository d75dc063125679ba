"""Trade-offs tab: model size versus score for the teacher and every student of one or more runs.

Runs come from the shared `RunsModel` (manifests: stage parameters and bytes, and the label-free
fidelity every stage records) and, when a run was evaluated, its `eval/summary.json` (task scores,
exact sizes): see `gui.tradeoff_points`. Runs from before stages recorded fidelity show size against
stage index.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from gui.layouts import splitter
from gui.runs_model import RunsModel
from gui.style import SERIES_COLOURS
from gui.tradeoff_chart import TradeoffChart
from gui.tradeoff_points import NONE, ModelPoint, load_points, percent, score_label, tip


class TradeoffsTab(QWidget):
    """Size (parameters or MB, log axis) versus a score, for every checked run; Pareto front and table."""

    def __init__(self, runs: RunsModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runs = runs
        self.extra_runs: list[Path] = []  # runs shown that are not in the runs folder
        self.checked: set[str] = set()
        self.points: dict[str, list[ModelPoint]] = {}  # run path -> points

        self.run_list = QListWidget()
        self.run_list.setMinimumWidth(220)
        self.run_list.itemChanged.connect(self._run_toggled)
        add = QPushButton("Add run folder…")
        add.clicked.connect(self._add_run_dialog)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.runs.refresh)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(QLabel("<b>Runs</b> (tick to compare)"))
        left_layout.addWidget(self.run_list, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(refresh)
        left_layout.addLayout(buttons)

        self.size_combo = QComboBox()
        self.size_combo.addItem("Parameters", "params")
        self.size_combo.addItem("Size on disk (MB)", "mb")
        self.size_combo.setToolTip("Horizontal axis: parameter count or model folder size (log scale)")
        self.score_combo = QComboBox()
        self.score_combo.setMinimumWidth(230)
        self.score_combo.setToolTip("Vertical axis: a task's headline test score (mean over seeds) or the "
                                    "representation fidelity to the teacher")
        self.size_combo.currentIndexChanged.connect(self.redraw)
        self.score_combo.currentIndexChanged.connect(self.redraw)
        self.note = QLabel()
        self.note.setStyleSheet("color: #6b7280;")
        controls = QHBoxLayout()
        controls.addWidget(QLabel("Size:"))
        controls.addWidget(self.size_combo)
        controls.addSpacing(16)
        controls.addWidget(QLabel("Score:"))
        controls.addWidget(self.score_combo)
        controls.addSpacing(16)
        controls.addWidget(self.note, 1)

        self.chart = TradeoffChart()
        self.table = QTableWidget(0, 8)
        self.table.setHorizontalHeaderLabels(["Run", "Model", "Params (M)", "Size (MB)", "Score",
                                              "Drop vs teacher (pts)", "Params vs teacher", "Pareto"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setShowGrid(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)

        right = splitter(Qt.Orientation.Vertical, self.chart.plot, self.table, stretch=(3, 2))
        split = splitter(Qt.Orientation.Horizontal, left, right, stretch=(0, 1), sizes=[240, 1000])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 12, 12, 12)
        layout.addLayout(controls)
        layout.addWidget(split, 1)
        self.runs.changed.connect(self.refresh)
        self.refresh()

    # ---- runs ----
    def show_run(self, run_dir: Path) -> None:
        """Tick `run_dir` (adding it to the list when it is elsewhere) and show it."""
        run_dir = Path(run_dir).resolve()
        if run_dir.parent != self.runs.runs_dir.resolve() and run_dir not in self.extra_runs:
            self.extra_runs.append(run_dir)
        self.checked.add(str(run_dir))
        self.runs.summary(run_dir)  # the runs model reads a run it has not seen yet
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the run list from the runs model (reading the runs' eval summaries) and redraw."""
        self.points = {}
        for run in self.runs.with_extra(self.extra_runs):
            points = load_points(run)
            if points:
                self.points[str(run.path)] = points
        if not self.checked & set(self.points):
            evaluated = [r for r in self.points if any(p.scores for p in self.points[r])]
            self.checked = {(evaluated or list(self.points) or [""])[0]}
        self.run_list.blockSignals(True)
        self.run_list.clear()
        for run, points in self.points.items():
            evaluated = any(p.scores for p in points)
            entry = QListWidgetItem(Path(run).name)
            entry.setData(Qt.ItemDataRole.UserRole, run)
            entry.setToolTip(run if evaluated else f"{run}\nnot evaluated yet: sizes only")
            if not evaluated:
                entry.setForeground(QColor("#6b7280"))
            entry.setFlags(entry.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            entry.setCheckState(Qt.CheckState.Checked if run in self.checked else Qt.CheckState.Unchecked)
            self.run_list.addItem(entry)
        self.run_list.blockSignals(False)
        self._fill_scores()
        self.redraw()

    def _run_toggled(self, entry: QListWidgetItem) -> None:
        run = entry.data(Qt.ItemDataRole.UserRole)
        if entry.checkState() == Qt.CheckState.Checked:
            self.checked.add(run)
        else:
            self.checked.discard(run)
        self._fill_scores()
        self.redraw()

    def _add_run_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a run folder", str(self.runs.runs_dir))
        if folder:
            self.show_run(Path(folder))

    def _fill_scores(self) -> None:
        keys = list(dict.fromkeys(k for run in self.checked for p in self.points.get(run, []) for k in p.scores))
        keys.sort(key=lambda k: (k.split(":")[0] in ("fidelity", "stage"), k))  # task scores first
        current = self.score_combo.currentData()
        self.score_combo.blockSignals(True)
        self.score_combo.clear()
        for key in [*keys, NONE]:
            self.score_combo.addItem(score_label(key), key)
        index = self.score_combo.findData(current) if current in keys else 0
        self.score_combo.setCurrentIndex(max(index, 0))
        self.score_combo.blockSignals(False)

    # ---- drawing ----
    @property
    def unit(self) -> str:
        return self.size_combo.currentData()

    @property
    def score(self) -> str:
        return self.score_combo.currentData() or NONE

    def redraw(self) -> None:
        key, unit = self.score, self.unit
        drawn, missing = [], []
        for n, (run, points) in enumerate(self.points.items()):
            if run not in self.checked:
                continue
            shown = [p for p in points if p.size(unit) > 0 and (key in p.scores or (key == NONE and not p.trial))]
            if shown:
                drawn.append((Path(run).name, SERIES_COLOURS[n % len(SERIES_COLOURS)], shown))
            else:
                missing.append(Path(run).name)
        self.chart.draw(drawn, key, unit)
        if not self.points:
            note = "No run with finished stages in this folder yet."
        elif self.score_combo.count() == 1:
            note = "No evaluation in the ticked runs yet: sizes only (the Evaluation tab scores them)."
        else:
            note = f"Not scored on this: {', '.join(missing)}" if missing else ""
        self.note.setText(note)
        self._fill_table()

    def _fill_table(self) -> None:
        key, shown, front = self.score, self.chart.shown, set(self.chart.front)
        teachers = {p.run: p for p in shown if p.stage == 0}
        self.table.setRowCount(len(shown))
        for row, p in enumerate(shown):
            teacher = teachers.get(p.run)
            score = drop = ""
            if key != NONE:
                mean, std = p.scores[key]
                score = f"{percent(mean)} ± {percent(std)}"
                if teacher is not None and teacher is not p and key in teacher.scores:
                    drop = f"{round(100 * (teacher.scores[key][0] - mean), 2) + 0.0:+.2f}"  # + 0.0: never "-0.00"
            ratio = f"{p.params / teacher.params:.1%}" if teacher is not None and teacher.params else ""
            size = f"{p.bytes / 1e6:,.1f}" + (" (est.)" if p.bytes_estimated else "")
            values = (p.run, p.name, f"{p.params / 1e6:,.2f}", size, score, drop, ratio, "✓" if row in front else "")
            for column, value in enumerate(values):
                cell = QTableWidgetItem(value)
                cell.setToolTip(tip(p, key))
                if column >= 2:
                    cell.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if row in front:
                    cell.setBackground(QColor("#ecfdf5"))
                self.table.setItem(row, column, cell)
