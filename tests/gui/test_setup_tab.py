"""SetupTab: recipe round trip, live budget, field validation, language search, background inspection."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from engine.errors import RecipeError
from engine.recipe import Recipe
from engine.shapes import Shape
from gui.setup_tab import SetupTab
from gui.teachers import known_shape

RECIPES = Path(__file__).resolve().parents[2] / "resources" / "recipes"


class Recorder:
    """A background runner that only records what it was asked to run."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, fn, *args, on_done):
        self.calls.append((fn, args, on_done))


def synchronous(fn, *args, on_done):
    on_done(fn(*args))


@pytest.fixture()
def recorder():
    return Recorder()


@pytest.fixture()
def tab(qtbot, recorder):
    widget = SetupTab(run_in_background=recorder)
    qtbot.addWidget(widget)
    widget.set_recipe(Recipe.load(RECIPES / "offline-default.toml"))
    return widget


def shrink_row(tab: SetupTab) -> dict:
    return next(row for row in tab.budget.rows() if row["name"].endswith("shrink"))


@pytest.mark.parametrize("name", ["offline-default.toml", "mbert-maximum.toml", "xlmr-moderate.toml"])
def test_set_recipe_then_recipe_round_trips(tab, name):
    recipe = Recipe.load(RECIPES / name)
    tab.set_recipe(recipe)

    assert tab.is_valid()
    assert tab.recipe() == recipe
    assert tab.recipe().to_toml() == recipe.to_toml()
    assert tab.recipe().base_dir == recipe.base_dir
    distill = next(s for s in recipe.stages if s.kind == "distill")
    assert tab.field("distill", "layer_selection").currentText() == distill.layer_selection
    assert tab.field("distill", "layers").value() == distill.layers
    assert tab.stage_boxes["shrink"].isChecked() == any(s.kind == "shrink" for s in recipe.stages)
    assert tab.language_combo.currentText().startswith(recipe.language.code)


def test_evaluation_and_task_models_survive_the_form(tab):
    from engine.configs import EvaluationConfig, TaskModelConfig

    recipe = Recipe.load(RECIPES / "offline-default.toml").replace(
        evaluation=EvaluationConfig(tasks=("pos",), data=("/data/ud",), seeds=1),
        task_models=(TaskModelConfig("ner", "/data/ner"),))
    tab.set_recipe(recipe)
    assert tab.recipe().evaluation == recipe.evaluation
    assert tab.recipe().task_models == recipe.task_models


def test_a_translated_validation_file_is_chosen_kept_and_given_up(tab, monkeypatch, tmp_path):
    """Translations… sets the validation file and its line-by-line translation (the retrieval score each stage
    records); a recipe with them round-trips; Use a fraction gives the fraction back."""
    import dataclasses

    from PySide6.QtWidgets import QFileDialog

    from engine.configs import CorpusConfig

    recipe = Recipe.load(RECIPES / "offline-default.toml")
    swh, mlt = str(tmp_path / "swh_Latn.dev"), str(tmp_path / "mlt_Latn.dev")
    answers = iter([(swh, ""), (mlt, "")])
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *args, **kwargs: next(answers))
    data = tab.data
    data.pair_button.click()
    assert tab.recipe().corpus == dataclasses.replace(recipe.corpus, validation=(swh,), parallel=mlt)
    assert not data.validation_spin.isEnabled() and mlt in data.validation_note.text()

    data.unpair_button.click()
    assert tab.recipe().corpus == recipe.corpus and data.validation_spin.isEnabled()

    paired = recipe.replace(corpus=CorpusConfig(train=recipe.corpus.train, validation=(swh,), parallel=mlt))
    tab.set_recipe(paired)
    assert tab.recipe().corpus == paired.corpus


def test_paper_preset_budget_is_instant_from_known_shape(tab):
    tab.set_recipe(Recipe.load(RECIPES / "mbert-maximum.toml"))

    rows = tab.budget.rows()
    assert [r["name"] for r in rows] == ["teacher", "01-trim_vocab", "02-distill", "03-prune", "04-shrink"]
    assert round(rows[0]["total_params"] / 1e6, 1) == 177.9
    assert round(rows[-1]["total_params"] / 1e6, 1) == 22.8
    assert "87.2% smaller" in tab.budget.summary.text()


