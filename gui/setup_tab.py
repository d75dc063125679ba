"""The Setup tab: teacher, language, corpus and compression targets, edited as one `Recipe`.

Every edit rebuilds the recipe (debounced), checks it against the teacher's shape, flags the field
a RecipeError's path names and refreshes the live `BudgetPanel`. One box per registered stage
(`engine.stages.registry`). Teacher inspection and corpus counting run in the background through
`gui.worker`, so the window never freezes; until inspection ends (or where it cannot), the budget uses the
teacher's standard shape from `gui.teachers`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from engine.configs import Stage
from engine.errors import RecipeError
from engine.estimate import estimate, stage_shapes
from engine.recipe import Recipe
from engine.resources import DEFAULT_RECIPE, PRESET, load_recipe
from engine.shapes import Shape
from engine.stages.registry import specs
from gui.budget_panel import BudgetPanel
from gui.form_widgets import ERROR_STYLE, NOTE_STYLE, TEXT_STYLE, compact, error_label, show_message
from gui.plan_dialog import PlanDialog
from gui.setup_sections import DataSection, RunSection, TeacherSection
from gui.setup_tasks import count_corpus, inspect_teacher, keyed, preset_files
from gui.stage_box import StageBox
from gui.teachers import known_shape

DEBOUNCE_MS = 100
CORPUS_DEBOUNCE_MS = 600

Runner = Callable[..., Any]
Problem = tuple[Any, RecipeError]  # (section or stage box or label, error)


def _default_runner(fn: Callable[..., Any], *args: Any, on_done: Callable[[Any], None]) -> Any:
    from gui.worker import run_in_background

    return run_in_background(fn, *args, on_done=on_done)


class SetupTab(QWidget):
    """Edits a Recipe; `recipe_changed(Recipe)` after each valid edit, `valid_changed(bool)` on a change."""

    recipe_changed = Signal(object)
    valid_changed = Signal(bool)

    def __init__(self, parent: QWidget | None = None, run_in_background: Runner | None = None) -> None:
        super().__init__(parent)
        self._run = run_in_background or _default_runner
        self._base = Recipe(stages=(specs()[0].template,))
        self._stage_base: dict[str, Stage] = {}
        self._valid: bool | None = None
        self._loading = False
        self._background_started = False  # teacher inspection and corpus count: on set_recipe or first show
        self._inspected: dict[tuple[str, bool], tuple[str, Shape]] = {}
        self.plans_dir: Path | None = None  # where Plan… saves by default (the app's runs folder); None: the recipe's
        self._inspecting: tuple[str, bool] | None = None
        self._corpus_key: tuple[Any, ...] | None = None
        self._tasks: list[Any] = []

        self._timer = QTimer(self, singleShot=True, interval=DEBOUNCE_MS)
        self._timer.timeout.connect(self._refresh)
        self._corpus_timer = QTimer(self, singleShot=True, interval=CORPUS_DEBOUNCE_MS)
        self._corpus_timer.timeout.connect(self._count_corpus)

        self.budget = BudgetPanel()
        self.teacher = TeacherSection()
        self.teacher.changed.connect(self._teacher_changed)
        self.data = DataSection()
        self.data.changed.connect(self._changed)
        self.data.corpus_changed.connect(self._corpus_changed)
        self.run = RunSection()
        self.run.changed.connect(self._changed)
        # the widgets tests and the main window reach for
        self.teacher_combo, self.teacher_info = self.teacher.combo, self.teacher.info
        self.language_combo, self.corpus_info = self.data.language_combo, self.data.corpus_info

        form = QWidget()
        column = QVBoxLayout(form)
        column.setSpacing(10)
        column.addLayout(self._build_presets())
        column.addWidget(self.teacher)
        column.addWidget(self.data)
        self.stage_boxes = {spec.kind: StageBox(spec) for spec in specs()}
        stages_title = QLabel("<b>Compression stages</b> — tick a stage to run it; hover a field for what the "
                              "paper found")
        stages_title.setWordWrap(True)
        column.addWidget(stages_title)
        for box in self.stage_boxes.values():
            box.changed.connect(self._changed)
            column.addWidget(box)
        self.stages_error = error_label()
        column.addWidget(self.stages_error)
        column.addWidget(self.run)
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

    def _build_presets(self) -> QHBoxLayout:
        self.preset_combo = compact(QComboBox(), 30)
        self.preset_combo.addItem("Load a preset recipe…", None)
        for name, header in preset_files():
            first = header.split(". ")[0].split(" (")[0]
            self.preset_combo.addItem(f"{name} — {first}", PRESET + name)
            self.preset_combo.setItemData(self.preset_combo.count() - 1, header, Qt.ItemDataRole.ToolTipRole)
        self.preset_combo.setToolTip("The paper's moderate and maximum settings for mBERT and XLM-R, and the "
                                     "offline default.")
        self.preset_combo.activated.connect(self._preset_chosen)
        self.plan_button = QPushButton("Plan…")
        self.plan_button.setToolTip("Fit the stages to a size target: candidate allocations are tried with short "
                                    "runs on the corpus and the best fills the stages (Ctrl+P)")
        self.plan_button.clicked.connect(self.open_plan)
        row = QHBoxLayout()
        row.addWidget(QLabel("<b>Preset</b>"))
        row.addWidget(self.preset_combo, 1)
        row.addWidget(self.plan_button)
        return row

    # ---- public API ----
    def set_recipe(self, recipe: Recipe) -> None:
        """Show `recipe` in the form (fields it has no widget for are kept as they are)."""
        self._load(recipe)
        self._start_background()

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if not self._background_started:  # first show without set_recipe: inspect the default's teacher
            self._start_background()

    def _start_background(self) -> None:
        self._background_started = True
        self._inspect_teacher()
        self._corpus_timer.start()

    def _load(self, recipe: Recipe) -> None:
        self._loading = True
        try:
            self._base = recipe
            self.teacher.load(recipe.teacher)
            self.data.load(recipe)
            self.run.load(recipe.run)
            self._stage_base = {}
            for stage in recipe.stages:
                self._stage_base.setdefault(stage.kind, stage)
            for kind, box in self.stage_boxes.items():
                box.set_stage(self._stage_base.get(kind, box.spec.template))
                box.setChecked(kind in self._stage_base)
        finally:
            self._loading = False
        self._refresh()

    def recipe(self) -> Recipe:
        """The recipe in the form; raises the first problem's RecipeError when it is invalid."""
        recipe, problems = self._build()
        if recipe is None:
            raise problems[0][1]
        return recipe

    def is_valid(self) -> bool:
        return self._build()[0] is not None

    def open_plan(self) -> PlanDialog | None:
        """The planner's dialog for the recipe in the form (its winner fills the form); None, with the reason
        under the stages, while the recipe is invalid or the teacher's shape is unknown."""
        teacher = self.teacher_shape()
        try:
            recipe = self.recipe().resolved()
        except RecipeError as exc:
            show_message(self.stages_error, f"Plan needs a valid recipe: {exc}")
            return None
        if teacher is None:
            show_message(self.stages_error, "Plan needs the teacher's shape: wait until it has been inspected")
            return None
        dialog = PlanDialog(recipe, teacher, stage_shapes(recipe, teacher)[-1].total_params, self, self.plans_dir)
        dialog.planned.connect(self.set_recipe)
        dialog.show()
        return dialog

    def teacher_shape(self) -> Shape | None:
        """The inspected shape of the chosen teacher, else its standard shape (`gui.teachers`), else None."""
        key = self.teacher.key()
        if key in self._inspected:
            return self._inspected[key][1]
        return known_shape(key[0])

    def field(self, kind: str, name: str) -> QWidget:
        """The widget of a stage field, e.g. field("shrink", "hidden")."""
        return self.stage_boxes[kind].widgets[name]

    # ---- recipe assembly and validation ----
    def _build(self) -> tuple[Recipe | None, list[Problem]]:
        """The recipe, or None and the problems as (where to show it, error)."""
        problems: list[Problem] = []

        def attempt(target: Any, make: Callable[[], Any]) -> Any:
            try:
                return make()
            except RecipeError as exc:
                problems.append((target, exc))
                return None

        teacher = attempt(self.teacher, self.teacher.config)
        language = attempt(self.data.language_error, self.data.language_config)
        corpus = attempt(self.data.corpus_error, self.data.corpus_config)
        run = attempt(self.run, lambda: self.run.config(self._base.run))
        stages = [attempt(self.stage_boxes[kind], lambda kind=kind: self.stage_boxes[kind].stage(
                      self._stage_base.get(kind, self.stage_boxes[kind].spec.template)))
                  for kind in self._stage_kinds()]
        if problems:
            return None, problems
        recipe = attempt(None, lambda: Recipe(teacher=teacher, language=language, corpus=corpus,
                                              stages=tuple(stages), run=run, evaluation=self._base.evaluation,
                                              task_models=self._base.task_models, base_dir=self._base.base_dir,
                                              # a plan describes its own stages: edited ones drop it
                                              plan=self._base.plan if tuple(stages) == self._base.stages else None))
        shape = self.teacher_shape()
        if recipe is not None and shape is not None:
            attempt(None, lambda: estimate(recipe, shape))
        if problems:
            return None, [(self._box_for(stages, exc), exc) for _, exc in problems]
        return recipe, []

    def _box_for(self, stages: list[Stage], exc: RecipeError) -> Any:
        """The stage box a recipe-level error's path points into, else the stages' own error label."""
        return self.stage_boxes[stages[exc.stage - 1].kind] if exc.stage else self.stages_error

    def _stage_kinds(self) -> list[str]:
        """Enabled stages, in the loaded recipe's order when it has them all, else the registry's order."""
        enabled = [kind for kind, box in self.stage_boxes.items() if box.isChecked()]
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
            pending = self._inspecting is not None and self.teacher.key() not in self._inspected
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

    def _show_problems(self, problems: list[Problem]) -> None:
        first: dict[int, RecipeError] = {}
        for target, exc in problems:
            first.setdefault(id(target), exc)

        def error(target: Any) -> tuple[str, str]:
            exc = first.get(id(target))
            return (str(exc), exc.field) if exc is not None else ("", "")

        for box in self.stage_boxes.values():
            box.show_error(*error(box))
        self.teacher.show_error(*error(self.teacher))
        self.data.show_language_error(*error(self.data.language_error))
        self.data.show_corpus_error(*error(self.data.corpus_error))
        self.run.show_error(*error(self.run))
        show_message(self.stages_error, error(self.stages_error)[0])

    # ---- presets, teacher, corpus ----
    @Slot(int)
    def _preset_chosen(self, index: int) -> None:
        preset = self.preset_combo.itemData(index)
        if not preset:
            return
        try:
            self.set_recipe(load_recipe(preset))
        except RecipeError as exc:
            show_message(self.stages_error, f"Cannot load {preset}: {exc}")

    @Slot()
    def _teacher_changed(self) -> None:
        if self._loading:
            return
        self._inspect_teacher()
        self._changed()
        self._corpus_timer.start()

    def _inspect_teacher(self) -> None:
        key = self.teacher.key()
        if not key[0]:
            return
        if key in self._inspected:
            self._show_teacher(*self._inspected[key])
            return
        self._inspecting = key
        self.teacher.show_info("Inspecting the teacher… (the packaged E5 is converted once, a few seconds)",
                               NOTE_STYLE)
        self._keep(self._run(keyed, key, inspect_teacher, *key, on_done=self._teacher_inspected))
        self._changed()  # the budget notes that it uses the standard shape meanwhile

    def _keep(self, task: Any) -> None:
        """Hold the latest tasks until their answers are delivered (older answers are stale anyway)."""
        self._tasks = [*self._tasks[-7:], task]

    @Slot(object)
    def _teacher_inspected(self, payload: tuple[Any, Any, str]) -> None:
        key, result, error = payload
        if key != self.teacher.key():
            return  # the user has chosen another teacher meanwhile
        self._inspecting = None
        if error:
            known = " The budget uses this model's standard shape." if known_shape(key[0]) is not None else ""
            self.teacher.show_info(f"Cannot inspect the teacher: {error}{known}", ERROR_STYLE)
        else:
            self._inspected[key] = result
            self._show_teacher(*result)
        self._refresh()

    def _show_teacher(self, model_type: str, shape: Shape) -> None:
        head = ("MLM head" if shape.mlm_head
                else "no MLM head: distil with loss = hidden, or add an adapt stage")
        self.teacher.show_info(f"<b>{model_type}</b> · <b>{shape.total_params / 1e6:,.1f}M parameters</b> · "
                               f"{shape.describe()} · {'pooler' if shape.pooler else 'no pooler'} · {head}",
                               TEXT_STYLE)

    @Slot()
    def _corpus_changed(self) -> None:
        self._changed()
        if not self._loading:
            self._corpus_timer.start()

    @Slot()
    def _count_corpus(self) -> None:
        train = self.data.train()
        if not train:
            self.data.show_info("", NOTE_STYLE)
            return
        key = (train, self._base.base_dir, self.teacher.key()[0])
        if key == self._corpus_key:
            return
        self._corpus_key = key
        self.data.show_info("Counting lines, characters and tokens…", NOTE_STYLE)
        self._keep(self._run(keyed, key, count_corpus, *key, on_done=self._corpus_counted))

    @Slot(object)
    def _corpus_counted(self, payload: tuple[Any, Any, str]) -> None:
        key, result, error = payload
        if key != self._corpus_key:
            return
        if error:
            self._corpus_key = None  # try again after the next edit
            self.data.show_info(error, ERROR_STYLE)
            return
        stats, note = result
        tokens = f"{stats.tokens:,} tokens (teacher's tokenizer)" if stats.tokens is not None else note
        self.data.show_info(f"{stats.lines:,} lines · {stats.characters:,} characters · "
                            f"{stats.whitespace_tokens:,} words · {tokens}", TEXT_STYLE)
