"""The stage registry: a toy stage added through `register` alone reaches recipes, field-path errors,
`miniglot-cli estimate` and the pipeline (the Setup tab: tests/gui/test_setup_tab.py)."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
from conftest import recipe_toml
from huggingface_hub import ModelCard

from engine import cli, pipeline
from engine.configs import Stage, check
from engine.cost import StageCost
from engine.errors import RecipeError
from engine.events import Collect
from engine.recipe import Recipe
from engine.runfolder import RunFolder
from engine.stages import registry
from engine.stages.spec import FieldSpec, StageSpec


@dataclass(frozen=True)
class ToyStage(Stage):
    """Scales the word embeddings; keeps every size."""

    kind: ClassVar[str] = "toy"
    scale: float = 1.0
    seconds: float = 42.0

    def __post_init__(self) -> None:
        check(self.scale > 0, f"toy.scale = {self.scale} must be positive", "scale")


def toy_shape(cfg: ToyStage, before):
    check(before.hidden >= 16, "toy needs a hidden size of at least 16", "scale")
    return before


def toy_run(ctx):
    from engine.models.loading import LoadedModel
    from engine.stages.base import StageOutput

    net = copy.deepcopy(ctx.model.model)
    embeddings = ctx.model.adapter.embeddings(net).word_embeddings.weight
    embeddings.data.mul_(ctx.config.scale)
    ctx.log(f"scaled the word embeddings by {ctx.config.scale}")
    return StageOutput(LoadedModel(net, ctx.model.tokenizer, ctx.model.adapter, ctx.model.source),
                       {"scale": ctx.config.scale})


TOY = StageSpec(
    kind="toy", config=ToyStage, title="Toy scaling", tip="Scales the word embeddings.",
    fields=(FieldSpec("scale", "Scale", "float", "Factor for the word embeddings.", 0.01, 10.0),),
    shape=toy_shape, cost=lambda cfg, inputs: StageCost(123, cfg.seconds), run=toy_run, template=ToyStage())


@pytest.fixture()
def toy(monkeypatch):
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))  # the toy leaves with the test
    registry.register(TOY)
    return TOY


TOY_STAGES = """
[[stages]]
kind = "distill"
layers = 1
max_steps = 0
[[stages]]
kind = "toy"
scale = 2.0
"""


def test_a_registered_stage_parses_round_trips_and_names_its_field_on_errors(toy, tiny_models, corpus):
    recipe = Recipe.from_toml(recipe_toml(tiny_models["bert"], corpus, TOY_STAGES))
    assert isinstance(recipe.stages[1], ToyStage) and recipe.stages[1].scale == 2.0
    assert Recipe.from_toml(recipe.to_toml()) == recipe
    assert "toy" in registry.kinds()

    with pytest.raises(RecipeError) as bad:
        Recipe.from_toml(recipe_toml(tiny_models["bert"], corpus, TOY_STAGES.replace("2.0", "-1.0")))
    assert bad.value.path == "stages[2].scale" and bad.value.stage == 2 and bad.value.field == "scale"
    assert "must be positive" in str(bad.value)


def test_unregistered_kinds_are_refused_with_the_registered_ones(tiny_models, corpus):
    with pytest.raises(RecipeError) as bad:
        Recipe.from_toml(recipe_toml(tiny_models["bert"], corpus, TOY_STAGES))
    assert bad.value.path == "stages[2].kind"
    assert "choose one of trim_vocab, adapt, distill, prune, shrink" in str(bad.value)


def test_estimate_shows_the_registered_stage_with_its_cost(toy, tiny_models, corpus, tmp_path, capsys):
    path = tmp_path / "toy.toml"
    path.write_text(recipe_toml(tiny_models["bert"], corpus, TOY_STAGES), encoding="utf-8")

    assert cli.main(["estimate", str(path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [row["name"] for row in rows["stages"]]
    assert names == ["teacher", "01-distill", "02-toy"]
    toy_cost = next(row for row in rows["costs"] if row["name"] == "02-toy")
    assert toy_cost["seconds"] == 42.0


def test_the_cli_lists_every_registered_stage_with_its_settings(toy, capsys):
    assert cli.main(["stages", "--json"]) == 0
    listing = {stage["kind"]: stage for stage in json.loads(capsys.readouterr().out)}
    assert list(listing) == ["trim_vocab", "adapt", "distill", "prune", "shrink", "toy"]
    assert listing["toy"]["settings"]["scale"]["default"] == 1.0
    assert listing["shrink"]["settings"]["hidden"]["default"] == 312

    assert cli.main(["stages"]) == 0
    text = capsys.readouterr().out
    assert '[[stages]] kind = "toy" — Toy scaling' in text and "scale = 1.0 (0.01–10): Factor" in text
    assert "hidden = 312 (8–16,384)" in text


def test_shape_errors_of_a_registered_stage_carry_their_path(toy, tiny_models, corpus):
    from engine.estimate import stage_shapes
    from engine.shapes import Shape

    recipe = Recipe.from_toml(recipe_toml(tiny_models["bert"], corpus, TOY_STAGES))
    with pytest.raises(RecipeError) as bad:
        stage_shapes(recipe, Shape(layers=2, hidden=8, ffn=16, heads=2, vocab=100))
    assert bad.value.path == "stages[2].scale"
    assert str(bad.value).startswith("stages[2] (toy): toy needs a hidden size")


def test_the_pipeline_runs_saves_and_verifies_a_registered_stage(toy, tiny_models, corpus, tmp_path):
    import torch
    from transformers import AutoModel

    recipe = Recipe.from_toml(recipe_toml(tiny_models["bert"], corpus, TOY_STAGES), base_dir=tmp_path)
    sink = Collect()
    run_dir = pipeline.run(recipe, sink)

    folder = RunFolder(run_dir)
    manifest = folder.manifest().data
    assert [s["kind"] for s in manifest["stages"]] == ["distill", "toy"]
    assert manifest["stages"][1]["status"] == "completed" and manifest["stages"][1]["metrics"] == {"scale": 2.0}
    assert manifest["stages"][1]["verification"]  # reloaded in a fresh process and compared
    distilled = AutoModel.from_pretrained(folder.stage_dir(1, "distill") / "model")
    scaled = AutoModel.from_pretrained(folder.stage_dir(2, "toy") / "model")
    torch.testing.assert_close(scaled.embeddings.word_embeddings.weight,
                               2.0 * distilled.embeddings.word_embeddings.weight)
    assert any("scaled the word embeddings by 2.0" in getattr(e, "message", "") for e in sink.events)
    card = ModelCard.load(folder.stage_dir(2, "toy") / "model" / "README.md")
    assert "toy" in card.data.tags and "| 02-toy |  |" in card.text  # its kind as tag, no settings summary


def test_the_stages_that_train_are_those_with_training_settings(toy):
    assert [spec.kind for spec in registry.specs() if spec.trains] == ["adapt", "distill", "shrink"]


def test_register_refuses_a_spec_whose_config_names_another_kind():
    with pytest.raises(ValueError, match="kind"):
        registry.register(dataclasses.replace(TOY, kind="other"))


def test_reading_the_registry_and_estimating_imports_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = ("import sys; from engine.stages import registry; from engine.shapes import Shape; "
            "from engine.estimate import estimate; "
            "from engine.resources import DEFAULT_RECIPE; from engine.recipe import Recipe; "
            "registry.specs(); estimate(Recipe.load(DEFAULT_RECIPE), Shape(12, 384, 1536, 12, 250037)); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
