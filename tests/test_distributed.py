"""Data-parallel runs under torchrun (gloo on CPU) agree with single-process gradient accumulation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import recipe_toml

REPO = Path(__file__).resolve().parents[1]

STAGES = """
[[stages]]
kind = "distill"
layers = 2
loss = "kl"
max_steps = 5
batch_size = 4
grad_accumulation = {accumulation}
eval_every = 5
checkpoint_every = 5
[[stages]]
kind = "prune"
ffn = 64
"""

# W processes × A accumulation steps train on exactly the batches one process sees with W·A
# accumulation steps (engine/distributed.py); only the order of floating-point sums differs.
TOLERANCE = 1e-5


def train_losses(run_dir: Path) -> list[float]:
    losses = []
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "metric" and event["name"] == "distill/total" and event["split"] == "train":
            losses.append(event["value"])
    return losses


@pytest.mark.slow
def test_two_process_gloo_run_matches_single_process_accumulation(tmp_path, tiny_models, corpus):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    single, double = tmp_path / "single", tmp_path / "double"
    for folder, accumulation in ((single, 2), (double, 1)):
        folder.mkdir()
        (folder / "recipe.toml").write_text(recipe_toml(tiny_models["bert"], corpus,
                                                        STAGES.format(accumulation=accumulation), verify=False))
    one = subprocess.run([sys.executable, "-m", "engine.cli", "run", "recipe.toml", "--quiet"], cwd=single, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--standalone", "-m", "engine.cli", "run", "recipe.toml", "--quiet"],
                         cwd=double, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]

    (single_run,) = (single / "runs").iterdir()
    runs = list((double / "runs").iterdir())
    assert len(runs) == 1, "each process made its own run folder"
    double_run = runs[0]
    assert json.loads((double_run / "manifest.json").read_text())["status"] == "completed"
    events = [json.loads(line) for line in (double_run / "events.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "run_started" for e in events) == 1, "a second process wrote events"
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 2, 3, 4, 5]

    expected, got = train_losses(single_run), train_losses(double_run)
    assert len(expected) == len(got) == 5
    assert got == pytest.approx(expected, abs=TOLERANCE)
    pruned = double_run / "stages" / "02-prune" / "model"
    assert (pruned / "model.safetensors").is_file()
