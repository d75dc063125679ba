"""Evaluation tab: benchmark the teacher and students on downstream tasks, with size and speed.

Models come from run folders (teacher and completed stages) or any model folder; the evaluation
runs in the background through `gui.worker.TaskWorker` calling `engine.evaluate.runner.evaluate`,
whose events drive the progress bar and the live results. Results are read from (and written to)
an `eval/` folder: `summary.json` is shown as a table, per-task bar charts and speed-up bars.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.errors import MiniGlotError
from engine.events import EvalResult, Event, Log, Progress
from engine.recipe import EVAL_TASKS
from engine.runfolder import RunFolder
from gui.runs_tab import list_runs
from gui.style import SERIES_COLOURS, show_error
from gui.training_tab import format_duration
from gui.worker import TaskWorker

OTHER = "Other models"
IDLE = "no evaluation running"
TEACHER_COLOUR = "#6b7280"


@dataclass(frozen=True)
class ModelChoice:
    """A model offered in the tree: `source` is a folder or a teacher source (`packaged:…`, `hub:…`)."""

    run: str  # run folder name, or OTHER
    name: str  # "teacher", "01-distill", or a folder name
    source: str
    teacher: bool = False
    run_dir: str = ""  # the run folder, for the default output folder


def run_choices(run_dir: Path) -> list[ModelChoice]:
    """The teacher and completed students of a run folder, read from its manifest (no model loading)."""
    folder = RunFolder(run_dir)
    manifest = folder.read_manifest()
    name, choices = folder.path.name, []
    source = (manifest.get("teacher") or {}).get("source")
    if source:
        choices.append(ModelChoice(name, "teacher", str(source), teacher=True, run_dir=str(folder.path)))
    for stage in folder.stage_models(manifest):
        choices.append(ModelChoice(name, stage.name, str(stage.path), run_dir=str(folder.path)))
    return choices


def plan_models(choices: list[ModelChoice]) -> list[tuple[str, str]]:
    """(unique name, source) per chosen model; the first teacher leads (it is the reference).

    With models from one run the names are the run's own ("teacher", "01-distill"); from several
    runs students are prefixed with their run folder's name and a teacher shared by runs appears once.
    """
    ordered = sorted(choices, key=lambda c: not c.teacher)  # stable: teachers first, then tree order
    runs = {c.run for c in choices if c.run != OTHER}
    out: list[tuple[str, str]] = []
    for choice in ordered:
        if choice.teacher and any(source == choice.source for _, source in out):
            continue
        name = choice.name
        if len(runs) > 1 and choice.run != OTHER and (not choice.teacher or out):
            name = f"{choice.run}-{choice.name}"
        taken = [n for n, _ in out]
        candidate, n = name.replace("/", "_"), 2
        while candidate in taken:
            candidate, n = f"{name}-{n}", n + 1
        out.append((candidate, choice.source))
    return out


def run_evaluation(sink: Any, token: Any, models: list[tuple[str, str]], tasks: list[tuple[str, str]],
                   options: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Work-thread body: resolve the model sources, then `runner.evaluate` into `out_dir`."""
    from engine.data.tasks import Columns
    from engine.evaluate import runner
    from engine.models.loading import resolve_source

    refs = tuple(runner.ModelRef(name, resolve_source(source)) for name, source in models)
    options = {**options, "columns": Columns(*options.get("columns", ("", "")))}
    plan = runner.EvalPlan(models=refs, tasks=tuple(tasks), **options)
    return runner.evaluate(plan, out_dir, sink, token)


def _plot(title: str, left: str) -> pg.PlotWidget:
    widget = pg.PlotWidget(background="w")
    widget.setMinimumSize(300, 220)
    item = widget.getPlotItem()
    item.setTitle(title, color="#111827", size="10pt")
    item.setLabel("left", left, color="#374151")
    item.showGrid(y=True, alpha=0.25)
    item.setMouseEnabled(x=False, y=False)
    item.hideButtons()
    for axis in ("bottom", "left"):
        item.getAxis(axis).setTextPen("#374151")
        item.getAxis(axis).setPen("#9ca3af")
        item.getAxis(axis).enableAutoSIPrefix(False)
    return widget


