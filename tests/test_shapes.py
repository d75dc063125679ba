"""Parameter arithmetic (DESIGN.md §1) and recipe checks against the teacher's shape."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.errors import RecipeError
from engine.estimate import estimate, stage_shapes
from engine.recipe import Recipe
from engine.shapes import Shape

RECIPES = Path(__file__).resolve().parents[1] / "resources" / "recipes"
MBERT = Shape(layers=12, hidden=768, ffn=3072, heads=12, vocab=119547, positions=512, token_types=2,
              pooler=True, mlm_head=False)
XLMR = Shape(layers=12, hidden=768, ffn=3072, heads=12, vocab=250002, positions=514, token_types=1,
             pooler=True, mlm_head=False)


def paper_steps(shape: Shape) -> list[float]:
    """Totals in millions after each step of the paper's maximum recipe."""
    steps = [shape]
    for change in ({"layers": 6}, {"ffn": 2048}, {"hidden": 312}, {"vocab": 40000}):
        steps.append(dataclasses.replace(steps[-1], **change))
    return [round(s.total_params / 1e6, 1) for s in steps]


def test_design_arithmetic_mbert_and_xlmr():
    assert paper_steps(MBERT) == [177.9, 135.3, 125.9, 47.6, 22.8]
    assert paper_steps(XLMR) == [278.0, 235.5, 226.1, 88.3, 22.8]
    # the published parameter counts of the two checkpoints (AutoModel, with pooler)
    assert MBERT.total_params == 177_853_440
    assert XLMR.total_params == 278_043_648
    reduction = 1 - paper_steps(XLMR)[-1] / paper_steps(XLMR)[0]
    assert round(100 * reduction, 1) == 91.8


def test_components_against_a_real_model():
    from transformers import BertConfig, BertForMaskedLM, XLMRobertaConfig, XLMRobertaModel

    config = BertConfig(vocab_size=300, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=80, max_position_embeddings=64)
    mlm = BertForMaskedLM(config)
    shape = Shape.from_config(config, mlm_head=True, pooler=False)
    assert shape.total_params == sum(p.numel() for p in {id(p): p for p in mlm.parameters()}.values())
    assert shape.params()["embeddings"] == sum(p.numel() for p in mlm.bert.embeddings.parameters())
    config = XLMRobertaConfig(vocab_size=300, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=80, max_position_embeddings=66, type_vocab_size=1)
    encoder = XLMRobertaModel(config, add_pooling_layer=True)
    shape = Shape.from_config(config, mlm_head=False, pooler=True)
    assert shape.total_params == sum(p.numel() for p in encoder.parameters())


@pytest.mark.parametrize(("preset", "teacher", "millions", "first"), [
    ("mbert-maximum.toml", MBERT, [177.9, 116.8, 74.2, 64.8, 22.8], "01-trim_vocab"),
    ("xlmr-maximum.toml", XLMR, [278.0, 116.8, 74.2, 64.8, 22.8], "01-trim_vocab"),
    ("mbert-moderate.toml", MBERT, [177.9, 135.3, 125.9], "01-distill"),
])
def test_presets_estimate_the_papers_sizes(preset, teacher, millions, first):
    """The maximum presets trim the vocabulary first: other steps between, the same 22.8M at the end."""
    rows = estimate(Recipe.load(RECIPES / preset), teacher)
    assert [round(r["total_params"] / 1e6, 1) for r in rows] == millions
    assert [r["name"] for r in rows][:2] == ["teacher", first]
    assert rows[-1]["fp32_bytes"] == 4 * rows[-1]["total_params"] == 2 * rows[-1]["fp16_bytes"]
    assert rows[0]["percent_of_teacher"] == 100.0


def recipe(stages: str) -> Recipe:
    return Recipe.from_toml('[corpus]\ntrain = ["a.txt"]\n' + stages)


def shape_error(stages: str, teacher: Shape = MBERT) -> str:
    with pytest.raises(RecipeError) as info:
        stage_shapes(recipe(stages), teacher)
    return str(info.value)