def test_changing_hidden_changes_the_budget(tab, qtbot):
    assert tab.field("shrink", "hidden").value() == 264
    before = shrink_row(tab)
    bars_before = list(tab.budget.bars["encoder"].opts["height"])
    summary_before = tab.budget.summary.text()

    with qtbot.waitSignal(tab.recipe_changed, timeout=2000) as blocker:
        tab.field("shrink", "hidden").setValue(96)

    assert blocker.args[0].stages[-1].hidden == 96
    after = shrink_row(tab)
    assert after["shape"]["hidden"] == 96
    assert after["total_params"] < before["total_params"] / 1.8
    assert list(tab.budget.bars["encoder"].opts["height"]) != bars_before
    assert tab.budget.summary.text() != summary_before
    assert tab.budget.table.item(4, 1).text() == f"{after['total_params'] / 1e6:,.1f}M"


def test_invalid_hidden_is_flagged_and_fixing_it_clears_the_flag(tab, qtbot):
    hidden = tab.field("shrink", "hidden")
    with qtbot.waitSignal(tab.valid_changed, timeout=2000) as blocker:
        hidden.setValue(100)  # 12 heads: not divisible

    assert blocker.args == [False]
    assert not tab.is_valid()
    assert hidden.property("invalid") is True
    assert "border" in hidden.parentWidget().styleSheet()
    error = tab.stage_boxes["shrink"].error
    assert not error.isHidden() and "not divisible by the 12 attention heads" in error.text()
    assert "try 96 or 108" in hidden.toolTip()
    with pytest.raises(RecipeError, match="divisible"):
        tab.recipe()

    with qtbot.waitSignal(tab.valid_changed, timeout=2000) as blocker:
        hidden.setValue(108)

    assert blocker.args == [True]
    assert tab.is_valid() and tab.recipe().stages[-1].hidden == 108
    assert not hidden.property("invalid") and hidden.parentWidget().styleSheet() == ""
    assert tab.stage_boxes["shrink"].error.isHidden()


def test_layers_beyond_the_teacher_are_flagged_on_the_layers_field(tab, qtbot):
    with qtbot.waitSignal(tab.valid_changed, timeout=2000) as blocker:
        tab.field("distill", "layers").setValue(13)
    assert blocker.args == [False]
    assert tab.field("distill", "layers").property("invalid") is True
    assert not tab.field("distill", "layer_selection").property("invalid")
    assert "teacher has only 12" in tab.stage_boxes["distill"].error.text()


def test_language_search_by_name_or_code(tab):
    completer = tab.language_combo.completer()
    completer.setCompletionPrefix("maltese")
    assert completer.completionCount() == 1
    assert completer.currentCompletion() == "mlt_Latn — Maltese"
    completer.setCompletionPrefix("Latn")
    assert completer.completionCount() > 100

    tab.language_combo.setEditText("mlt_Latn — Maltese")
    assert tab.recipe().language.code == "mlt_Latn"
    tab.language_combo.setEditText("Swahili")
    assert tab.recipe().language.code == "swh_Latn"
    tab.language_combo.setEditText("Klingon")
    assert not tab.is_valid()
    assert tab.language_combo.count() == 204


def test_switching_stages_off_and_on(tab, qtbot):
    with qtbot.waitSignal(tab.recipe_changed, timeout=2000) as blocker:
        tab.stage_boxes["trim_vocab"].setChecked(False)
    assert [s.kind for s in blocker.args[0].stages] == ["distill", "prune", "shrink"]
    assert len(tab.budget.rows()) == 4

    with qtbot.waitSignal(tab.recipe_changed, timeout=2000) as blocker:
        tab.stage_boxes["adapt"].setChecked(True)
    assert [s.kind for s in blocker.args[0].stages] == ["adapt", "distill", "prune", "shrink"]
    assert tab.budget.rows()[1]["name"] == "01-adapt"

    with qtbot.waitSignal(tab.recipe_changed, timeout=2000) as blocker:
        tab.stage_boxes["trim_vocab"].setChecked(True)
    assert [s.kind for s in blocker.args[0].stages] == ["trim_vocab", "adapt", "distill", "prune", "shrink"]


