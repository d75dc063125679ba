"""Sentence-embedder folders: the layout read from a teacher and written into students loads with
sentence-transformers in a fresh process and gives MiniGlot's own embeddings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny import sentences, st_encode, tiny_model_dir

from engine.errors import ModelError
from engine.models.embedder import (
    MAP_DIR,
    Embedder,
    TeacherMap,
    embed,
    fit_teacher_map,
    read_embedder,
    write_embedder,
)
from engine.runfolder import Manifest

pytest.importorskip("sentence_transformers", reason="sentence-transformers is an optional extra (embeddings)")

TEXTS = sentences(12, seed=5)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny sentence embedder: mean pooling, a Dense layer with tanh, then normalisation."""
    from safetensors.torch import save_file

    folder = tiny_model_dir(tmp_path_factory.mktemp("embedder") / "teacher", mlm_head=False, hidden=64)
    write_embedder(folder, Embedder("mean", folder, (("Normalize", ""),)), 64)  # pooling, normalisation
    modules = json.loads((folder / "modules.json").read_text())
    dense = folder / "2_Dense"
    dense.mkdir()
    (dense / "config.json").write_text(json.dumps({"in_features": 64, "out_features": 48, "bias": True,
                                                   "activation_function": "torch.nn.modules.activation.Tanh"}))
    torch.manual_seed(1)
    save_file({"linear.weight": torch.randn(48, 64) / 8, "linear.bias": torch.randn(48) / 8},
              str(dense / "model.safetensors"))
    modules[2:] = [{"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
                   {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}]
    shutil.move(folder / "2_Normalize", folder / "3_Normalize")
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "query: "}}))
    return folder


def _encoder(folder: Path):
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_the_teacher_layout_is_read_and_matches_sentence_transformers(teacher):
    embedder = read_embedder(teacher)
    assert embedder == Embedder("mean", teacher, (("Dense", "2_Dense"), ("Normalize", "3_Normalize")),
                                {"query": "query: "})
    assert embedder.normalized
    model, tokenizer = _encoder(teacher)
    ours = embed(model, tokenizer, TEXTS, embedder, prompt="query: ")
    assert ours.shape == (len(TEXTS), 48)
    assert torch.allclose(ours, st_encode(teacher, TEXTS, "query: "), atol=1e-5)


def _stored_map(folder: Path) -> TeacherMap | None:
    from safetensors.torch import load_file

    path = folder / MAP_DIR / "model.safetensors"
    if not path.is_file():
        return None
    weights = load_file(str(path))
    return TeacherMap(weights["linear.weight"].T, weights["linear.bias"])


def test_a_narrower_student_maps_into_the_teacher_space_in_a_fresh_process(teacher, tmp_path):
    embedder = read_embedder(teacher)
    student = tiny_model_dir(tmp_path / "student", mlm_head=False, hidden=32, heads=4, seed=3)
    to_teacher = TeacherMap(torch.randn(32, 64) / 8, torch.randn(64) / 8)
    write_embedder(student, embedder, 32, to_teacher)
    stored = _stored_map(student)
    assert torch.equal(stored.weight, to_teacher.weight) and torch.equal(stored.bias, to_teacher.bias)
    assert (student / "config_sentence_transformers.json").is_file() and _stored_map(teacher) is None
    model, tokenizer = _encoder(student)
    ours = embed(model, tokenizer, TEXTS, embedder, to_teacher)
    theirs = st_encode(student, TEXTS)
    assert theirs.shape == (len(TEXTS), 48)  # the teacher's embedding width
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(embed(model, tokenizer, TEXTS, read_embedder(student)), theirs, atol=1e-5)
    listing = [m["path"] for m in json.loads((student / "modules.json").read_text())]
    assert listing == ["", "1_Pooling", MAP_DIR, "3_Dense", "4_Normalize"]


def test_the_map_onto_the_teacher_is_a_least_squares_fit():
    torch.manual_seed(0)
    student = torch.randn(500, 12)
    true = TeacherMap(torch.randn(12, 20), torch.randn(20))
    fitted = fit_teacher_map(student, true(student), ridge=1e-6)
    assert torch.allclose(fitted.weight, true.weight, atol=1e-3) and torch.allclose(fitted.bias, true.bias, atol=1e-3)
    noisy = true(student) + 0.1 * torch.randn(500, 20)
    residual = (fit_teacher_map(student, noisy)(student) - noisy).pow(2).mean()
    assert residual < 0.011  # no worse than the noise it cannot explain (0.01)


@pytest.mark.parametrize(("modules", "pooling", "needle"), [
    ([("Transformer", "")], None, "followed by Pooling"),
    ([("Pooling", "1_Pooling"), ("Transformer", "")], None, "followed by Pooling"),
    ([("Transformer", ""), ("Pooling", "1_Pooling"), ("LayerNorm", "2_LayerNorm")], {"pooling_mode_mean_tokens": True},
     "modules ['LayerNorm'] after pooling are not supported"),
    ([("Transformer", ""), ("Pooling", "1_Pooling")], {"pooling_mode_weightedmean_tokens": True},
     "pooling into students, not ['pooling_mode_weightedmean_tokens']"),
])
def test_layouts_a_student_cannot_carry_are_refused_in_one_line(tmp_path, modules, pooling, needle):
    listing = [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
               for i, (kind, path) in enumerate(modules)]
    (tmp_path / "modules.json").write_text(json.dumps(listing))
    if pooling is not None:
        (tmp_path / "1_Pooling").mkdir()
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(ModelError) as caught:
        read_embedder(tmp_path)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_a_folder_without_modules_is_no_embedder(tmp_path):
    assert read_embedder(tmp_path) is None
    (tmp_path / "modules.json").write_text("{not json")
    with pytest.raises(ModelError, match="not a sentence-transformers module list"):
        read_embedder(tmp_path)


