"""Recipes that end by training task models (`[[task_models]]`): steps after the stages, in the run folder
and its manifest, cancelled, killed and resumed like stages. Tiny teacher, synthetic task data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import recipe_toml
from test_taskmodel import write_ner, write_sentiment
from tiny import tiny_model_dir, write_corpus

from engine import pipeline
from engine.errors import Cancelled, TaskDataError
from engine.events import CancelToken, Collect, Progress, RunStarted, StageFinished, StageStarted
from engine.recipe import Recipe
from engine.runfolder import Manifest
from engine.taskmodel import TASK_FILE

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{Path(__file__).parent}", "HF_HUB_OFFLINE": "1",
       "OMP_NUM_THREADS": "1"}
PRUNE = '[[stages]]\nkind = "prune"\nffn = 64\nimportance_batches = 1\nbatch_size = 8\n'
NER = '[[task_models]]\ntask = "ner"\ndata = "ner"\nepochs = 2\nlearning_rate = 3e-3\n'  # relative: next to the recipe
SENTIMENT = '[[task_models]]\ntask = "sentiment"\ndata = "sentiment"\ndistill = false\nepochs = 1\n'
# kills the run at the first training step of stage index argv[2]
KILL_CHILD = """
import os, signal, sys
from engine import pipeline
from engine.events import Progress
from engine.recipe import Recipe

class KillInStep:
    def emit(self, event):
        if isinstance(event, Progress) and event.index == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

pipeline.run(Recipe.load(sys.argv[1]), KillInStep())
"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("teacher") / "bert", "bert", layers=2)


def write_recipe(folder: Path, teacher: Path, tasks: str) -> Path:
    """A prune-only recipe with `tasks` in `folder`, beside its corpus and task data."""
    corpus = write_corpus(folder / "corpus.txt", 120, seed=1)
    write_ner(folder / "ner", n_train=60)
    write_sentiment(folder / "sentiment", n_train=40)
    recipe = folder / "recipe.toml"
    recipe.write_text(recipe_toml(teacher, corpus, PRUNE + tasks, verify=False), encoding="utf-8")
    return recipe


def mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


def test_a_cancelled_task_step_resumes_without_retraining_the_teacher(tmp_path, teacher):
    recipe = Recipe.load(write_recipe(tmp_path, teacher, NER + SENTIMENT))
    token, first = CancelToken(), Collect()

    class CancelInStudent:
        def emit(self, event):
            first.emit(event)
            if isinstance(event, Progress) and event.index == 3:
                token.cancel()

    with pytest.raises(Cancelled):
        pipeline.run(recipe, CancelInStudent(), token)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert first.of(RunStarted)[0].stages == ("prune", "task:ner teacher", "task:ner", "task:sentiment")
    assert [(e.index, e.stage, e.status) for e in first.of(StageFinished)] == [
        (1, "prune", "completed"), (2, "task:ner teacher", "completed"), (3, "task:ner", "cancelled")]
    manifest = Manifest.load(run_dir).data
    assert manifest["status"] == "cancelled"
    assert [(t["task"], t["status"]) for t in manifest["task_models"]] == [("ner", "cancelled"),
                                                                           ("sentiment", "pending")]
    home = run_dir / "tasks" / "ner"
    assert (home / "teacher" / TASK_FILE).is_file() and not (home / "model").exists()
    (cached,) = home.glob("teacher-logits-*.npz")  # the teacher labelled the texts before the student trained
    stamps = mtime(home / "teacher" / TASK_FILE), mtime(cached)
    (home / "model.partial").mkdir()  # as a writer killed while saving would leave it

    again = Collect()
    assert pipeline.run(None, again, resume=run_dir) == run_dir
    assert [(e.index, e.status) for e in again.of(StageFinished)] == [
        (1, "skipped"), (2, "skipped"), (3, "completed"), (4, "completed")]
    assert {e.index for e in again.of(StageStarted)} == {3, 4}
    assert (mtime(home / "teacher" / TASK_FILE), mtime(cached)) == stamps  # neither retrained nor relabelled
    assert list(home.glob("teacher-logits-*.npz")) == [cached] and not (home / "model.partial").exists()

    manifest = Manifest.load(run_dir).data
    assert manifest["status"] == "completed"
    ner, sentiment = manifest["task_models"]
    assert ner["status"] == sentiment["status"] == "completed"
    assert (ner["model_dir"], ner["teacher_dir"], ner["headline"]) == ("tasks/ner/model", "tasks/ner/teacher", "f1")
    assert set(ner["test"]) >= {"f1"} and set(ner["teacher_test"]) >= {"f1"} and ner["params"] > 0
    assert sentiment["model_dir"] == "tasks/sentiment/model" and "teacher_dir" not in sentiment
    assert not (run_dir / "tasks" / "sentiment" / "teacher").exists()
    facts = json.loads((home / "model" / TASK_FILE).read_text())
    assert facts["distilled"] and facts["teacher"] == str(home / "teacher") and facts["unlabelled"] > 0
    assert facts["encoder"] == str(run_dir / "stages" / "01-prune" / "model")
    assert facts["lineage"]["run"] == run_dir.name
    assert not json.loads((run_dir / "tasks" / "sentiment" / "model" / TASK_FILE).read_text())["distilled"]
    saved = Recipe.load(run_dir / "recipe.toml")  # the run's own recipe keeps them, resolved
    assert saved.task_models == recipe.resolved().task_models
    assert saved.task_models[0].data == str(tmp_path.resolve() / "ner")

    done = Collect()
    pipeline.run(None, done, resume=run_dir)  # a completed run: every step skipped
    assert {e.status for e in done.of(StageFinished)} == {"skipped"} and not done.of(StageStarted)


def test_a_distilled_run_killed_in_the_task_step_resumes_and_completes(tmp_path, teacher):
    recipe = write_recipe(tmp_path, teacher, NER)
    killed = subprocess.run([sys.executable, "-c", KILL_CHILD, str(recipe), "3"], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    manifest = Manifest.load(run_dir).data
    assert manifest["status"] == "running" and manifest["task_models"][0]["status"] == "running"
    home = run_dir / "tasks" / "ner"
    stamp = mtime(home / "teacher" / TASK_FILE)

    resumed = subprocess.run([sys.executable, "-m", "engine.cli", "run", "--resume", str(run_dir), "--quiet"],
                             cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    manifest = Manifest.load(run_dir).data
    assert manifest["status"] == "completed" and manifest["task_models"][0]["status"] == "completed"
    assert mtime(home / "teacher" / TASK_FILE) == stamp
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if '"event": "run_started"' in line]
    after = [json.loads(line) for line in lines[starts[-1]:]]
    assert [(e["index"], e["status"]) for e in after if e["event"] == "stage_finished"] == [
        (1, "skipped"), (2, "skipped"), (3, "completed")]
    from transformers import pipeline as hf_pipeline

    tags = hf_pipeline("token-classification", model=str(home / "model"))("ne żato po")
    assert isinstance(tags, list)
    assert not [p for p in run_dir.rglob("*") if p.name.endswith((".tmp", ".old", ".lock.json"))
                or ".partial" in p.name]


def test_missing_task_data_is_refused_before_a_run_folder_exists(tmp_path, teacher):
    recipe = write_recipe(tmp_path, teacher, NER.replace('data = "ner"', 'data = "nowhere"'))
    with pytest.raises(TaskDataError, match=r"task_models\[1\] \(ner\): .*nowhere"):
        pipeline.run(Recipe.load(recipe), Collect())
    assert not (tmp_path / "runs").exists()
