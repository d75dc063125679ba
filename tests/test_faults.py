"""Fault injection: SIGKILL at stage boundaries and inside the reload check, a second writer, SIGTERM.

Each killed run is resumed from the command line and must end with exactly the model an uninterrupted
run writes, with nothing left behind: no temporary folders, no checkpoints, no lock owner.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import recipe_toml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("fault_child.py")
STAGES = """
[[stages]]
kind = "distill"
layers = 2
loss = "mse"
max_steps = 6
batch_size = 8
eval_every = 3
checkpoint_every = 2
[[stages]]
kind = "prune"
ffn = 64
importance_batches = 2
batch_size = 8
[[stages]]
kind = "shrink"
hidden = 32
max_steps = 3
batch_size = 8
"""
LONG_DISTILL = '[[stages]]\nkind = "distill"\nlayers = 2\nmax_steps = 2000\nbatch_size = 8\ncheckpoint_every = 5\n'
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{Path(__file__).parent}", "HF_HUB_OFFLINE": "1"}


def cli(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def child(cwd: Path, target: Path, point: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHILD), str(target), point], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "stages" / "03-shrink" / "model" / "model.safetensors"))


def leftovers(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.rglob("*") if p.name.endswith((".tmp", ".old", ".lock", ".lock.json"))
                  or p.name == "checkpoint")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_models) -> tuple[Path, Path]:
    """(recipe, run folder) of the recipe run without faults."""
    root = tmp_path_factory.mktemp("uninterrupted")
    from tiny import write_corpus

    corpus = write_corpus(root / "corpus.txt", 240, seed=1)
    recipe = root / "recipe.toml"
    recipe.write_text(recipe_toml(tiny_models["bert"], corpus, STAGES))
    done = child(root, recipe, "none")
    assert done.returncode == 0, done.stderr
    return recipe, Path(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("point", ["after-stage-1", "reload-2", "after-stage-2", "reload-3"])
def test_sigkill_then_resume_gives_the_uninterrupted_model(tmp_path, uninterrupted, point):
    recipe, reference = uninterrupted
    (tmp_path / "r.toml").write_text(recipe.read_text())  # absolute teacher and corpus: runs go to tmp_path
    killed = child(tmp_path, tmp_path / "r.toml", point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "running"  # nobody could record the kill
    if point.startswith("reload"):  # the whole model sat in a temporary folder beside `model/`
        stage = int(point.rsplit("-", 1)[1])
        assert list(run_dir.glob(f"stages/0{stage}-*/.model.*.tmp"))
        assert not list(run_dir.glob(f"stages/0{stage}-*/model"))

    resumed = cli(tmp_path, "run", "--quiet", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "completed"
    assert leftovers(run_dir) == []
    want, got = final_weights(reference), final_weights(run_dir)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=name)


def gone(pid: int, within: float) -> bool:
    """Whether process `pid` ends (or is a zombie no one has reaped yet) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel ends the check with its parent on Linux")