def _colours(names: list[str], teacher: str) -> list[str]:
    students = [n for n in names if n != teacher]
    return [TEACHER_COLOUR if n == teacher else SERIES_COLOURS[students.index(n) % len(SERIES_COLOURS)]
            for n in names]


class ResultPlots(QWidget):
    """Per-task score bars (mean ± std over seeds) and speed-up bars, redrawn from a summary."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(8)
        self.task_plots: dict[str, pg.PlotWidget] = {}  # kept and reused across summaries
        self.speed_plot = _plot("Speed-up over the teacher (CPU)", "× teacher")
        self.speed_plot.getPlotItem().addLegend(offset=(10, 10), labelTextSize="9pt", labelTextColor="#1f2937",
                                                brush=pg.mkBrush(255, 255, 255, 210))
        self.bars: dict[str, dict[str, float]] = {}  # plot name -> model -> bar height
        self.shown: dict[str, pg.PlotWidget] = {}  # the charts of the current summary, by name

    def plots(self) -> dict[str, pg.PlotWidget]:
        return {**self.task_plots, "speed": self.speed_plot}

    def show_summary(self, summary: dict[str, Any]) -> None:
        from engine.evaluate.report import HEADLINE

        for plot in self.plots().values():
            plot.getPlotItem().clear()
            plot.hide()
            self.grid.removeWidget(plot)
        self.bars, self.shown = {}, {}
        names = [m["name"] for m in summary.get("models") or []]
        if not names:
            names = list(dict.fromkeys(r["model"] for r in summary.get("results") or []))
        teacher = summary.get("teacher", "")
        colours = _colours(names, teacher)
        tasks = list(dict.fromkeys(r["task"] for r in summary.get("results") or []))
        for task in tasks:
            metric = HEADLINE.get(task, "")
            rows = {r["model"]: r for r in summary["results"] if r["task"] == task and r["metric"] == metric}
            plot = self.task_plots.get(task) or self.task_plots.setdefault(task, _plot("", "score (%)"))
            plot.getPlotItem().setTitle(f"{task} — test {metric.replace('_', ' ')} (mean ± std over seeds)",
                                        color="#111827", size="10pt")
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
                                     pen=pg.mkPen("#374151", width=0.5)))
        item.addItem(pg.ErrorBarItem(x=np.array(xs, float), y=np.array(means), top=np.array(stds),
                                     bottom=np.array(stds), beam=0.18, pen=pg.mkPen("#111827")))
        for x, mean, std in zip(xs, means, stds, strict=True):
            label = pg.TextItem(f"{mean:.1f}", color="#111827", anchor=(0.5, 1.0))
            label.setPos(x, mean + std)
            item.addItem(label)
        self._model_ticks(item, names)
        top = max((m + s for m, s in zip(means, stds, strict=True)), default=100.0)
        item.setYRange(0, top * 1.15 or 1, padding=0)
        item.setXRange(-0.6, len(names) - 0.4, padding=0)
        self.bars[task] = dict(zip([names[i] for i in xs], means, strict=True))

    def _speed(self, names: list[str], models: dict[str, dict[str, Any]]) -> None:
        item = self.speed_plot.getPlotItem()
        latency = [float(models.get(n, {}).get("speedup_latency") or 0) for n in names]
        throughput = [float(models.get(n, {}).get("speedup_throughput") or 0) for n in names]
        xs = list(range(len(names)))
        item.addItem(pg.BarGraphItem(x=[x - 0.2 for x in xs], height=latency, width=0.38, brush="#0072B2",
                                     pen=pg.mkPen("#374151", width=0.5), name="latency (batch 1)"))
        item.addItem(pg.BarGraphItem(x=[x + 0.2 for x in xs], height=throughput, width=0.38, brush="#E69F00",
                                     pen=pg.mkPen("#374151", width=0.5), name="throughput (batch 32)"))
        item.addItem(pg.InfiniteLine(pos=1.0, angle=0, pen=pg.mkPen("#6b7280", style=Qt.PenStyle.DashLine)))
        for x, a, b in zip(xs, latency, throughput, strict=True):
            for dx, value in ((-0.2, a), (0.2, b)):
                label = pg.TextItem(f"{value:.1f}×", color="#111827", anchor=(0.5, 1.0))
                label.setPos(x + dx, value)
                item.addItem(label)
        self._model_ticks(item, names)
        item.setYRange(0, max([*latency, *throughput, 1.0]) * 1.2, padding=0)
        item.setXRange(-0.6, len(names) - 0.4, padding=0)
        self.bars["speed"] = dict(zip(names, latency, strict=True))

    @staticmethod
    def _model_ticks(item: pg.PlotItem, names: list[str]) -> None:
        """Every model named under its bar (long names shortened from the left; the table has them whole)."""
        axis = item.getAxis("bottom")
        font = QFont()
        font.setPointSizeF(8.5)
        axis.setStyle(hideOverlappingLabels=False, tickFont=font)
        axis.setTicks([[(i, n if len(n) <= 14 else "…" + n[-13:]) for i, n in enumerate(names)]])


class EvaluationTab(QWidget):
    """Choose models, tasks and options; run in the background; show and export the results."""

    evaluation_finished = Signal(object)  # output folder, after a completed evaluation
    running_changed = Signal(bool)

    def __init__(self, runs_dir: Path | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runs_dir = Path(runs_dir) if runs_dir is not None else Path("runs")
        self.extra_runs: list[Path] = []
        self.other_models: list[Path] = []
        self.checked: set[tuple[str, str]] = set()  # (run, name) of ticked models
        self.worker: TaskWorker | None = None
        self.summary: dict[str, Any] | None = None
        self.out_dir_user = False  # the output folder was chosen by hand: keep it
        self.started = 0.0

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self._build_setup())
        split.addWidget(self._build_results())
        split.setStretchFactor(1, 1)
        split.setSizes([560, 780])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 12, 12, 12)
        layout.addWidget(split)
        self.add_task_row()
        self.refresh()

    # ---- building ----
    def _build_setup(self) -> QWidget:
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Model", "Size"])
        self.tree.setMinimumHeight(160)
        self.tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.tree.header().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.itemChanged.connect(self._tree_changed)
        add_model = QPushButton("Add model folder…")
        add_model.clicked.connect(self._add_model_dialog)
        add_run = QPushButton("Add run folder…")
        add_run.clicked.connect(self._add_run_dialog)
        models = QGroupBox("Models (the first teacher is the reference)")
        box = QVBoxLayout(models)
        box.addWidget(self.tree)
        row = QHBoxLayout()
        row.addWidget(add_model)
        row.addWidget(add_run)
        box.addLayout(row)

        self.tasks = QTableWidget(0, 3)
        self.tasks.setHorizontalHeaderLabels(["Task", "Data (folder, file or hub id)", ""])
        self.tasks.verticalHeader().setVisible(False)
        self.tasks.setShowGrid(False)
        self.tasks.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        header = self.tasks.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.tasks.setMinimumHeight(110)
        add_task = QPushButton("Add task")
        add_task.clicked.connect(lambda: self.add_task_row())
        remove_task = QPushButton("Remove task")
        remove_task.clicked.connect(self._remove_task_row)
        tasks = QGroupBox("Tasks and their data")
        box = QVBoxLayout(tasks)
        box.addWidget(self.tasks)
        row = QHBoxLayout()
        row.addWidget(add_task)
        row.addWidget(remove_task)
        row.addStretch(1)
        box.addLayout(row)

        self.seeds = QSpinBox(minimum=1, maximum=20, value=3)
        self.seeds.setToolTip("Runs per model and task (probes: seeded training subsets); "
                              "tables show mean ± std over them")
        self.epochs = QSpinBox(minimum=0, maximum=100, value=0)
        self.epochs.setSpecialValueText("task default")
        self.learning_rate = QLineEdit()
        self.learning_rate.setPlaceholderText("task default")
        self.learning_rate.setToolTip("Peak fine-tuning learning rate, e.g. 2e-4. Empty: the task's default "
                                      "(5e-5 × 768 / hidden size, so narrow students get larger steps).")
        self.mode = QComboBox()
        self.mode.addItem("linear probe (frozen features, minutes)", "probe")
        self.mode.addItem("full fine-tuning (slow, most faithful)", "full")
        self.mode.setToolTip("Probe: each model's features are computed once and a linear classifier is fitted "
                             "to convergence (best layer chosen on dev); quick, deterministic comparisons.\n"
                             "Full: every model is fine-tuned for every seed, as the paper reports.")
        self.mode.currentIndexChanged.connect(self._mode_changed)
        self.text_column = QLineEdit()
        self.text_column.setPlaceholderText("by name (text, sentence…) or the longest column")
        self.text_column.setToolTip("Classification tables (CSV/TSV/JSONL): the column that holds the text")
        self.label_column = QLineEdit()
        self.label_column.setPlaceholderText("by name (label, category, polarity…)")
        self.label_column.setToolTip("Classification tables (CSV/TSV/JSONL): the column that holds the label")
        self.speed = QCheckBox("CPU latency and throughput")
        self.speed.setChecked(True)
        self.intrinsic = QCheckBox("Representation fidelity to the teacher")
        self.intrinsic.setChecked(True)
        self.out_dir = QLineEdit()
        self.out_dir.setPlaceholderText("<run folder>/eval")
        self.out_dir.textEdited.connect(lambda _: setattr(self, "out_dir_user", True))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._out_dir_dialog)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out_dir, 1)
        out_row.addWidget(browse)
        options = QGroupBox("Options")
        form = QFormLayout(options)
        form.addRow("Mode:", self.mode)
        form.addRow("Seeds:", self.seeds)
        form.addRow("Epochs:", self.epochs)
        form.addRow("Learning rate:", self.learning_rate)
        form.addRow("Text column:", self.text_column)
        form.addRow("Label column:", self.label_column)
        form.addRow(self.speed)
        form.addRow(self.intrinsic)
        form.addRow("Output folder:", out_row)

        self.run_button = QPushButton("Run evaluation")
        self.run_button.setObjectName("primary")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat(IDLE)
        self.eta = QLabel("")
        self.eta.setStyleSheet("color: #4b5563;")
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)

        panel = QWidget()
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(0, 0, 6, 0)
        layout.addWidget(models, 2)
        layout.addWidget(tasks, 1)
        layout.addWidget(options)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.eta)
        self._mode_changed()
        return panel

    def _build_results(self) -> QWidget:
        self.status = QLabel("No results yet: choose models and tasks, then run the evaluation.")
        self.status.setWordWrap(True)
        self.status.setStyleSheet("color: #374151;")
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setShowGrid(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMinimumHeight(120)

        self.plots = ResultPlots()
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.plots)
        self.live = QTableWidget(0, 4)
        self.live.setHorizontalHeaderLabels(["Model", "Task", "Seed", "Test metrics"])
        self.live.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.live.verticalHeader().setVisible(False)
        self.live.setShowGrid(False)
        self.live.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.live.horizontalHeader().setStretchLastSection(True)
        self.log = QPlainTextEdit(readOnly=True)
        self.log.setMaximumBlockCount(2000)
        live = QSplitter(Qt.Orientation.Vertical)
        live.addWidget(self.live)
        live.addWidget(self.log)
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

        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(self.views)
        split.setStretchFactor(1, 2)
        split.setSizes([200, 600])
        panel = QWidget()
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(6, 0, 0, 0)
        layout.addLayout(exports)
        layout.addWidget(split, 1)
        return panel

    # ---- tasks ----
    def add_task_row(self, task: str = "pos", data: str = "") -> None:
        row = self.tasks.rowCount()
        self.tasks.insertRow(row)
        combo = QComboBox()
        combo.addItems(EVAL_TASKS)
        combo.setCurrentText(task)
        edit = QLineEdit(data)
        edit.setPlaceholderText("folder, file or hub:<dataset id>")
        browse = QPushButton("Browse…")
        browse.clicked.connect(lambda: self._data_dialog(edit))
        self.tasks.setCellWidget(row, 0, combo)
        self.tasks.setCellWidget(row, 1, edit)
        self.tasks.setCellWidget(row, 2, browse)

    def task_rows(self) -> list[tuple[str, str]]:
        """(task, data) for every row with data."""
        rows = []
        for row in range(self.tasks.rowCount()):
            task = self.tasks.cellWidget(row, 0).currentText()
            data = self.tasks.cellWidget(row, 1).text().strip()
            if data:
                rows.append((task, data))
        return rows

    def _remove_task_row(self) -> None:
        row = self.tasks.currentRow()
        self.tasks.removeRow(row if row >= 0 else self.tasks.rowCount() - 1)

    def _data_dialog(self, edit: QLineEdit) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Task data folder", edit.text() or str(Path.cwd()))
        if folder:
            edit.setText(folder)

    # ---- models ----
    def set_runs_dir(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the runs folder into the model tree; reload the output folder's summary if idle."""
        runs = [r.path.resolve() for r in list_runs(self.runs_dir)]
        runs += [p for p in self.extra_runs if p not in runs]
        self.tree.blockSignals(True)
        self.tree.clear()
        for run in runs:
            choices = run_choices(run)
            if len(choices) > 1:
                self._tree_group(run.name, str(run), choices)
        if self.other_models:
            self._tree_group(OTHER, "", [ModelChoice(OTHER, p.name, str(p)) for p in self.other_models])
        self.tree.blockSignals(False)
        if not self.is_running():
            out = self.output_dir()
            if out is not None and (out / "summary.json").is_file():
                self.load_summary(out / "summary.json")

    def _tree_group(self, title: str, tip: str, choices: list[ModelChoice]) -> None:
        group = QTreeWidgetItem(self.tree, [title])
        group.setToolTip(0, tip)
        group.setFlags(group.flags() | Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsAutoTristate)
        sizes = _sizes(Path(tip)) if tip else {}
        for choice in choices:
            child = QTreeWidgetItem(group, [choice.name, sizes.get(choice.name, "")])
            child.setData(0, Qt.ItemDataRole.UserRole, choice)
            child.setToolTip(0, choice.source)
            child.setFlags(child.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            ticked = (choice.run, choice.name) in self.checked
            child.setCheckState(0, Qt.CheckState.Checked if ticked else Qt.CheckState.Unchecked)
        group.setExpanded(not self.checked or any((c.run, c.name) in self.checked for c in choices))

    def _tree_changed(self, item: QTreeWidgetItem, column: int) -> None:
        choice = item.data(0, Qt.ItemDataRole.UserRole)
        if isinstance(choice, ModelChoice):
            key = (choice.run, choice.name)
            if item.checkState(0) == Qt.CheckState.Checked:
                self.checked.add(key)
            else:
                self.checked.discard(key)
            runs = {c.run_dir for c in self.chosen() if c.run_dir}
            if not self.out_dir_user and len(runs) == 1:
                self.out_dir.setText(str(Path(runs.pop()) / "eval"))

    def chosen(self) -> list[ModelChoice]:
        """Ticked models in tree order."""
        out = []
        for i in range(self.tree.topLevelItemCount()):
            group = self.tree.topLevelItem(i)
            for j in range(group.childCount()):
                child = group.child(j)
                if child.checkState(0) == Qt.CheckState.Checked:
                    out.append(child.data(0, Qt.ItemDataRole.UserRole))
        return out

    def show_run(self, run_dir: Path) -> None:
        """Tick a run's teacher and students, aim the output at `<run>/eval`, show results found there."""
        run_dir = Path(run_dir).resolve()
        if run_dir.parent != self.runs_dir.resolve() and run_dir not in self.extra_runs:
            self.extra_runs.append(run_dir)
        if self.is_running():
            self.refresh()
            return
        self.checked = {(c.run, c.name) for c in run_choices(run_dir)}
        self._prefill_tasks(run_dir)
        self.out_dir_user = False
        self.out_dir.setText(str(run_dir / "eval"))
        self._clear_results()
        self.refresh()

    def _prefill_tasks(self, run_dir: Path) -> None:
        """The run recipe's [evaluation] tasks, when the task table is still empty."""
        if self.task_rows():
            return
        from engine.recipe import Recipe

        try:
            evaluation = Recipe.load(run_dir / "recipe.toml").evaluation
        except (OSError, ValueError, MiniGlotError):  # an unreadable recipe only means no prefill
            return
        if evaluation is None:
            return
        self.tasks.setRowCount(0)
        for task, data in zip(evaluation.tasks, evaluation.data, strict=True):
            self.add_task_row(task, data)
        self.seeds.setValue(evaluation.seeds)
        self.epochs.setValue(evaluation.epochs)
        self.learning_rate.setText(f"{evaluation.learning_rate:g}" if evaluation.learning_rate else "")
        self.mode.setCurrentIndex(max(0, self.mode.findData(evaluation.mode)))
        self.text_column.setText(evaluation.text_column)
        self.label_column.setText(evaluation.label_column)
        self.speed.setChecked(evaluation.speed)
        self.intrinsic.setChecked(evaluation.intrinsic)

    def add_model_folder(self, folder: Path) -> None:
        folder = Path(folder).resolve()
        if folder not in self.other_models:
            self.other_models.append(folder)
        self.checked.add((OTHER, folder.name))
        self.refresh()

    def _add_model_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder (with config.json)", str(Path.cwd()))
        if folder:
            self.add_model_folder(Path(folder))

    def _add_run_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Run folder", str(self.runs_dir))
        if folder:
            self.show_run(Path(folder))

    def _out_dir_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder for results", self.out_dir.text())
        if folder:
            self.out_dir.setText(folder)
            self.out_dir_user = True

    def output_dir(self) -> Path | None:
        text = self.out_dir.text().strip()
        return Path(text) if text else None

    # ---- running ----
    def is_running(self) -> bool:
        return self.worker is not None and self.worker.is_running()

    def _mode_changed(self) -> None:
        """Epochs and learning rate belong to fine-tuning; a probe has neither."""
        full = self.mode.currentData() == "full"
        self.epochs.setEnabled(full)
        self.learning_rate.setEnabled(full)

    def _learning_rate(self) -> float | None:
        """The learning-rate field: 0.0 when empty (the task's default), None when not a valid rate."""
        text = self.learning_rate.text().strip()
        if not text:
            return 0.0
        try:
            value = float(text)
        except ValueError:
            return None
        return value if 0 < value < 1 else None

    def start(self) -> TaskWorker | None:
        """Start the evaluation of the ticked models on the task rows; None (with a message) if not ready."""
        if self.is_running():
            return None
        models = plan_models(self.chosen())
        tasks = self.task_rows()
        out = self.output_dir()
        learning_rate = self._learning_rate()
        problem = ("Tick at least one model." if not models else
                   "Add a task with its data (a folder, file or hub:<dataset id>)." if not tasks else
                   "Choose an output folder." if out is None else
                   "The learning rate must be a number between 0 and 1, such as 2e-4, or empty for the "
                   "task's default." if learning_rate is None else "")
        if problem:
            self.status.setText(f"<span style='color:#b91c1c'>{problem}</span>")
            return None
        options = {"seeds": self.seeds.value(), "epochs": self.epochs.value(), "mode": self.mode.currentData(),
                   "learning_rate": learning_rate, "intrinsic": self.intrinsic.isChecked(),
                   "speed": self.speed.isChecked(),
                   "columns": (self.text_column.text().strip(), self.label_column.text().strip())}
        self._clear_results()
        self.progress.setFormat("%v / %m probes" if options["mode"] == "probe" else "%v / %m fine-tunings")
        self.progress.setRange(0, len(models) * len(tasks) * options["seeds"])
        self.progress.setValue(0)
        self.eta.setText("Loading the task data and models…")
        self.status.setText(f"Evaluating {len(models)} models on {', '.join(t for t, _ in tasks)} → {out}")
        self.worker = TaskWorker(run_evaluation, models, tasks, options, out)
        self.worker.event.connect(self.handle)
        self.worker.done.connect(lambda summary, out=out: self._done(summary, out))
        self.worker.failed.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self.started = time.monotonic()
        self.worker.start()
        self._set_running(True)
        return self.worker

    def cancel(self) -> None:
        if self.is_running():
            self.worker.cancel()
            self.eta.setText("Cancelling after the current fine-tuning step…")

    def cancel_and_wait(self, msecs: int = 60_000) -> None:
        if self.worker is not None:
            self.worker.cancel()
            self.worker.wait(msecs)

    def handle(self, event: Event) -> None:
        """An event from the evaluation (GUI thread)."""
        if isinstance(event, Progress) and event.stage == "eval":
            self.progress.setRange(0, max(event.total, 1))
            self.progress.setValue(event.step)
            self.eta.setText(f"{event.step} of {event.total} done · ETA {format_duration(event.eta_seconds)}")
        elif isinstance(event, EvalResult):
            row = self.live.rowCount()
            self.live.insertRow(row)
            metrics = ", ".join(f"{k} {100 * v:.1f}" for k, v in event.metrics.items())
            for column, value in enumerate((event.model, event.task, str(event.seed), metrics)):
                self.live.setItem(row, column, QTableWidgetItem(value))
            self.live.scrollToBottom()
        elif isinstance(event, Log):
            self.log.appendPlainText(event.message)

    def _done(self, summary: dict[str, Any], out: Path) -> None:
        self.show_summary(summary, source=out)
        self.eta.setText(f"Finished in {format_duration(time.monotonic() - self.started)}")
        self.evaluation_finished.emit(out)

    def _failed(self, message: str, details: str) -> None:
        self.status.setText(f"<span style='color:#b91c1c'>Evaluation failed: {message}</span>")
        self.eta.setText("")
        show_error(self, "Evaluation failed", message, details)

    def _finished(self) -> None:
        if self.summary is None and not self.status.text().startswith("<span"):
            self.status.setText("Evaluation cancelled; finished fine-tunings are kept and a new run continues.")
            self.eta.setText("Cancelled")
        self._set_running(False)

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.tree.setEnabled(not running)
        self.tasks.setEnabled(not running)
        self.running_changed.emit(running)

    # ---- results ----
    def _clear_results(self) -> None:
        self.summary = None
        self.table.setRowCount(0)
        self.table.setColumnCount(0)
        self.live.setRowCount(0)
        self.plots.show_summary({"results": [], "models": []})
        for button in self.export_buttons:
            button.setEnabled(False)

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
                if "drop (pts)" in header[c] and value.startswith("+") and float(value) >= 5:
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
        start = str((self.output_dir() or Path.cwd()) / f"summary.{kind}")
        filters = "CSV (*.csv)" if kind == "csv" else "Markdown (*.md)"
        path, _ = QFileDialog.getSaveFileName(self, "Export results table", start, filters)
        if path:
            self.export_table(Path(path))
            self.status.setText(f"Exported the table to {path}")

    def _export_plots_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save charts into", str(self.output_dir() or Path.cwd()))
        if folder:
            written = self.export_plots(Path(folder))
            self.status.setText(f"Saved {len(written)} charts to {folder}")


def _sizes(run_dir: Path) -> dict[str, str]:
    """Model name -> "107.0M" from a run's manifest."""
    folder = RunFolder(run_dir)
    manifest = folder.read_manifest()
    out = {}
    if (manifest.get("teacher") or {}).get("params"):
        out["teacher"] = f"{manifest['teacher']['params'] / 1e6:.1f}M"
    for stage in folder.stage_models(manifest):
        if stage.params:
            out[stage.name] = f"{stage.params / 1e6:.1f}M"
    return out
