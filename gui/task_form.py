"""The Task model tab's inputs: the encoder, the task and its data, epochs, the output folder and an
optional teacher task model with unlabelled texts to learn from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine.configs import TaskModelConfig
from engine.errors import RecipeError
from engine.tasks import TASKS, TRAINABLE
from gui.eval_form import task_combo
from gui.eval_models import run_choices
from gui.form_widgets import compact
from gui.layouts import with_browse, with_buttons
from gui.runs_model import RunSummary
from gui.task_jobs import TaskJob
from gui.teachers import TEACHERS

OUTPUT_FOLDER = "task-models"  # default outputs: <runs folder's parent>/task-models/<encoder>-<task>
PATH_SEPARATOR = ";"


@dataclass(frozen=True)
class Encoder:
    """An encoder to fine-tune: `source` is a folder or `packaged:<name>`; `name` names its task models."""

    source: str
    label: str
    name: str
    tip: str = ""


def encoder_choices(runs: list[RunSummary], folders: list[Path]) -> list[Encoder]:
    """Each run's final student (from its manifest), the packaged teachers, then the folders added by hand."""
    choices = []
    for run in runs:
        students = [choice for choice in run_choices(run) if not choice.teacher]
        if students:
            final = students[-1]
            size = f" ({final.size})" if final.size else ""
            choices.append(Encoder(final.source, f"{run.path.name} · {final.name}{size}", run.path.name,
                                   f"The final student of the run {run.path}"))
    choices += [Encoder(t.source, t.label, t.source.split(":", 1)[1], t.tip) for t in TEACHERS
                if t.source.startswith("packaged:")]
    choices += [Encoder(str(folder), f"{folder.name} — folder", folder.name, str(folder)) for folder in folders]
    return choices


def split_paths(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(PATH_SEPARATOR) if part.strip())


