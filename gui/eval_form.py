"""The Evaluation tab's inputs: the table of tasks and their data, and the options form."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHeaderView,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QWidget,
)

from engine.configs import EVAL_TASKS, EvaluationConfig
from engine.errors import RecipeError
from engine.tasks import TASKS
from gui.layouts import with_browse


def task_combo(task: str = "pos", names: tuple[str, ...] = EVAL_TASKS) -> QComboBox:
    """The tasks `names` to choose from, each with a tooltip saying what it is and which files it reads."""
    combo = QComboBox()
    combo.addItems(names)
    for i, name in enumerate(names):
        kind = TASKS[name]
        combo.setItemData(i, f"{kind.title}: {', '.join(kind.formats)}", Qt.ItemDataRole.ToolTipRole)
    combo.setCurrentText(task)
    return combo


class TaskTable(QTableWidget):
    """One row per task: its kind, its data (folder, file or hub id) and a Browse button."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, 3, parent)
        self.setHorizontalHeaderLabels(["Task", "Data (folder, file or hub id)", ""])
        self.verticalHeader().setVisible(False)
        self.setShowGrid(False)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        header = self.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.setMinimumHeight(110)

    def add_row(self, task: str = "pos", data: str = "") -> None:
        row = self.rowCount()
        self.insertRow(row)
        combo = task_combo(task)
        edit = QLineEdit(data)
        edit.setPlaceholderText("folder, file or hub:<dataset id>")
        browse = QPushButton("Browse…")
        browse.clicked.connect(lambda: self._data_dialog(edit))
        self.setCellWidget(row, 0, combo)
        self.setCellWidget(row, 1, edit)
        self.setCellWidget(row, 2, browse)

    def remove_current_row(self) -> None:
        row = self.currentRow()
        self.removeRow(row if row >= 0 else self.rowCount() - 1)

    def task_rows(self) -> list[tuple[str, str]]:
        """(task, data) for every row with data."""
        rows = []
        for row in range(self.rowCount()):
            task = self.cellWidget(row, 0).currentText()
            data = self.cellWidget(row, 1).text().strip()
            if data:
                rows.append((task, data))
        return rows

    def _data_dialog(self, edit: QLineEdit) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Task data folder", edit.text() or str(Path.cwd()))
        if folder:
            edit.setText(folder)


class EvalOptions(QGroupBox):
    """Mode, seeds, epochs, learning rate, table columns, extra measurements and the output folder."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Options", parent)
        self.out_dir_user = False  # the output folder was chosen by hand: keep it
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
        form = QFormLayout(self)
        form.addRow("Mode:", self.mode)
        form.addRow("Seeds:", self.seeds)
        form.addRow("Epochs:", self.epochs)
        form.addRow("Learning rate:", self.learning_rate)
        form.addRow("Text column:", self.text_column)
        form.addRow("Label column:", self.label_column)
        form.addRow(self.speed)
        form.addRow(self.intrinsic)
        form.addRow("Output folder:", with_browse(self.out_dir, self._out_dir_dialog))
        self._mode_changed()

    def config(self, tasks: list[tuple[str, str]]) -> EvaluationConfig:
        """The options as a recipe's [evaluation] for the (task, data) rows; RecipeError, with the message a
        recipe gets, when a setting is invalid."""
        text = self.learning_rate.text().strip()
        try:
            learning_rate = float(text) if text else 0.0
        except ValueError:
            raise RecipeError(f"evaluation.learning_rate must be a number such as 2e-4, or empty for the task's "
                              f"default; got {text!r}", "learning_rate") from None
        return EvaluationConfig(
            tasks=tuple(task for task, _ in tasks), data=tuple(data for _, data in tasks), seeds=self.seeds.value(),
            epochs=self.epochs.value(), mode=self.mode.currentData(), learning_rate=learning_rate,
            intrinsic=self.intrinsic.isChecked(), speed=self.speed.isChecked(),
            text_column=self.text_column.text().strip(), label_column=self.label_column.text().strip())

    def prefill(self, evaluation: EvaluationConfig) -> None:
        """The options of a recipe's [evaluation] section."""
        self.seeds.setValue(evaluation.seeds)
        self.epochs.setValue(evaluation.epochs)
        self.learning_rate.setText(f"{evaluation.learning_rate:g}" if evaluation.learning_rate else "")
        self.mode.setCurrentIndex(max(0, self.mode.findData(evaluation.mode)))
        self.text_column.setText(evaluation.text_column)
        self.label_column.setText(evaluation.label_column)
        self.speed.setChecked(evaluation.speed)
        self.intrinsic.setChecked(evaluation.intrinsic)

    def output_dir(self) -> Path | None:
        text = self.out_dir.text().strip()
        return Path(text) if text else None

    def set_output_dir(self, folder: Path, chosen: bool = False) -> None:
        """Aim the output at `folder`; a folder the user `chosen` is kept until the next run is shown."""
        self.out_dir.setText(str(folder))
        self.out_dir_user = chosen

    def _mode_changed(self) -> None:
        """Epochs and learning rate belong to fine-tuning; a probe has neither."""
        full = self.mode.currentData() == "full"
        self.epochs.setEnabled(full)
        self.learning_rate.setEnabled(full)

    def _out_dir_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder for results", self.out_dir.text())
        if folder:
            self.set_output_dir(Path(folder), chosen=True)
