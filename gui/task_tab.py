"""Task model tab: fine-tune an encoder into a stock token- or text-classification model to ship (optionally
task-distilled from a fine-tuned teacher), watch its curves, compare its scores with the teacher's, try it
on typed sentences and export it.

Training runs `engine.taskmodel.build_task_model` through a `gui.worker.Worker`; reading a folder's facts
and labelling sentences with its `transformers.pipeline` are background tasks of the same bridge.
"""

from __future__ import annotations

import time
from html import escape
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from engine.errors import RecipeError
from engine.events import Event, Log, Metric, Progress
from engine.tasks import TASKS
from gui.durations import format_duration
from gui.errors import details, message
from gui.form_widgets import note_label
from gui.gil import compute_threads
from gui.layouts import splitter
from gui.runs_model import RunsModel
from gui.style import show_error
from gui.task_curves import TaskCurves, metric_title
from gui.task_form import TaskModelForm
from gui.task_jobs import Labeller, Prediction, TaskModel, read_task_model, train_task_model
from gui.task_results import ScoresTable, TryItPanel
from gui.worker import CANCELLED, COMPLETED, BackgroundTask, JobHost, Outcome, Worker, run_in_background

TRAIN_SHORTCUT = "Ctrl+Return"  # Ctrl+Enter
IDLE = "no training running"
ABOUT = ("The task model is a stock Hugging Face folder (model, tokenizer, model card, miniglot_task.json with "
         "its scores) that transformers' pipeline loads as it is; it is checked in a fresh process before it "
         "replaces anything in the output folder. Token tasks (pos, ner) tag words, text tasks (sentiment, topic) "
         "label sentences. With a teacher task model the student also learns its predictions, on the train "
         "texts and on unlabelled texts in the language.")
ERROR_COLOUR = "#b91c1c"