def test_presets_combo_lists_every_recipe_and_loads_one(tab, qtbot):
    combo = tab.preset_combo
    names = [combo.itemText(i).split(" — ")[0] for i in range(1, combo.count())]
    assert names == sorted(p.stem for p in RECIPES.glob("*.toml"))
    index = names.index("xlmr-maximum") + 1
    assert "XLM-R base" in combo.itemData(index, Qt.ItemDataRole.ToolTipRole)

    with qtbot.waitSignal(tab.recipe_changed, timeout=2000) as blocker:
        combo.activated.emit(index)
    assert blocker.args[0] == Recipe.load(RECIPES / "xlmr-maximum.toml")
    assert Path(blocker.args[0].base_dir) == Path.cwd()  # as `preset:xlmr-maximum` opens it, not the install
    assert tab.teacher_combo.currentData() == "hub:FacebookAI/xlm-roberta-base"
    assert "91.8% smaller" in tab.budget.summary.text()


def test_teacher_inspection_and_corpus_counts_run_in_the_background(qtbot, make_recipe, tiny_teacher):
    from gui.worker import live_workers

    tab = SetupTab()  # the real gui.worker runner
    qtbot.addWidget(tab)
    recipe = make_recipe()
    tab.set_recipe(recipe)

    assert "Inspecting" in tab.teacher_info.text()
    qtbot.waitUntil(lambda: "parameters" in tab.teacher_info.text(), timeout=60_000)
    qtbot.waitUntil(lambda: "tokens (teacher's tokenizer)" in tab.corpus_info.text(), timeout=60_000)
    qtbot.waitUntil(lambda: not live_workers(), timeout=30_000)

    shape = tab.teacher_shape()
    assert isinstance(shape, Shape) and shape.hidden == 64 and shape.mlm_head
    assert tab.budget.rows()[0]["total_params"] == shape.total_params
    assert tab.teacher_combo.currentData() == str(tiny_teacher)
    assert tab.corpus_info.text().startswith("240 lines")
    assert tab.recipe() == recipe


def test_offline_hub_teacher_error_is_inline_and_budget_uses_known_shape(qtbot, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tab = SetupTab(run_in_background=synchronous)
    qtbot.addWidget(tab)
    tab.set_recipe(Recipe.load(RECIPES / "xlmr-moderate.toml"))

    assert "Cannot inspect the teacher" in tab.teacher_info.text()
    assert "standard shape" in tab.teacher_info.text()
    assert tab.is_valid()
    assert tab.budget.rows()[0]["total_params"] == known_shape("hub:FacebookAI/xlm-roberta-base").total_params


def test_a_late_answer_for_a_previous_teacher_is_ignored(tab, recorder):
    tab.set_recipe(Recipe.load(RECIPES / "mbert-moderate.toml"))
    inspections = [call for call in recorder.calls if call[1][1].__name__ == "inspect_teacher"]
    _, (key, *_), on_done = inspections[-1]
    assert key == ("hub:google-bert/bert-base-multilingual-cased", False)
    tab.set_recipe(Recipe.load(RECIPES / "xlmr-moderate.toml"))

    on_done((key, ("bert", Shape(2, 64, 128, 4, 1000)), ""))

    assert tab.teacher_shape() == known_shape("hub:FacebookAI/xlm-roberta-base")
    assert "Inspecting" in tab.teacher_info.text()
    assert "standard shape" in tab.budget.message.text()


def test_a_registered_stage_gets_a_box_and_joins_the_recipe(qtbot, recorder, monkeypatch):
    from test_registry import TOY, ToyStage

    from engine.stages import registry

    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))  # the toy leaves with the test
    registry.register(TOY)
    tab = SetupTab(run_in_background=recorder)
    qtbot.addWidget(tab)
    tab.set_recipe(Recipe.load(RECIPES / "offline-default.toml"))
    box = tab.stage_boxes["toy"]
    assert box.title() == "Toy scaling" and not box.isChecked()
    assert tab.field("toy", "scale").value() == 1.0

    tab.field("toy", "scale").setValue(2.5)
    with qtbot.waitSignal(tab.recipe_changed, timeout=2000) as blocker:
        box.setChecked(True)
    assert blocker.args[0].stages[-1] == ToyStage(scale=2.5)
    assert tab.budget.rows()[-1]["name"] == "05-toy"