def test_hidden_not_divisible_by_heads_suggests_neighbours():
    message = shape_error('[[stages]]\nkind = "shrink"\nhidden = 310\n')
    assert message.startswith("stages[1] (shrink): hidden = 310")
    assert "12 attention heads" in message and "try 300 or 312" in message
    # no zero-width suggestion below the head count
    message = shape_error('[[stages]]\nkind = "shrink"\nhidden = 8\n')
    assert "try 12" in message and "try 0" not in message
    # after a distill stage the index in the message moves along
    message = shape_error('[[stages]]\nkind = "distill"\n[[stages]]\nkind = "shrink"\nhidden = 100\n')
    assert message.startswith("stages[2] (shrink)") and "try 96 or 108" in message
    assert stage_shapes(recipe('[[stages]]\nkind = "shrink"\nhidden = 312\n'), MBERT)[-1].hidden == 312


def test_shrink_wider_than_model():
    assert "wider than the model (768)" in shape_error('[[stages]]\nkind = "shrink"\nhidden = 1020\n')


def test_more_layers_than_teacher():
    message = shape_error('[[stages]]\nkind = "distill"\nlayers = 13\n')
    assert "layers = 13 but the teacher has only 12" in message
    message = shape_error('[[stages]]\nkind = "distill"\nlayers = 4\n[[stages]]\nkind = "distill"\nlayers = 6\n')
    assert message.startswith("stages[2] (distill)") and "only 4" in message


def test_ffn_wider_than_teacher():
    message = shape_error('[[stages]]\nkind = "prune"\nffn = 4096\n')
    assert "ffn = 4096 is wider than the model's FFN (3072)" in message
    shapes = stage_shapes(recipe('[[stages]]\nkind = "prune"\nffn = 2048\n'), MBERT)
    assert shapes[-1].ffn == 2048


def test_vocab_sizes():
    assert "must exceed the 5 special tokens" in shape_error('[[stages]]\nkind = "trim_vocab"\nsize = 5\n')
    teacher = dataclasses.replace(MBERT, special_tokens=105)
    assert "the 105 special tokens" in shape_error('[[stages]]\nkind = "trim_vocab"\nsize = 100\n', teacher)
    message = shape_error('[[stages]]\nkind = "trim_vocab"\nsize = 119547\n')
    assert "not smaller than the vocabulary (119,547)" in message
    assert "not smaller" in shape_error('[[stages]]\nkind = "trim_vocab"\nsize = 300000\n')
    assert stage_shapes(recipe('[[stages]]\nkind = "trim_vocab"\nsize = 6\n'), MBERT)[-1].vocab == 6


def test_heads_must_equal_model_heads():
    message = shape_error('[[stages]]\nkind = "prune"\nheads = 8\n')
    assert "heads = 8" in message and "hidden / heads" in message
    assert "keep heads = 12" in message and "reloads" in message
    assert stage_shapes(recipe('[[stages]]\nkind = "prune"\nheads = 12\nffn = 2048\n'), MBERT)[-1].heads == 12


def test_adapt_adds_an_mlm_head():
    shapes = stage_shapes(recipe('[[stages]]\nkind = "adapt"\n'), MBERT)
    assert shapes[-1].mlm_head and not shapes[0].mlm_head
    # the decoder is tied to the embeddings: transform (h*h + h), LayerNorm (2h) and bias (vocab)
    assert shapes[-1].total_params - shapes[0].total_params == 768 * 768 + 768 + 2 * 768 + 119547


def test_a_max_length_past_the_teachers_positions_is_refused_with_its_path():
    short = dataclasses.replace(MBERT, positions=64)
    with pytest.raises(RecipeError) as info:
        stage_shapes(recipe('[[stages]]\nkind = "prune"\nffn = 2048\n'), short)  # max_length 128 by default
    assert info.value.path == "corpus.max_length"
    assert str(info.value) == "corpus.max_length = 128 but the teacher reads at most 64 tokens; use 64 or less"
