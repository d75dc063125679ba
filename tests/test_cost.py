"""Per-stage memory and time estimates: they respond to the recipe and the device as they should."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from engine.cost import PROCESS_BYTES, Device
from engine.estimate import stage_costs
from engine.recipe import Recipe
from engine.shapes import Shape

E5 = Shape(layers=12, hidden=384, ffn=1536, heads=12, vocab=250_037, pooler=True)
DEVICE = Device("test cpu", free_bytes=8 * 2**30, matmul_flops=50e9, adamw_params_per_second=150e6)
RECIPE = """
[corpus]
train = ["x.txt"]
max_length = {max_length}
[[stages]]
kind = "distill"
layers = 6
batch_size = {batch}
max_steps = {steps}
[[stages]]
kind = "prune"
ffn = 1024
[[stages]]
kind = "shrink"
hidden = 192
max_steps = 100
[[stages]]
kind = "trim_vocab"
size = 8000
"""


def costs(device: Device = DEVICE, teacher: Shape = E5, max_length: int = 128, batch: int = 16, steps: int = 150):
    recipe = Recipe.from_toml(RECIPE.format(max_length=max_length, batch=batch, steps=steps))
    return {row["name"]: row for row in stage_costs(recipe, teacher, device)}


def test_every_stage_gets_a_row_with_memory_above_its_weights_and_a_time():
    rows = costs()
    assert list(rows) == ["01-distill", "02-prune", "03-shrink", "04-trim_vocab"]
    teacher_bytes = 4 * E5.total_params
    for row in rows.values():
        assert row["peak_bytes"] > teacher_bytes + PROCESS_BYTES and row["seconds"] > 0 and row["fits"]


def test_time_follows_steps_and_memory_follows_batch_and_length():
    base = costs()
    assert costs(steps=300)["01-distill"]["seconds"] == pytest.approx(2 * base["01-distill"]["seconds"])
    assert costs(steps=300)["02-prune"] == base["02-prune"]
    assert costs(batch=32)["01-distill"]["peak_bytes"] > base["01-distill"]["peak_bytes"]
    assert costs(max_length=512)["01-distill"]["peak_bytes"] > costs(max_length=128)["01-distill"]["peak_bytes"]
    slower = dataclasses.replace(DEVICE, matmul_flops=DEVICE.matmul_flops / 4)
    assert costs(slower)["01-distill"]["seconds"] > 2 * base["01-distill"]["seconds"]


def test_logit_losses_cost_memory_for_the_vocabulary():
    with_head = dataclasses.replace(E5, mlm_head=True)
    assert costs(teacher=with_head)["01-distill"]["peak_bytes"] > costs()["01-distill"]["peak_bytes"] + 4 * 2**20


def test_a_small_device_is_told_the_run_does_not_fit():
    small = dataclasses.replace(DEVICE, free_bytes=2**30)
    assert not any(row["fits"] for row in costs(small).values())


def test_probe_measures_this_machine():
    device = Device.probe("cpu", "fp32")
    assert device.name.startswith("cpu") and "float32" in device.name
    assert 1e8 < device.matmul_flops < 1e14 and device.adamw_params_per_second > 1e6 and device.free_bytes > 2**28


def test_cli_estimate_prints_memory_and_time_per_stage(tmp_path, tiny_models, corpus):
    from conftest import four_stages, recipe_toml

    (tmp_path / "r.toml").write_text(recipe_toml(tiny_models["bert"], corpus, four_stages()))
    run = [sys.executable, "-m", "engine.cli", "estimate", str(tmp_path / "r.toml")]
    text = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    assert "peak GiB" in text and "GFLOP/s measured" in text and text.count("  yes") == 4
    data = json.loads(subprocess.run([*run, "--json"], capture_output=True, text=True, check=True).stdout)
    assert [c["name"] for c in data["costs"]] == [r["name"] for r in data["stages"][1:]]
    assert data["device"]["matmul_flops"] > 0
