"""`precision = "auto"` on a CPU: bf16 only where a short measurement says it is faster, cached per machine and
torch version. The measurement is injected here, so the tests pass whichever precision this machine would pick."""

from __future__ import annotations

import json

import pytest
import torch

from engine.training import precision
from engine.training.precision import Bf16Probe, autocast_dtype, cpu_prefers_bf16, matmul_rate, measure_bf16

CPU = torch.device("cpu")


@pytest.mark.parametrize(("probe", "expected"), [
    (Bf16Probe(fp32_gflops=160.0, bf16_gflops=1.0, onednn_bf16=True), None),  # the flag says yes, the clock says no
    (Bf16Probe(fp32_gflops=60.0, bf16_gflops=130.0, onednn_bf16=False), torch.bfloat16),
    (Bf16Probe(fp32_gflops=100.0, bf16_gflops=110.0, onednn_bf16=True), None),  # within the margin: casts cost too
])
def test_auto_on_a_cpu_follows_the_measurement_not_the_flag(monkeypatch, probe, expected):
    monkeypatch.setattr(precision, "cpu_prefers_bf16", lambda: probe)
    assert autocast_dtype("auto", CPU) is expected
    assert autocast_dtype("fp32", CPU) is None and autocast_dtype("bf16", CPU) is torch.bfloat16
    assert precision.Precision.for_run("auto", CPU).name == ("bf16" if expected else "fp32")


def test_measure_bf16_compares_both_dtypes_on_the_same_work():
    rates = {torch.float32: 50e9, torch.bfloat16: 75e9}
    probe = measure_bf16(lambda dtype: rates[dtype])
    assert (probe.fp32_gflops, probe.bf16_gflops) == (50.0, 75.0) and probe.bf16
    assert not measure_bf16(lambda dtype: {torch.float32: 50e9, torch.bfloat16: 55e9}[dtype]).bf16


def test_the_measurement_is_cached_per_machine_and_torch_version(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "precision.json"
    calls = []

    def measure() -> Bf16Probe:
        calls.append(1)
        return Bf16Probe(100.0, 1.0 + len(calls), False)

    first = cpu_prefers_bf16(measure, path)
    assert len(calls) == 1 and not first.bf16
    stored = json.loads(path.read_text())
    assert list(stored) == [precision.machine_key()]
    assert stored[precision.machine_key()]["bf16"] is False and stored[precision.machine_key()]["fp32_gflops"] == 100.0

    assert cpu_prefers_bf16(measure, path) == first and len(calls) == 1  # read back, not measured again

    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    other = cpu_prefers_bf16(measure, path)
    assert len(calls) == 2 and other.bf16_gflops == 3.0
    assert len(json.loads(path.read_text())) == 2  # both versions kept


def test_a_broken_or_unwritable_cache_only_costs_a_measurement(tmp_path):
    broken = tmp_path / "precision.json"
    broken.write_text("{not json")
    probe = Bf16Probe(10.0, 50.0, False)
    assert cpu_prefers_bf16(lambda: probe, broken) == probe
    assert json.loads(broken.read_text())[precision.machine_key()]["bf16"] is True

    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cpu_prefers_bf16(lambda: probe, blocker / "precision.json") == probe  # its folder cannot exist


def test_the_process_asks_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "_decided", {})
    monkeypatch.setenv("MINIGLOT_CACHE", str(tmp_path))
    calls = []
    probe = Bf16Probe(10.0, 5.0, False)
    assert cpu_prefers_bf16(lambda: calls.append(1) or probe) == probe
    assert cpu_prefers_bf16(lambda: calls.append(1) or probe) == probe and calls == [1]
    assert (tmp_path / "precision.json").is_file()


def test_matmul_rate_measures_the_given_shapes_within_its_budget():
    rate = matmul_rate(CPU, torch.float32, ((32, 64, 48),), budget=0.05)
    assert 1e6 < rate < 1e14
    assert precision.machine_key() == precision.machine_key()
