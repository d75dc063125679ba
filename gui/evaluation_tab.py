"""Evaluation tab: benchmark the teacher and students on downstream tasks, with size and speed.

Models come from the shared `RunsModel` (teacher and completed stages of each run) or any model
folder; the evaluation runs in the background through a `gui.worker.Worker` calling
`engine.evaluate.runner.evaluate`, whose events drive the progress bar and the live results. Results
are read from (and written to) an `eval/` folder and shown by `gui.eval_results.ResultsPanel`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.errors import MiniGlotError, RecipeError
from engine.evaluate.report import SUMMARY_FILE
from engine.events import EvalDevScore, EvalProgress, EvalResult, Event, Log
from engine.runfolder import RunFolder
from gui.durations import format_duration
from gui.errors import details, message
from gui.eval_form import EvalOptions, TaskTable
from gui.eval_models import OTHER, ModelChoice, plan_models, run_choices, run_evaluation
from gui.eval_results import ResultsPanel
from gui.layouts import action_group, splitter
from gui.runs_model import RunsModel
from gui.style import show_error
from gui.worker import CANCELLED, COMPLETED, JobHost, Outcome, Worker

IDLE = "no evaluation running"


class EvaluationTab(JobHost, QWidget):
    """Choose models, tasks and options; run in the background; show and export the results."""

    cancelling = "Cancelling after the current fine-tuning step…"

    evaluation_finished = Signal(object)  # output folder, after a completed evaluation
    running_changed = Signal(bool)

    def __init__(self, runs: RunsModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runs = runs
        self.extra_runs: list[Path] = []
        self.other_models: list[Path] = []
        self.checked: set[tuple[str, str]] = set()  # (run, name) of ticked models
        self.job = ""  # the progress line of the job now running, which its dev scores extend

        self.results = ResultsPanel(lambda: self.options.output_dir() or Path.cwd())
        split = splitter(Qt.Orientation.Horizontal, self._build_setup(), self.results, stretch=(0, 1),
                         sizes=[560, 780])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 12, 12, 12)
        layout.addWidget(split)
        self.tasks.add_row()
        self.runs.changed.connect(self.refresh)
        self.refresh()

    def _build_setup(self) -> QWidget:
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Model", "Size"])
        self.tree.setMinimumHeight(160)
        self.tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.tree.header().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.itemChanged.connect(self._tree_changed)
        models = action_group("Models (the first teacher is the reference)", self.tree, [
            ("Add model folder…", lambda: self._pick_folder("Model folder (with config.json)", Path.cwd(),
                                                            self.add_model_folder)),
            ("Add run folder…", lambda: self._pick_folder("Run folder", self.runs.runs_dir, self.show_run))])
        self.tasks = TaskTable()
        tasks = action_group("Tasks and their data", self.tasks,
                             [("Add task", lambda: self.tasks.add_row()),
                              ("Remove task", self.tasks.remove_current_row)], stretch=True)
        self.options = EvalOptions()

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
        layout.addWidget(self.options)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.eta)
        return panel

    # ---- models ----
    def refresh(self) -> None:
        """Rebuild the model tree from the runs model; reload the output folder's summary if idle."""
        self.tree.blockSignals(True)
        self.tree.clear()
        for run in self.runs.with_extra(self.extra_runs):
            choices = run_choices(run)
            if len(choices) > 1:
                self._tree_group(run.path.name, str(run.path), choices)
        if self.other_models:
            self._tree_group(OTHER, "", [ModelChoice(OTHER, p.name, str(p)) for p in self.other_models])
        self.tree.blockSignals(False)
        if not self.is_running():
            out = self.options.output_dir()
            if out is not None and (out / SUMMARY_FILE).is_file():
                self.results.load_summary(out / SUMMARY_FILE)

    def _tree_group(self, title: str, tip: str, choices: list[ModelChoice]) -> None:
        group = QTreeWidgetItem(self.tree, [title])
        group.setToolTip(0, tip)
        group.setFlags(group.flags() | Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsAutoTristate)
        for choice in choices:
            child = QTreeWidgetItem(group, [choice.name, choice.size])
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
            if not self.options.out_dir_user and len(runs) == 1:
                self.options.set_output_dir(RunFolder(runs.pop()).eval_dir)

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
        if run_dir.parent != self.runs.runs_dir.resolve() and run_dir not in self.extra_runs:
            self.extra_runs.append(run_dir)
        run = self.runs.summary(run_dir)  # the runs model reads a run it has not seen yet
        if self.is_running():
            self.refresh()
            return
        self.checked = {(c.run, c.name) for c in run_choices(run)} if run is not None else set()
        self._prefill_tasks(run_dir)
        self.options.set_output_dir(RunFolder(run_dir).eval_dir)
        self.results.clear()
        self.refresh()

    def _prefill_tasks(self, run_dir: Path) -> None:
        """The run recipe's [evaluation] tasks, when the task table is still empty."""
        if self.tasks.task_rows():
            return
        from engine.recipe import Recipe

        try:
            evaluation = Recipe.load(RunFolder(run_dir).recipe_file).evaluation
        except (OSError, ValueError, MiniGlotError):  # an unreadable recipe only means no prefill
            return
        if evaluation is None:
            return
        self.tasks.setRowCount(0)
        for task, data in zip(evaluation.tasks, evaluation.data, strict=True):
            self.tasks.add_row(task, data)
        self.options.prefill(evaluation)

    def add_model_folder(self, folder: Path) -> None:
        folder = Path(folder).resolve()
        if folder not in self.other_models:
            self.other_models.append(folder)
        self.checked.add((OTHER, folder.name))
        self.refresh()

    def _pick_folder(self, title: str, start: Path, then: Callable[[Path], None]) -> None:
        folder = QFileDialog.getExistingDirectory(self, title, str(start))
        if folder:
            then(Path(folder))

    # ---- running ----
    def start(self) -> Worker | None:
        """Start the evaluation of the ticked models on the task rows; None (with a message) if not ready."""
        if self.is_running():
            return None
        models = plan_models(self.chosen())
        tasks = self.tasks.task_rows()
        out = self.options.output_dir()
        problem = ("Tick at least one model." if not models else
                   "Add a task with its data (a folder, file or hub:<dataset id>)." if not tasks else
                   "Choose an output folder." if out is None else "")
        if not problem:
            try:
                config = self.options.config(tasks)
            except RecipeError as exc:
                problem = str(exc)
        if problem:
            self.results.status.setText(f"<span style='color:#b91c1c'>{problem}</span>")
            return None
        self.results.clear()
        self.progress.setFormat("%v / %m probes" if config.mode == "probe" else "%v / %m fine-tunings")
        self.progress.setRange(0, len(models) * len(tasks) * config.seeds)
        self.progress.setValue(0)
        self.eta.setText("Loading the task data and models…")
        self.results.status.setText(f"Evaluating {len(models)} models on {', '.join(t for t, _ in tasks)} → {out}")
        return self.run_job(run_evaluation, models, config, out, target=out)

    def handle(self, event: Event) -> None:
        """An event from the evaluation (GUI thread)."""
        if isinstance(event, EvalProgress):
            self.progress.setRange(0, max(event.total, 1))
            self.progress.setValue(event.done)
            self.job = (f"{event.done} of {event.total} done · ETA {format_duration(event.eta_seconds)}"
                        + (f" · now {event.task}, {event.model}, seed {event.seed}" if event.task else ""))
            self.eta.setText(self.job)
        elif isinstance(event, EvalDevScore):
            self.eta.setText(f"{self.job}: {event.text}")
        elif isinstance(event, EvalResult):
            self.results.add_result(event)
        elif isinstance(event, Log):
            self.results.log.appendPlainText(event.message)

    def _failed(self, error: BaseException) -> None:
        self.results.status.setText(f"<span style='color:#b91c1c'>Evaluation failed: {message(error)}</span>")
        self.eta.setText("")
        show_error(self, "Evaluation failed", message(error), details(error))

    def _finished(self, outcome: Outcome, out: Path) -> None:
        if outcome.status == COMPLETED:
            self.results.show_summary(outcome.result, source=out)
            self.eta.setText(f"Finished in {format_duration(time.monotonic() - self.started)}")
            self.evaluation_finished.emit(out)
        elif outcome.status == CANCELLED:
            self.results.status.setText("Evaluation cancelled; finished fine-tunings are kept and a new run "
                                        "continues.")
            self.eta.setText("Cancelled")
        self._set_running(False)

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.tree.setEnabled(not running)
        self.tasks.setEnabled(not running)
        self.running_changed.emit(running)
