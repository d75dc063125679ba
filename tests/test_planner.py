"""The planner: candidates that meet a size target for BERT and XLM-R shapes, an impossible target refused with
the smallest reachable size, a planned recipe that is valid and within the target, and a killed plan that
continues without repeating its finished trials."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import recipe_toml

from engine import pipeline
from engine.errors import Cancelled, RecipeError
from engine.estimate import stage_shapes
from engine.events import CancelToken, Collect, Log, Progress, RunFinished
from engine.models.loading import source_shape
from engine.planner import Probe, candidates, label_free, own_allocation, params_of, plan, smallest_allocation
from engine.recipe import Recipe
from engine.resources import DEFAULT_RECIPE
from engine.runfolder import Manifest
from engine.shapes import Shape

REPO = Path(__file__).resolve().parents[1]
SHAPES = {  # the paper's teachers, as their configs give them
    "mbert": Shape(layers=12, hidden=768, ffn=3072, heads=12, vocab=119_547, pooler=True, mlm_head=True),
    "xlmr": Shape(layers=12, hidden=768, ffn=3072, heads=12, vocab=250_002, positions=514, token_types=1,
                  pooler=True, mlm_head=True),
}
STAGES = """
[[stages]]
kind = "distill"
layers = 2
max_steps = 8
batch_size = 8
[[stages]]
kind = "prune"
ffn = 96
importance_batches = 2
batch_size = 8
[[stages]]
kind = "shrink"
hidden = 48
max_steps = 8
batch_size = 8
"""


@pytest.mark.parametrize("teacher", SHAPES)
@pytest.mark.parametrize("target", [20_000_000, 45_000_000])
def test_every_candidate_meets_the_target_and_uses_most_of_it(teacher, target):
    shape = SHAPES[teacher]
    recipe = Recipe.load(DEFAULT_RECIPE)
    found = candidates(recipe, shape, target)
    own = own_allocation(recipe, shape)  # the default recipe's: 16k pieces, 6 first_k layers, FFN 1024, hidden 264
    assert (own.vocab, own.layers, own.selection, own.ffn, own.hidden) == (16000, 6, "first_k", 1024, 264)
    assert found[0] == own  # the recipe's own allocation first, then the ones nearest to it
    assert (found[1].vocab, found[1].layers, found[1].selection) == (16000, 6, "first_k")
    assert {(a.vocab, a.layers, a.selection) for a in found} >= {(8000, 4, "first_k"), (32000, 8, "stride")}
    for allocation in found[1:]:
        params = params_of(recipe, allocation, shape)
        at_full_width = (allocation.hidden, allocation.ffn) == (shape.hidden, shape.ffn)
        assert params <= target and (params >= 0.9 * target or at_full_width), allocation
        assert allocation.hidden % shape.heads == 0 and 2 * allocation.hidden <= allocation.ffn <= shape.ffn


def test_without_a_probe_only_the_recipes_own_depth_and_selection_are_ranked():
    shape, recipe = SHAPES["xlmr"], Recipe.load(DEFAULT_RECIPE)
    own = own_allocation(recipe, shape)
    found = candidates(recipe, shape, 9_500_000)
    ranked = label_free(found, own)
    assert ranked[0] == own and len({a.vocab for a in ranked}) == 3
    assert {(a.layers, a.selection) for a in ranked} == {(6, "first_k")} < {(a.layers, a.selection) for a in found}
    shallow = recipe.replace(stages=tuple(dataclasses.replace(s, layers=2) if s.kind == "distill" else s
                                          for s in recipe.stages))
    assert label_free(found, own_allocation(shallow, shape)) == found  # no candidate of its depth: all of them


def test_an_impossible_target_is_refused_with_the_smallest_reachable_size():
    shape, recipe = SHAPES["xlmr"], Recipe.load(DEFAULT_RECIPE)
    smallest = params_of(recipe, smallest_allocation(shape), shape)
    with pytest.raises(RecipeError) as refused:
        candidates(recipe, shape, smallest - 1)
    assert f"has {smallest:,}; raise the target to at least that" in str(refused.value)
    assert candidates(recipe, shape, smallest)  # that size is reachable
    with pytest.raises(RecipeError, match="already meets the target"):
        candidates(recipe, shape, shape.total_params)


def test_a_plan_writes_a_valid_recipe_within_the_target_and_resumes_after_a_kill(tmp_path, tiny_models, corpus):
    recipe = Recipe.from_toml(recipe_toml(tiny_models["bert"], corpus, STAGES, verify=False), tmp_path)
    teacher = source_shape(str(tiny_models["bert"]))
    target = int(0.6 * teacher.total_params)
    out = tmp_path / "planned.toml"
    token = CancelToken()

    class KillInSecondTrial(Collect):
        def emit(self, event):
            super().emit(event)
            trials = [e for e in self.of(Log) if e.message.startswith("plan: trying")]
            if len(trials) == 2 and isinstance(event, Log) and event.message.startswith("[01"):
                token.cancel()

    killed = KillInSecondTrial()
    with pytest.raises(Cancelled):
        plan(recipe, teacher, target, out, killed, token, vocabularies=(200, 300))
    assert not out.exists()
    first = json.loads((tmp_path / "planned.plan" / "plan.json").read_text())["trials"]
    assert len(first) == 1

    sink = Collect()
    result = plan(recipe, teacher, target, out, sink, vocabularies=(200, 300))
    tried = [row for row in result["candidates"] if row["status"] == "tried"]
    # without a probe, the recipe's own depth and layer selection (2 layers, last_k): its own sizes and the
    # widest per vocabulary
    assert len(tried) == len(result["candidates"]) == 3
    assert {(row["layers"], row["selection"]) for row in tried} == {(2, "last_k")}
    (name,) = first
    assert next(row for row in tried if row["name"] == name)["run_dir"] == first[name]["run_dir"]  # not run again
    assert sum(e.message.startswith("plan: trying") for e in sink.of(Log)) == 2
    # two trials, each after trimming its vocabulary (the kill came while the first of them was trimmed)
    assert sum(isinstance(e, RunFinished) for e in sink.events) == 4
    assert result["winner"] == max(tried, key=lambda row: row["fidelity"])["name"]

    planned = Recipe.load(out)
    shapes = stage_shapes(planned, teacher)
    assert shapes[-1].total_params <= target
    assert planned.stages[0].kind == "trim_vocab"
    winner = next(row for row in tried if row["name"] == result["winner"])
    assert (shapes[-1].layers, shapes[-1].ffn, shapes[-1].hidden) == (winner["layers"], winner["ffn"], winner["hidden"])
    assert next(s for s in planned.stages if s.kind == "distill").max_steps == 8  # the recipe's full steps
    trials = [(e.step, e.total) for e in sink.of(Progress) if e.unit == "trial"]
    assert trials == [(1, 3), (2, 3), (3, 3)]  # the reused trial counts as done
    etas = [e.eta_seconds for e in sink.of(Progress) if e.unit == "trial"][:-1]
    assert all(eta > 0 for eta in etas) and etas[0] > etas[-1]  # from the trials' mean, counting down

    assert planned.plan.winner == result["winner"] and planned.plan.ranked_by == "fidelity"
    assert [(c.name, c.params, c.fidelity) for c in planned.plan.candidates] == [
        (row["name"], row["params"], row["fidelity"]) for row in result["candidates"]]
    run_dir = pipeline.run(planned, Collect())
    recorded = Manifest.load(run_dir).data["plan"]
    assert recorded["winner"] == result["winner"] and len(recorded["candidates"]) == 3
    assert Recipe.load(run_dir / "recipe.toml").plan == planned.plan


def test_the_cli_plans_and_refuses_a_bad_probe(tmp_path, tiny_models, corpus):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(recipe_toml(tiny_models["bert"], corpus, STAGES, verify=False), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "engine.cli", "plan", str(recipe), *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)

    bad = cli("--target-params", "1000", "--out", "p.toml", "--probe", "nonsense")
    assert bad.returncode == 2 and bad.stderr.startswith("miniglot-cli: --probe nonsense: write TASK=DATA")
    small = cli("--target-params", "1000", "--out", "p.toml")
    assert small.returncode == 2 and "raise the target to at least" in small.stderr
    assert len(small.stderr.strip().splitlines()) == 1
    teacher = source_shape(str(tiny_models["bert"]))
    done = cli("--target-mb", str(0.6 * teacher.total_params * 4 / 1e6), "--out", "p.toml", "--vocabularies", "300",
               "--budget-minutes", "0", "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [row["status"] for row in result["candidates"]].count("tried") == 1  # a zero budget still tries one
    # the recipe's own allocation (no vocabulary trim) is tried first, and wins alone with its full steps
    planned, own = (Recipe.load(path) for path in (tmp_path / "p.toml", recipe))
    assert [s.kind for s in planned.stages] == [s.kind for s in own.stages] == ["distill", "prune", "shrink"]
    assert stage_shapes(planned, teacher) == stage_shapes(own, teacher)


def test_a_recipes_plan_table_round_trips_and_a_bad_one_is_named():
    base = Recipe.load(DEFAULT_RECIPE).to_toml() + '[plan]\ntarget_params = 9400000\nranked_by = "fidelity"\n'
    row = ('[[plan.candidates]]\nname = "v16000-l6-stride-f736-h288"\nparams = 9390000\nvocab = 16000\nlayers = 6\n'
           'selection = "stride"\nffn = 736\nhidden = 288\nstatus = "tried"\nfidelity = 1\n')
    recipe = Recipe.from_toml(base + 'winner = "v16000-l6-stride-f736-h288"\n' + row)
    assert recipe.plan.candidates[0].fidelity == 1.0 and Recipe.from_toml(recipe.to_toml()) == recipe
    with pytest.raises(RecipeError, match=r"plan.winner = 'other' is none of its \[\[plan.candidates\]\]"):
        Recipe.from_toml(base + 'winner = "other"\n' + row)
    with pytest.raises(RecipeError, match=r"unknown key 'fidelty' in \[plan.candidates\[1\]\]"):
        Recipe.from_toml(base + 'winner = "v16000-l6-stride-f736-h288"\n' + row.replace("fidelity", "fidelty"))


def test_a_plan_ranked_by_a_probe_picks_the_best_probe_and_reports_the_agreement(tmp_path, tiny_models, corpus):
    from test_evaluation import sentiment_folder

    from engine.evaluate.report import headline

    recipe = Recipe.from_toml(recipe_toml(tiny_models["bert"], corpus, STAGES, verify=False), tmp_path)
    teacher = source_shape(str(tiny_models["bert"]))
    out = tmp_path / "planned.toml"
    result = plan(recipe, teacher, int(0.6 * teacher.total_params), out, Collect(),
                  probe=Probe("sentiment", str(sentiment_folder(tmp_path))), vocabularies=(300,))
    tried = [row for row in result["candidates"] if row["status"] == "tried"]
    assert result["ranked_by"] == "probe" and all(0 <= row["probe"] <= 1 for row in tried)
    assert result["winner"] == max(tried, key=lambda row: row["probe"])["name"]
    for row in tried:  # ranked by the probe's dev score: choosing by the test score would leak it
        (record,) = (tmp_path / "planned.plan" / "probes" / row["name"]).glob("*/*/seed-0-*.json")
        assert row["probe"] == json.loads(record.read_text())["dev_metrics"][headline("sentiment")]
    assert -1 <= result["rank_correlation"] <= 1
    planned = Recipe.load(out).plan
    assert planned.ranked_by == "probe" and planned.rank_correlation == result["rank_correlation"]