class TaskModelTab(JobHost, QWidget):
    """Choose encoder, task, data and teacher; train in the background; show, try and export the result."""

    running_changed = Signal(bool)
    export_requested = Signal(object)  # the shown task model's folder
    model_trained = Signal(object)  # the TaskModel just written

    def __init__(self, runs: RunsModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runs = runs
        self.model: TaskModel | None = None  # the task model shown (scores, Try it, Export)
        self.labeller = Labeller()
        self.labelling: BackgroundTask | None = None
        self.waiting = ""  # a sentence typed while the one before was being labelled
        self.dev_score = ""  # the latest epoch's dev score, for the progress line

        self.curves = TaskCurves()
        self.scores = ScoresTable()
        self.try_it = TryItPanel()
        self.try_it.asked.connect(self.ask)
        results = splitter(Qt.Orientation.Vertical, self.curves, self.scores, self.try_it, stretch=(3, 0, 2),
                           sizes=[380, 170, 300])
        split = splitter(Qt.Orientation.Horizontal, self._build_setup(), results, stretch=(0, 1), sizes=[560, 780])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 12, 12, 12)
        layout.addWidget(split)
        QShortcut(QKeySequence(TRAIN_SHORTCUT), self, self.start,
                  context=Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.form.output_changed.connect(self.show_output)
        self.runs.changed.connect(self.refresh)
        self.refresh()

    def _build_setup(self) -> QWidget:
        self.form = TaskModelForm(self.runs.runs_dir)
        self.train_button = QPushButton("Train")
        self.train_button.setObjectName("primary")
        self.train_button.setToolTip("Fine-tune the encoder on the task data (Ctrl+Enter)")
        self.train_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel", enabled=False)
        self.cancel_button.setToolTip("Stop after the current step; nothing is written")
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button = QPushButton("Export to ONNX…", enabled=False)
        self.export_button.setToolTip("Write the task model as ONNX (optionally int8) for ONNX Runtime")
        self.export_button.clicked.connect(lambda: self.export_requested.emit(self.model.folder))
        buttons = QHBoxLayout()
        for button in (self.train_button, self.cancel_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.export_button)
        self.progress = QProgressBar(textVisible=True)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat(IDLE)
        self.eta = QLabel("")
        self.eta.setStyleSheet("color: #4b5563;")
        self.status = QLabel("Choose an encoder, a task and its labelled data, then train.")
        self.status.setWordWrap(True)
        self.status.setTextFormat(Qt.TextFormat.RichText)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        panel = QWidget()
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(0, 0, 6, 0)
        layout.addWidget(self.form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.eta)
        layout.addWidget(self.status)
        layout.addSpacing(12)
        layout.addWidget(note_label(ABOUT))
        layout.addStretch(1)
        return panel

    def refresh(self) -> None:
        """Offer the runs' final students as encoders (the runs folder may have changed)."""
        self.form.runs_dir = self.runs.runs_dir
        self.form.set_runs(self.runs.runs)

    # ---- the task model shown ----
    def show_output(self, folder: Path | None) -> None:
        """Show the task model already in `folder`, if any (read in the background); nothing while training."""
        if self.is_running():
            return
        self.set_model(None)
        if folder is not None and folder.is_dir():  # most often it does not exist yet: nothing to read
            run_in_background(read_task_model, folder, on_done=lambda model: self._read(folder, model),
                              on_error=lambda exc: self._say(f"Cannot read the task model in {folder}: "
                                                             f"{message(exc)}", error=True))

    def _read(self, folder: Path, model: TaskModel | None) -> None:
        if model is not None and folder == self.form.output_dir() and not self.is_running():
            self.set_model(model)

    def set_model(self, model: TaskModel | None) -> None:
        self.model = model
        if model is None:
            self.scores.clear("Train a task model to see its scores here.")
        else:
            self.scores.show_model(model)
        self.try_it.set_labels(list(model.facts["labels"]) if model is not None else None)
        self.export_button.setEnabled(model is not None and not self.is_running())

    # ---- training ----
    def start(self) -> Worker | None:
        """Train the task model the form asks for; None (with the reason shown) when it cannot start."""
        if self.is_running():
            return None
        try:
            job = self.form.job()
        except RecipeError as exc:
            self._say(str(exc), error=True)
            return None
        self.set_model(None)
        self.curves.reset(TASKS[job.config.task].headline, distilled=job.teacher is not None)
        self.dev_score = ""
        self.progress.setRange(0, 0)  # busy until the first step
        self.progress.setFormat("step %v / %m")
        self.eta.setText("Loading the data and the encoder…")
        self._say(f"Training a {job.config.task} model → {job.out}")
        return self.run_job(train_task_model, job, compute_threads(), target=job.out)

    def handle(self, event: Event) -> None:
        """An event from the training (GUI thread)."""
        if isinstance(event, Progress):
            self.progress.setRange(0, max(event.total, 1))
            self.progress.setValue(event.step)
            self.eta.setText(f"ETA {format_duration(event.eta_seconds)}{self.dev_score}")
        elif isinstance(event, Metric) and self.curves.add(event) and event.split == "dev":
            self.dev_score = f" · dev {metric_title(event.name)} {100 * event.value:.1f} after epoch {event.step}"
        elif isinstance(event, Log):
            self.eta.setText(event.message)

    def _failed(self, error: BaseException) -> None:
        self._say(f"Training failed: {message(error)}", error=True)
        self.eta.setText("")
        show_error(self, "Training the task model failed", message(error), details(error))

    def _finished(self, outcome: Outcome, out: Path) -> None:
        self._set_running(False)
        self.curves.redraw()
        if outcome.status == COMPLETED:
            self.progress.setValue(self.progress.maximum())
            self.eta.setText(f"Finished in {format_duration(time.monotonic() - self.started)}")
            self._say(f"Saved to {out}: a stock Hugging Face {TASKS[outcome.result.facts['task']].pipeline_tag} "
                      "model. Try it below, or export it.")
            self.set_model(outcome.result)
            self.model_trained.emit(outcome.result)
            return
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat(IDLE)
        if outcome.status == CANCELLED:
            self.eta.setText("Cancelled")
            self._say(f"Cancelled: nothing was written to {out}.")
        self.show_output(out)  # a task model trained there before is kept

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.form.setEnabled(not running)
        self.export_button.setEnabled(self.model is not None and not running)
        self.running_changed.emit(running)

    def _say(self, text: str, error: bool = False) -> None:
        text = escape(text)
        self.status.setText(f"<span style='color:{ERROR_COLOUR}'>{text}</span>" if error else text)

    # ---- Try it ----
    def ask(self, text: str) -> BackgroundTask | None:
        """Label `text` with the shown task model in the background (after the sentence being labelled)."""
        if self.model is None:
            return None
        if self.labelling is not None and self.labelling.is_running():
            self.waiting = text
            return None
        self.try_it.show_busy()
        self.labelling = run_in_background(self.labeller, self.model.folder, text, on_done=self._answered,
                                           on_error=self._labelling_failed)
        return self.labelling

    def _answered(self, prediction: Prediction) -> None:
        if self.model is not None:
            self.try_it.show_prediction(prediction)
        if self.waiting:
            text, self.waiting = self.waiting, ""
            self.ask(text)

    def _labelling_failed(self, error: BaseException) -> None:
        self.waiting = ""
        self.try_it.timing.setText("")
        show_error(self, "Cannot label the sentence", message(error), details(error))
