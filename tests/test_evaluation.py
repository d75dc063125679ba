"""Evaluation orchestration: a run's teacher and students on small learnable tasks, via the CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import recipe_toml

from engine import pipeline
from engine.configs import EvaluationConfig
from engine.evaluate.report import markdown
from engine.evaluate.runner import EvalPlan, aggregate, evaluate, run_models, task_labels
from engine.events import Collect, EvalDevScore, EvalProgress, EvalResult
from engine.recipe import Recipe

REPO = Path(__file__).resolve().parents[1]

TWO_STAGES = """
[[stages]]
kind = "distill"
layers = 2
loss = "mse"
max_steps = 3
batch_size = 8
[[stages]]
kind = "trim_vocab"
size = 150
"""


def sentiment_folder(root: Path, seed: int = 0) -> Path:
    """A learnable binary task: the label is set by which of two marker words a sentence contains."""
    from tiny import sentences

    rng = random.Random(seed)
    folder = root / "sentiment"
    folder.mkdir()
    base = sentences(300, seed=7)
    for split, part in (("train", base[:200]), ("dev", base[200:250]), ("test", base[250:])):
        with (folder / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            for i, text in enumerate(part):
                label = i % 2
                marker = "kalimu" if label else "toraso"
                words = text.split()
                words.insert(rng.randrange(len(words) + 1), marker)
                writer.writerow([label, " ".join(words)])
    return folder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_models) -> Path:
    from tiny import write_corpus

    root = tmp_path_factory.mktemp("eval-run")
    corpus = write_corpus(root / "corpus.txt", 200, seed=3)
    text = recipe_toml(tiny_models["bert"], corpus, TWO_STAGES, verify=False)
    return pipeline.run(Recipe.from_toml(text, root), Collect())


def test_run_models_lists_teacher_and_completed_students(tiny_run):
    names = [m.name for m in run_models(tiny_run)]
    assert names == ["teacher", "01-distill", "02-trim_vocab"]


def test_evaluate_writes_seed_files_and_summary_and_is_deterministic(tmp_path, tiny_run):
    data = sentiment_folder(tmp_path)
    config = EvaluationConfig(tasks=("sentiment",), data=(str(data),), seeds=2, epochs=4, learning_rate=2e-3,
                              speed=False)
    plan = EvalPlan(tuple(run_models(tiny_run)), config)
    sink = Collect()
    first = evaluate(plan, tmp_path / "a", sink)
    second = evaluate(plan, tmp_path / "b", Collect())
    assert first["results"] == second["results"]
    assert len(sink.of(EvalResult)) == 3 * 2
    progress = sink.of(EvalProgress)
    assert [(p.done, p.total) for p in progress] == [(done, 6) for done in range(7)]
    assert (progress[1].model, progress[1].seed, progress[-1].task) == ("teacher", 1, "")
    dev = [e for e in sink.of(EvalDevScore) if e.model == "01-distill" and e.seed == 0]
    assert [e.epoch for e in dev] == [1, 2, 3, 4] and {e.metric for e in dev} == {"macro_f1"}
    for model in ("teacher", "01-distill", "02-trim_vocab"):
        for seed in (0, 1):
            (path,) = (tmp_path / "a" / "sentiment" / model).glob(f"seed-{seed}-*.json")
            record = json.loads(path.read_text())
            assert set(record["metrics"]) == {"accuracy", "macro_f1"} and path.stem.endswith(record["key"][:12])
    teacher = next(r for r in first["results"] if r["model"] == "teacher" and r["metric"] == "accuracy")
    assert teacher["seeds"] == 2 and teacher["mean"] > 0.5
    table = (tmp_path / "a" / "summary.md").read_text()
    assert table.count("\n| ") >= 3 and "sentiment macro_f1" in table
    assert (tmp_path / "a" / "summary.csv").read_text().splitlines()[0].startswith("model,")
    fidelity = next(m for m in first["models"] if m["name"] == "01-distill")["fidelity"]
    assert 0 < fidelity["similarity_correlation"] <= 1

    # an interrupted evaluation continues from its seed files instead of recomputing them
    (tmp_path / "a" / "summary.json").unlink()
    again = evaluate(plan, tmp_path / "a", Collect())
    assert again["results"] == first["results"]


def flipped(folder: Path, root: Path) -> Path:
    """`folder` with every test label flipped: another data set of the same task, scored about 1 − accuracy."""
    out = root / "flipped"
    out.mkdir()
    for path in folder.glob("*.csv"):
        rows = [(1 - int(label) if path.stem == "test" else label, text)
                for label, text in csv.reader(path.open(encoding="utf-8"))]
        with (out / path.name).open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
    return out


def test_results_are_reused_only_for_the_same_weights_data_and_settings(tmp_path, tiny_run, monkeypatch):
    """The cache keys on everything that changes a result: two data sets of one task in one folder
    are two results, a changed model folder is scored again, and an unchanged plan is not."""
    from engine.evaluate import probe as probe_module

    data = sentiment_folder(tmp_path)
    models = tuple(run_models(tiny_run))[:2]
    calls = []
    real = probe_module.probe
    monkeypatch.setattr(probe_module, "probe", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    out = tmp_path / "out"

    def scores(folder: Path, plan_models=models) -> dict[str, float]:
        plan = EvalPlan(plan_models, EvaluationConfig(tasks=("sentiment",), data=(str(folder),), seeds=1,
                                                      mode="probe", speed=False, intrinsic=False))
        return {r["model"]: r["mean"] for r in evaluate(plan, out, Collect())["results"] if r["metric"] == "accuracy"}

    original = scores(data)
    assert len(calls) == 2
    other = scores(flipped(data, tmp_path))
    assert len(calls) == 4, "another data set of the same task must not reuse the first one's results"
    assert all(abs(other[m] - (1 - original[m])) < 0.2 for m in original)  # flipped labels: about 1 - accuracy
    assert scores(data) == original and len(calls) == 4  # both data sets' results stay reusable
    student = tmp_path / "student"
    shutil.copytree(models[1].path, student)
    config = json.loads((student / "config.json").read_text())
    (student / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-3}))
    scores(data, (models[0], dataclasses.replace(models[1], path=student)))
    assert calls[-1] == student and len(calls) == 5  # same name, other weights: scored again


def test_a_task_repeated_on_two_data_sets_gets_two_columns():
    assert task_labels((("topic", "/d/sib200_mlt_Latn"), ("topic", "/d/sib200_swh_Latn/"), ("pos", "x"))) == [
        "topic@sib200_mlt_Latn", "topic@sib200_swh_Latn", "pos"]


def test_aggregate_mean_and_std_over_seeds():
    records = [{"model": "m", "task": "pos", "metrics": {"accuracy": v}} for v in (0.5, 0.7, 0.9)]
    (row,) = aggregate(records)
    assert row["mean"] == pytest.approx(0.7)
    assert row["std"] == pytest.approx(0.2)  # sample std: sqrt(((-.2)^2 + 0 + .2^2) / 2)
    assert row["seeds"] == 3 and "dev_mean" not in row  # no dev scores: none reported


def test_aggregate_reports_the_dev_mean_only_where_every_seed_has_one():
    records = [{"model": "m", "task": "pos", "metrics": {"accuracy": 0.5, "f1": 0.4},
                "dev_metrics": {"accuracy": dev, **({"f1": 0.3} if dev < 0.7 else {})}} for dev in (0.6, 0.8)]
    accuracy, f1 = aggregate(records)
    assert accuracy["dev_mean"] == pytest.approx(0.7) and accuracy["mean"] == pytest.approx(0.5)
    assert "dev_mean" not in f1


def test_markdown_table_states_drop_vs_teacher():
    summary = {
        "teacher": "teacher",
        "results": [
            {"model": "teacher", "task": "pos", "metric": "accuracy", "mean": 0.90, "std": 0.01, "seeds": 3},
            {"model": "small", "task": "pos", "metric": "accuracy", "mean": 0.81, "std": 0.02, "seeds": 3},
        ],
        "models": [
            {"name": "teacher", "params": 100e6, "bytes": 400e6, "speedup_latency": 1.0, "speedup_throughput": 1.0},
            {"name": "small", "params": 10e6, "bytes": 40e6, "speedup_latency": 3.0, "speedup_throughput": 4.0},
        ],
    }
    table = markdown(summary)
    assert "| small | 81.0 ± 2.0 | +9.0 | +10.0 | 10.0 | 40.0 | 3.00× | 4.00× |" in table


def test_cli_eval_on_a_run_prints_json(tmp_path, tiny_run):
    data = sentiment_folder(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "eval", "--run", str(tiny_run), "--task", "sentiment",
                           "--data", str(data), "--seeds", "1", "--epochs", "1", "--json", "--quiet", "--no-speed",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert {r["model"] for r in payload["results"]} == {"teacher", "01-distill", "02-trim_vocab"}
    assert {r["metric"] for r in payload["results"]} == {"accuracy", "macro_f1"}
    assert (out / "summary.json").is_file()


def test_cli_eval_bad_data_is_a_clear_error(tmp_path, tiny_run):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "eval", "--run", str(tiny_run), "--task", "pos",
                           "--data", str(tmp_path / "missing"), "--quiet"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 1
    assert "missing" in proc.stderr.strip().splitlines()[-1]