def test_sigkill_during_the_reload_check_ends_the_check_and_leaves_nothing_outside_the_run(tmp_path, tiny_models,
                                                                                          corpus):
    """A run cancelled (its manifest says so), resumed, then SIGKILLed while stage 1's reload check runs: the
    check's process dies with it, its scratch folder is inside the run folder, where the next resume sweeps it,
    and the manifest does not repeat the earlier cancellation."""
    from engine import pipeline
    from engine.errors import Cancelled
    from engine.events import CancelToken, Progress
    from engine.recipe import Recipe

    token = CancelToken()

    class CancelAtStep:
        def emit(self, event):
            if isinstance(event, Progress) and event.step == 2:
                token.cancel()

    with pytest.raises(Cancelled):
        pipeline.run(Recipe.from_toml(recipe_toml(tiny_models["bert"], corpus, STAGES), tmp_path), CancelAtStep(),
                     token)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "manifest.json").read_text())["message"] == "cancelled by the user"
    killed = child(tmp_path, run_dir, "in-reload-1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    check = json.loads((tmp_path / "check.json").read_text())
    try:
        assert gone(check["pid"], within=10), "the reload check outlived the run that started it"
    finally:
        if not gone(check["pid"], within=0):
            os.kill(check["pid"], signal.SIGKILL)
    assert Path(check["scratch"]).is_dir() and Path(check["scratch"]).is_relative_to(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["message"] == ""  # nobody could record the kill

    resumed = cli(tmp_path, "run", "--quiet", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert leftovers(run_dir) == [] and not Path(check["scratch"]).exists()


def test_resume_with_a_relative_path(tmp_path, tiny_models, corpus):
    """The reload check runs in another folder: the run folder must reach it as an absolute path."""
    (tmp_path / "r.toml").write_text(recipe_toml(tiny_models["bert"], corpus, STAGES))
    assert child(tmp_path, tmp_path / "r.toml", "after-stage-1").returncode == -signal.SIGKILL
    (run_dir,) = (tmp_path / "runs").iterdir()
    resumed = cli(tmp_path, "run", "--quiet", "--resume", os.path.relpath(run_dir, tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert Path(resumed.stdout.strip()) == run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"]] == ["completed"] * 3
    assert all(s["verification"]["max_abs_diff"] for s in manifest["stages"])


def start_long_run(tmp_path: Path, tiny_models, corpus) -> tuple[subprocess.Popen, Path]:
    """A CLI run that trains for minutes, once it holds its run folder's lock and has a checkpoint."""
    (tmp_path / "r.toml").write_text(recipe_toml(tiny_models["bert"], corpus, LONG_DISTILL, verify=False))
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "r.toml"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if list((tmp_path / "runs").glob("*/stages/01-distill/checkpoint/distill/state.pt")):
            return proc, next((tmp_path / "runs").iterdir())
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"the run did not reach a checkpoint: {proc.communicate()[1][-2000:]}")


def test_a_second_writer_is_refused_with_the_first_ones_pid_and_host(tmp_path, tiny_models, corpus):
    proc, run_dir = start_long_run(tmp_path, tiny_models, corpus)
    try:
        events_before = (run_dir / "events.jsonl").stat().st_size
        second = cli(tmp_path, "run", "--resume", str(run_dir))
        assert second.returncode == 1
        message = second.stderr.strip().splitlines()[-1]
        assert f"pid {proc.pid} on {socket.gethostname()}" in message and "being written" in message
        assert "Traceback" not in second.stderr
        assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"  # untouched
        assert proc.poll() is None  # the first writer goes on
        assert (run_dir / "events.jsonl").stat().st_size >= events_before
    finally:
        proc.kill()
        proc.wait()
    # the kernel released the dead writer's lock: a resume may write now
    assert_resumes(tmp_path, run_dir)


def assert_resumes(cwd: Path, run_dir: Path) -> None:
    """A resume of `run_dir` continues from its checkpoint (then is stopped by SIGTERM, exit 143)."""
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--resume", str(run_dir)], cwd=cwd,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if "resumed from step" in (run_dir / "events.jsonl").read_text():
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "resumed from step" in (run_dir / "events.jsonl").read_text()


def test_sigterm_cancels_like_ctrl_c_and_the_run_resumes(tmp_path, tiny_models, corpus):
    proc, run_dir = start_long_run(tmp_path, tiny_models, corpus)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "SIGTERM" in stderr and "cancelled" in stderr.splitlines()[-1]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "cancelled" and manifest["stages"][0]["status"] == "cancelled"
    assert not (run_dir / ".lock.json").exists()
    assert_resumes(tmp_path, run_dir)


def test_a_second_sigterm_stops_at_once(tmp_path, tiny_models, corpus):
    proc, run_dir = start_long_run(tmp_path, tiny_models, corpus)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "cancelled"
    assert "KeyboardInterrupt" not in manifest["message"]  # "cancelled by the user", or the line below


def test_a_run_stopped_at_once_says_how_to_continue(tmp_path):
    from engine.pipeline import _explain

    assert _explain(KeyboardInterrupt(), tmp_path) == (
        f"interrupted at once (a second signal); continue with miniglot-cli run --resume {tmp_path}")