def test_a_shape_error_flags_the_field_its_path_names(tab, qtbot):
    size = tab.field("trim_vocab", "size")
    with qtbot.waitSignal(tab.valid_changed, timeout=2000) as blocker:
        size.setValue(300_000)  # more than the teacher's 250,037 pieces

    assert blocker.args == [False]
    assert size.property("invalid") is True
    assert not tab.field("trim_vocab", "fill").property("invalid")
    assert "not smaller than the vocabulary" in tab.stage_boxes["trim_vocab"].error.text()
    with pytest.raises(RecipeError) as error:
        tab.recipe()
    assert error.value.path == "stages[1].size"


def test_the_teacher_choices_come_from_the_engine_catalogue(tab):
    from engine.models.packaged import PACKAGED_MODELS

    combo = tab.teacher_combo
    sources = [combo.itemData(i) for i in range(combo.count())]
    assert sources[: len(PACKAGED_MODELS)] == [f"packaged:{name}" for name in PACKAGED_MODELS]
    tips = [combo.itemData(i, Qt.ItemDataRole.ToolTipRole) for i in range(len(PACKAGED_MODELS))]
    assert tips == [model.description for model in PACKAGED_MODELS.values()]


def test_a_packaged_teachers_standard_shape_is_the_shape_inspection_reads():
    from gui.setup_tasks import inspect_teacher

    source = "packaged:all-minilm-l6-v2"  # a plain folder inside its wheel: inspected without converting
    assert inspect_teacher(source, False)[1] == known_shape(source)


def test_plan_tries_allocations_and_its_winner_fills_the_stages(qtbot, make_recipe, tmp_path):
    widget = SetupTab(run_in_background=synchronous)
    qtbot.addWidget(widget)
    widget.set_recipe(make_recipe(steps=8, shrink_steps=8))
    teacher = widget.teacher_shape()
    dialog = widget.open_plan()
    qtbot.addWidget(dialog)
    assert dialog.use_button.isEnabled() is False
    dialog.rank.setCurrentIndex(dialog.rank.findData("topic"))  # ranked by a probe: it needs labelled data
    assert not dialog.plan_button.isEnabled() and dialog.probe_data.isEnabled()
    dialog.probe_data.setText(str(tmp_path / "sib200"))
    assert dialog.plan_button.isEnabled() and dialog.probe == ("topic", str(tmp_path / "sib200"))
    dialog.rank.setCurrentIndex(0)  # by fidelity
    assert dialog.probe is None and not dialog.probe_data.isEnabled()
    dialog.target.setValue(0.5 * teacher.total_params / 1e6)  # half the depth and narrower
    dialog.budget.setValue(0)  # one trial
    dialog.out.setText(str(tmp_path / "planned.toml"))
    with qtbot.waitSignal(dialog.worker.finished if dialog.start() else None, timeout=300_000):
        assert dialog.is_running() and not dialog.plan_button.isEnabled()
    rows = dialog.result["candidates"]
    winner = next(row for row in rows if row["name"] == dialog.result["winner"])
    assert dialog.table.rowCount() == len(rows) == 2  # without a probe: the recipe's own depth and selection
    assert [row["status"] for row in rows].count("tried") == 1
    assert "plan: trying" in dialog.log.toPlainText() and dialog.use_button.isEnabled()
    with qtbot.waitSignal(dialog.planned):
        dialog.use_button.click()
    recipe = widget.recipe()
    distill = next(stage for stage in recipe.stages if stage.kind == "distill")
    assert (distill.layers, distill.layer_selection) == (winner["layers"], winner["selection"])
    trimmed = ["trim_vocab"] if winner["vocab"] < teacher.vocab else []
    pruned = ["prune"] if winner["ffn"] < teacher.ffn else []
    assert [stage.kind for stage in recipe.stages] == [*trimmed, "distill", *pruned, "shrink"]  # replaced the form's
    assert next(stage for stage in recipe.stages if stage.kind == "shrink").hidden == winner["hidden"] < 64
    assert [point.name for point in dialog.chart.shown] == ["teacher", f"trial {winner['name']}  ← winner"]
    assert recipe.plan.winner == winner["name"]  # the form keeps how its stages were chosen ...
    widget.field("distill", "max_steps").setValue(9)
    assert widget.recipe().plan is None  # ... until they are edited