class TaskModelForm(QWidget):
    """The inputs; `output_changed(Path | None)` when the output folder changes (by hand or by default)."""

    output_changed = Signal(object)

    def __init__(self, runs_dir: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runs_dir = runs_dir
        self.runs: list[RunSummary] = []
        self.folders: list[Path] = []  # encoder folders added by hand
        self.out_dir_user = False  # the output folder was chosen by hand: keep it

        self.encoder = compact(QComboBox(), 30)
        self.encoder.setToolTip("The model to fine-tune: a run's final student, a packaged teacher or a folder")
        self.task = task_combo("ner", TRAINABLE)
        self.data = QLineEdit(placeholderText="folder, file or hub:<dataset id>")
        self.data.setToolTip("Labelled data with train, dev and test splits (a single file is split 80/10/10)")
        self.epochs = QSpinBox(minimum=0, maximum=100, value=0, specialValueText="task default")
        self.epochs.setToolTip("0: the task's default (up to 10 epochs, stopping when dev stops improving)")
        self.out_dir = QLineEdit(placeholderText="folder for the task model")
        self.teacher = QLineEdit(placeholderText="a task model folder fine-tuned on the same labels")
        self.unlabelled = QLineEdit(placeholderText="optional: text files, one sentence per line")
        self.unlabelled.setToolTip(f"In-language texts the teacher labels for the student to learn from "
                                   f"(files separated by '{PATH_SEPARATOR}')")
        self.distill = QGroupBox("Learn from a teacher task model (task distillation)")
        self.distill.setCheckable(True)
        self.distill.setChecked(False)
        self.distill.setToolTip("The student learns the gold labels and the teacher's predictions on the train "
                                "texts and the unlabelled texts")

        form = QFormLayout()
        form.addRow("Encoder:", with_buttons(self.encoder, [("Folder…", self._encoder_dialog)]))
        form.addRow("Task:", self.task)
        form.addRow("Data:", with_buttons(self.data, [("Folder…", self._data_folder_dialog),
                                                      ("File…", self._data_file_dialog)]))
        form.addRow("Epochs:", self.epochs)
        form.addRow("Output folder:", with_browse(self.out_dir, self._out_dir_dialog))
        distill = QFormLayout(self.distill)
        distill.addRow("Teacher:", with_browse(self.teacher, self._teacher_dialog))
        distill.addRow("Unlabelled texts:", with_buttons(self.unlabelled, [("Add files…", self._unlabelled_dialog)]))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.distill)

        self.encoder.currentIndexChanged.connect(lambda _: self._update_default_out())
        self.task.currentIndexChanged.connect(lambda _: self._update_default_out())
        self.out_dir.textEdited.connect(lambda _: setattr(self, "out_dir_user", True))
        self.out_dir.editingFinished.connect(lambda: self.output_changed.emit(self.output_dir()))

    def set_runs(self, runs: list[RunSummary]) -> None:
        """Offer the encoders of `runs` (and the rest), keeping the chosen one."""
        chosen: Encoder | None = self.encoder.currentData()
        self.runs = runs
        self.encoder.blockSignals(True)
        self.encoder.clear()
        for i, choice in enumerate(encoder_choices(runs, self.folders)):
            self.encoder.addItem(choice.label, choice)
            self.encoder.setItemData(i, choice.tip, Qt.ItemDataRole.ToolTipRole)
        self.encoder.blockSignals(False)
        self.select_encoder(chosen.source if chosen else "")

    def add_encoder_folder(self, folder: Path) -> None:
        folder = Path(folder).resolve()
        if folder not in self.folders:
            self.folders.append(folder)
        self.set_runs(self.runs)
        self.select_encoder(str(folder))

    def select_encoder(self, source: str) -> None:
        """Choose the encoder with `source` (the first one when none has it)."""
        sources = [self.encoder.itemData(i).source for i in range(self.encoder.count())]
        self.encoder.setCurrentIndex(sources.index(source) if source in sources else 0)
        self._update_default_out()

    def output_dir(self) -> Path | None:
        text = self.out_dir.text().strip()
        return Path(text) if text else None

    def job(self) -> TaskJob:
        """The training the form asks for; RecipeError with a message for the user when something is missing."""
        encoder: Encoder | None = self.encoder.currentData()
        out = self.output_dir()
        teacher = self.teacher.text().strip() if self.distill.isChecked() else ""
        unlabelled = split_paths(self.unlabelled.text()) if self.distill.isChecked() else ()
        if encoder is None:
            raise RecipeError("Choose an encoder: a run's final student, a packaged teacher or a folder.", "encoder")
        if not self.data.text().strip():
            raise RecipeError("Choose the task data: a folder, a file or hub:<dataset id>.", "data")
        if out is None:
            raise RecipeError("Choose an output folder.", "out")
        if self.distill.isChecked() and not teacher:
            raise RecipeError("Choose the teacher task model folder, or untick task distillation.", "teacher")
        config = TaskModelConfig(task=self.task.currentText(), data=self.data.text().strip(), distill=bool(teacher),
                                 unlabelled=unlabelled, epochs=self.epochs.value())
        return TaskJob(encoder.source, config, out.resolve(), teacher or None)

    def _update_default_out(self) -> None:
        encoder: Encoder | None = self.encoder.currentData()
        if self.out_dir_user or encoder is None:
            return
        out = self.runs_dir.resolve().parent / OUTPUT_FOLDER / f"{encoder.name}-{self.task.currentText()}"
        if out != self.output_dir():
            self.out_dir.setText(str(out))
            self.output_changed.emit(out)

    def _encoder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Encoder folder (with config.json)", str(Path.cwd()))
        if folder:
            self.add_encoder_folder(Path(folder))

    def _data_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Task data folder", self.data.text() or str(Path.cwd()))
        if folder:
            self.data.setText(folder)

    def _data_file_dialog(self) -> None:
        formats = " ".join(f"*{suffix}" for suffix in TASKS[self.task.currentText()].formats)
        path, _ = QFileDialog.getOpenFileName(self, "Task data file", self.data.text() or str(Path.cwd()),
                                              f"{TASKS[self.task.currentText()].title} ({formats});;All files (*)")
        if path:
            self.data.setText(path)

    def _out_dir_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder for the task model", self.out_dir.text())
        if folder:
            self.out_dir_user = True
            self.out_dir.setText(folder)
            self.output_changed.emit(Path(folder))

    def _teacher_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Teacher task model folder", self.teacher.text())
        if folder:
            self.teacher.setText(folder)

    def _unlabelled_dialog(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Unlabelled texts", str(Path.cwd()),
                                                "Text (*.txt);;All files (*)")
        if paths:
            self.unlabelled.setText(f"{PATH_SEPARATOR} ".join([*split_paths(self.unlabelled.text()), *paths]))
