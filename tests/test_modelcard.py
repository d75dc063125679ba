"""Model cards: every stage model of a real tiny run gets a README.md in the Hugging Face card format,
refreshed with the scores of an evaluation without invalidating the evaluation cache."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import warnings
from pathlib import Path

import pytest
from conftest import recipe_toml
from huggingface_hub import ModelCard
from test_evaluation import TWO_STAGES, sentiment_folder

from engine import modelcard, pipeline
from engine.configs import EvaluationConfig
from engine.evaluate.runner import EvalPlan, evaluate, run_models
from engine.events import Collect
from engine.recipe import Recipe
from engine.runfolder import Manifest, folder_fingerprint


@pytest.fixture(scope="module")
def card_run(tmp_path_factory, tiny_models) -> Path:
    """A verified distill -> trim_vocab run for Swahili from a local teacher whose own card says apache-2.0."""
    from tiny import write_corpus

    root = tmp_path_factory.mktemp("card-run")
    teacher = root / "teacher"
    shutil.copytree(tiny_models["bert"], teacher)
    (teacher / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n\n# A teacher\n", encoding="utf-8")
    corpus = write_corpus(root / "corpus.txt", 200, seed=3)
    text = recipe_toml(teacher, corpus, TWO_STAGES) + '\n[language]\ncode = "swh_Latn"\n'
    return pipeline.run(Recipe.from_toml(text, root), Collect())


def stage_folders(run_dir: Path) -> list[Path]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return [run_dir / stage["model_dir"] for stage in manifest["stages"]]


def test_every_stage_model_has_a_card_with_its_lineage(card_run):
    manifest = json.loads((card_run / "manifest.json").read_text())
    assert [s["kind"] for s in manifest["stages"]] == ["distill", "trim_vocab"]
    for index, (stage, folder) in enumerate(zip(manifest["stages"], stage_folders(card_run), strict=True), start=1):
        assert stage["verification"]["problems"] == []  # verified with the card already in the folder
        card = ModelCard.load(folder / "README.md")
        meta = card.data.to_dict()
        assert meta["license"] == "apache-2.0"  # inherited from the local teacher's own card
        assert meta["language"] == ["sw"]
        assert "base_model" not in meta  # a local folder is no hub id
        assert meta["pipeline_tag"] == "fill-mask" and meta["library_name"] == "transformers"
        assert "model-index" not in meta  # not evaluated yet
        lineage = meta["miniglot"]
        assert lineage["stage"] == index and lineage["kind"] == stage["kind"]
        assert lineage["params"] == stage["params"] and lineage["teacher_params"] == manifest["teacher"]["params"]
        assert lineage["fidelity"] == pytest.approx(stage["quality"]["fidelity"])  # written after it was measured
        assert lineage["flores_code"] == "swh_Latn" and lineage["seed"] == manifest["seed"]
        for earlier in manifest["stages"][:index]:
            assert f"| {_percent(earlier['params'], manifest['teacher']['params'])} |" in card.text
        assert f"transformers {manifest['versions']['transformers']}" in card.text
    last = ModelCard.load(stage_folders(card_run)[1] / "README.md")
    assert {"knowledge-distillation", "vocabulary-trimming"} <= set(last.data.tags)
    assert "| 01-distill | 2 layers (last_k, init teacher), mse loss, 3 steps at lr 5e-05 |" in last.text
    assert "| 02-trim_vocab | vocabulary 150 |" in last.text


def _percent(params: int, teacher: int) -> str:
    return f"{100 * params / teacher:.1f}%"


def test_a_stage_folder_with_its_card_loads_without_warnings(card_run, caplog):
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    try:
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            for folder in stage_folders(card_run):
                _, info = AutoModelForMaskedLM.from_pretrained(folder, output_loading_info=True)
                AutoTokenizer.from_pretrained(folder)
                assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    finally:
        hf_logging.disable_propagation()
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_evaluation_puts_scores_in_the_cards_and_keeps_the_cache(tmp_path, card_run, monkeypatch):
    from engine.evaluate import probe as probe_module

    data = sentiment_folder(tmp_path)
    folders = stage_folders(card_run)
    before = {f: (folder_fingerprint(f), (f / "README.md").read_text()) for f in folders}
    calls = []
    real = probe_module.probe
    monkeypatch.setattr(probe_module, "probe", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    plan = EvalPlan(tuple(run_models(card_run)), EvaluationConfig(tasks=("sentiment",), data=(str(data),), seeds=1,
                                                                  mode="probe", speed=False, intrinsic=False))
    summary = evaluate(plan, card_run / "eval", Collect())
    assert len(calls) == 3  # teacher and two students
    means = {(r["model"], r["metric"]): r["mean"] for r in summary["results"]}
    for folder, name in zip(folders, ("01-distill", "02-trim_vocab"), strict=True):
        card = ModelCard.load(folder / "README.md")
        assert card.text != before[folder][1]
        assert folder_fingerprint(folder) == before[folder][0]  # the new card changed no model identity
        (index,) = card.data.to_dict()["model-index"]
        scores = {m["name"]: m["value"] for result in index["results"] for m in result["metrics"]}
        assert scores == {metric: pytest.approx(means[(name, metric)], abs=1e-4)
                          for metric in ("accuracy", "macro_f1")}
        assert {r["dataset"]["name"] for r in index["results"]} == {data.name}
        share = 100 * means[(name, "accuracy")] / means[("teacher", "accuracy")]
        assert f"| sentiment | {data.name} | probe | accuracy | {100 * means[(name, 'accuracy')]:.1f} ± " in card.text
        assert f"| {share:.1f}% |" in card.text
    again = evaluate(plan, card_run / "eval", Collect())
    assert len(calls) == 3 and again["results"] == summary["results"]  # every result came from the cache


def test_a_card_that_cannot_be_written_is_reported_not_fatal(card_run, monkeypatch):
    def refuse(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(modelcard, "atomic_write_text", refuse)
    student = stage_folders(card_run)[0]
    outside = card_run.parent / "teacher"
    summary = {"teacher": "teacher", "results": [], "models": [
        {"name": "teacher", "path": str(outside)}, {"name": "01-distill", "path": str(student)}]}
    (problem,) = modelcard.refresh_cards(summary)  # the teacher is no run's stage: left alone
    assert str(student) in problem and "Permission denied" in problem


def test_folder_fingerprint_ignores_the_card_only(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "README.md").write_text("part of the model")
    first = folder_fingerprint(tmp_path)
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n")
    (tmp_path / ".README.md.x1.tmp").write_text("a card being rewritten")
    assert folder_fingerprint(tmp_path) == first
    (tmp_path / "sub" / "README.md").write_text("changed")
    assert folder_fingerprint(tmp_path) != first
    (tmp_path / "config.json").write_text('{"a": 1}')
    assert folder_fingerprint(tmp_path) != first


@pytest.mark.parametrize(("code", "iso"), [("mlt_Latn", "mt"), ("swh_Latn", "sw"), ("nya_Latn", "ny"),
                                           ("zsm_Latn", "ms"), ("ace_Latn", "ace"), ("yue_Hant", "yue")])
def test_flores_codes_map_to_iso_639(code, iso):
    assert modelcard.iso639(code) == iso


def test_the_iso_mapping_covers_flores_codes_only():
    from engine.resources import LANGUAGES_FILE

    flores = {line.split("_")[0] for line in LANGUAGES_FILE.read_text(encoding="utf-8").splitlines()}
    assert set(modelcard.ISO_639_1) <= flores
    assert all(len(code) == 2 and code.isalpha() and code.islower() for code in modelcard.ISO_639_1.values())


def test_teacher_license_and_base_model(tmp_path):
    e5 = modelcard.teacher_of("packaged:multilingual-e5-small")
    assert (e5.base_model, e5.license) == ("intfloat/multilingual-e5-small", {"license": "mit"})
    minilm = modelcard.teacher_of("packaged:all-minilm-l6-v2")
    assert (minilm.base_model, minilm.license) == ("sentence-transformers/all-MiniLM-L6-v2", {"license": "apache-2.0"})
    offline = modelcard.teacher_of("hub:someone/not-cached-model@v1")  # no cached card, no network
    assert (offline.name, offline.base_model, offline.license) == (
        "hub:someone/not-cached-model@v1", "someone/not-cached-model", {"license": "unknown"})
    folder = tmp_path / "my-teacher"
    folder.mkdir()
    assert modelcard.teacher_of(str(folder)).license == {"license": "unknown"}
    (folder / "README.md").write_text("---\nlicense: other\nlicense_name: acme\nlicense_link: LICENSE\n---\nx")
    local = modelcard.teacher_of(str(folder))
    assert (local.name, local.base_model) == ("my-teacher", None)  # no local directories in a card
    assert local.license == {"license": "other", "license_name": "acme", "license_link": "LICENSE"}
    (folder / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    assert modelcard.teacher_of(str(folder)).license == {"license": "unknown"}


def test_an_unknown_license_is_said_in_the_card(card_run, tmp_path):
    recipe = Recipe.load(card_run / "recipe.toml")
    bare = tmp_path / "bare-teacher"
    bare.mkdir()
    recipe = recipe.replace(teacher=dataclasses.replace(recipe.teacher, source=str(bare)))
    text = modelcard.render_card(recipe, Manifest.load(card_run).data, card_run.name, 1, fill_mask=False)
    card = ModelCard(text)
    assert card.data.license == "unknown" and card.data.pipeline_tag == "feature-extraction"
    assert "Check the teacher's license before you use or share this model" in card.text
    assert str(tmp_path) not in text and str(card_run.parent) not in text  # names, not where they lie