def test_every_stage_of_an_embedding_teachers_run_is_a_sentence_transformers_model(tmp_path, teacher, one_thread):
    from conftest import four_stages, recipe_toml

    from engine import pipeline
    from engine.events import Collect
    from engine.recipe import Recipe

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences(240, seed=1)) + "\n", encoding="utf-8")
    text = recipe_toml(teacher, corpus, four_stages("mse", shrink_init="svd"), verify=False)
    run_dir = pipeline.run(Recipe.from_toml(text, tmp_path), Collect())
    folders = [run_dir / s["model_dir"] for s in json.loads((run_dir / "manifest.json").read_text())["stages"]]
    maps = [_stored_map(f) for f in folders]  # distill, prune, shrink (64 -> 32), trim_vocab: each fitted
    assert [tuple(m.weight.shape) for m in maps] == [(64, 64), (64, 64), (32, 64), (32, 64)]
    final = folders[-1]
    model, tokenizer = _encoder(final)
    ours = embed(model, tokenizer, TEXTS, read_embedder(final), prompt="query: ")
    assert ours.shape == (len(TEXTS), 48)  # the teacher's embedding width, through its own Dense layer
    assert torch.allclose(ours, st_encode(final, TEXTS, "query: "), atol=1e-5)
    card = (final / "README.md").read_text(encoding="utf-8")
    assert "SentenceTransformer(" in card and "`query: ` (query)" in card and "sentence-similarity" in card

    manifest = Manifest.load(run_dir)  # the last stage again on resume: the map is read back
    manifest.set_stage(4, status="pending")
    shutil.rmtree(final)
    pipeline.run(None, Collect(), resume=run_dir)
    assert torch.equal(_stored_map(final).weight, maps[-1].weight)  # fitted again the same way


def _parallel_recipe(tmp_path: Path, teacher: Path, index_lines: list[str], **run: object) -> str:
    from conftest import recipe_toml

    corpus, validation, parallel = tmp_path / "corpus.txt", tmp_path / "val.txt", tmp_path / "val.mt"
    corpus.write_text("\n".join(sentences(240, seed=1)) + "\n", encoding="utf-8")
    validation.write_text("\n".join(sentences(30, seed=8)) + "\n", encoding="utf-8")
    parallel.write_text("\n".join(index_lines) + "\n", encoding="utf-8")
    stages = '[[stages]]\nkind = "shrink"\nhidden = 32\ninit = "svd"\nmax_steps = 2\nbatch_size = 8\n'
    return recipe_toml(teacher, corpus, stages, verify=False, **run).replace(
        "validation = 0.1", f'validation = ["{validation}"]\nparallel = "{parallel}"')


def test_a_parallel_validation_file_gives_each_stage_a_retrieval_score(tmp_path, teacher, one_thread):
    from engine import pipeline
    from engine.events import Collect, Metric
    from engine.recipe import Recipe

    texts = sentences(30, seed=8)
    sink = Collect()
    run_dir = pipeline.run(Recipe.from_toml(_parallel_recipe(tmp_path, teacher, texts), tmp_path), sink)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["teacher"]["retrieval"]["top1"] == 1.0  # the teacher finds its own sentences
    quality = manifest["stages"][0]["quality"]
    assert 0 <= quality["retrieval_top1"] <= 1 and 0 < quality["retrieval_mrr"] <= 1
    assert [e.value for e in sink.of(Metric) if e.name == "retrieval_top1"] == [quality["retrieval_top1"]]


def test_without_the_sentence_layout_a_stage_is_a_plain_model_still_scored_by_retrieval(tmp_path, teacher,
                                                                                     one_thread):
    from engine import pipeline
    from engine.events import Collect
    from engine.recipe import Recipe

    text = _parallel_recipe(tmp_path, teacher, sentences(30, seed=8), sentence_layout=False)
    run_dir = pipeline.run(Recipe.from_toml(text, tmp_path), Collect())
    stage = json.loads((run_dir / "manifest.json").read_text())["stages"][0]
    assert not (run_dir / stage["model_dir"] / "modules.json").exists()
    assert 0 <= stage["quality"]["retrieval_top1"] <= 1  # the map onto the teacher is still fitted for the score


def test_a_parallel_file_that_does_not_pair_up_is_refused_before_the_run(tmp_path, teacher):
    from engine import pipeline
    from engine.errors import RecipeError
    from engine.events import Collect
    from engine.recipe import Recipe

    with pytest.raises(RecipeError) as caught:
        pipeline.run(Recipe.from_toml(_parallel_recipe(tmp_path, teacher, ["one", "two"]), tmp_path), Collect())
    assert caught.value.path == "corpus.parallel" and "val.txt has 30 lines but" in str(caught.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    text = _parallel_recipe(tmp_path, teacher, sentences(30, seed=8)).replace(
        f'validation = ["{tmp_path / "val.txt"}"]', "validation = 0.1")
    with pytest.raises(RecipeError, match=r"give corpus\.validation as one file"):
        Recipe.from_toml(text, tmp_path)
