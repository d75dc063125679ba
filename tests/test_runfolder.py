"""The run folder: one lock per writer, permissions from the umask, leftovers swept, `RECIPE --resume`."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import recipe_toml

from engine import pipeline
from engine.errors import RecipeError, RunFolderError
from engine.events import Collect
from engine.recipe import Recipe
from engine.runfolder import LOCK, LOCK_OWNER, RunFolder, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
DISTILL = '[[stages]]\nkind = "distill"\nlayers = 2\nmax_steps = 2\nbatch_size = 8\n'


def test_a_second_lock_is_refused_with_the_holders_pid_and_host(tmp_path):
    folder = RunFolder(tmp_path)
    with folder.lock():
        owner = json.loads((tmp_path / LOCK_OWNER).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(RunFolderError, match=f"pid {os.getpid()} on {socket.gethostname()}"), \
                RunFolder(tmp_path).lock():
            pass
    assert not (tmp_path / LOCK_OWNER).exists()
    with RunFolder(tmp_path).lock():  # released: the next writer gets it
        pass


def test_a_writer_that_lets_go_leaves_no_lock_file(tmp_path):
    """The README's promise: `.lock` and `.lock.json` exist only while a run writes."""
    with RunFolder(tmp_path).lock():
        assert {p.name for p in tmp_path.iterdir()} == {LOCK, LOCK_OWNER}
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError), RunFolder(tmp_path).lock():  # a run that fails lets go as well
        raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_a_lock_held_by_another_process_is_refused_and_freed_when_it_dies(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from engine.runfolder import RunFolder\n"
         "with RunFolder(sys.argv[1]).lock():\n    print('held', flush=True); time.sleep(60)", str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=f"pid {holder.pid} on"), RunFolder(tmp_path).lock():
            pass
    finally:
        holder.kill()
        holder.wait()
    with RunFolder(tmp_path).lock():  # the kernel released the killed holder's lock
        pass


@pytest.mark.parametrize("umask", [0o002, 0o027])
def test_run_outputs_follow_the_umask(tmp_path, tiny_models, corpus, umask):
    (tmp_path / "r.toml").write_text(recipe_toml(tiny_models["bert"], corpus, DISTILL, verify=False))
    done = subprocess.run([sys.executable, "-m", "engine.cli", "run", "--quiet", "r.toml"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=300, preexec_fn=lambda: os.umask(umask))
    assert done.returncode == 0, done.stderr
    run_dir = Path(done.stdout.strip())
    paths = [run_dir, *run_dir.rglob("*")]
    assert {"manifest.json", "recipe.toml", "model.safetensors", "01-distill"} <= {p.name for p in paths}
    for path in paths:
        if path.name == ".lock":
            continue
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == want, f"{path.relative_to(run_dir)}: {oct(path.stat().st_mode)}"


def test_atomic_writes_follow_the_umask(tmp_path):
    atomic_write_text(tmp_path / "a.json", "{}")
    from engine.runfolder import UMASK

    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~UMASK


def test_leftovers_of_killed_writers_are_swept_but_not_evaluations(tmp_path):
    folder = RunFolder(tmp_path)
    junk = [tmp_path / ".manifest.json.x1.tmp", tmp_path / "stages" / "02-prune" / ".model.x2.tmp",
            tmp_path / "stages" / "02-prune" / ".model.old", tmp_path / "stages" / "01-distill" / "checkpoint" /
            ".distill.x3.tmp"]
    for path in junk:
        file = path / "model.safetensors" if path.name.startswith(".model") else path  # those are folders
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("partial")
    kept = tmp_path / "eval" / ".summary.json.x4.tmp"  # an evaluation may be writing it right now
    kept.parent.mkdir()
    kept.write_text("partial")
    assert sorted(folder.remove_leftovers()) == sorted(junk)
    assert not any(p.exists() for p in junk) and kept.exists()


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert RunFolder("runs/x").path == tmp_path / "runs" / "x"
    created = RunFolder.create("runs", "name")
    assert created.path.is_absolute() and created.path.parent == tmp_path / "runs"


def test_stage_models_are_the_completed_stages_with_folders(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "running", "stages": [
        {"kind": "trim_vocab", "status": "completed", "model_dir": "stages/01-trim_vocab/model", "params": 5,
         "bytes": 20, "quality": {"fidelity": 0.9}},
        {"kind": "distill", "status": "running"}]}))
    (model,) = RunFolder(tmp_path).stage_models()
    assert (model.name, model.path, model.params, model.bytes, model.quality) == (
        "01-trim_vocab", tmp_path / "stages" / "01-trim_vocab" / "model", 5, 20, {"fidelity": 0.9})
    (tmp_path / "manifest.json").write_text('{"status": ')
    assert RunFolder(tmp_path).read_manifest() == {} and RunFolder(tmp_path).stage_models() == []
    with pytest.raises(RunFolderError, match="damaged"):
        RunFolder(tmp_path).manifest()


def test_resume_with_the_runs_own_recipe_is_accepted_and_another_is_refused(tmp_path, tiny_models, corpus):
    text = recipe_toml(tiny_models["bert"], corpus, DISTILL, verify=False)
    (tmp_path / "r.toml").write_text(text)
    run_dir = pipeline.run(Recipe.load(tmp_path / "r.toml"), Collect())
    again = pipeline.run(Recipe.load(tmp_path / "r.toml"), Collect(), resume=run_dir)
    assert again == run_dir
    (tmp_path / "other.toml").write_text(text.replace("max_steps = 2", "max_steps = 5"))
    with pytest.raises(RecipeError, match=r"stages\[1\]\.max_steps: 2 -> 5"):
        pipeline.run(Recipe.load(tmp_path / "other.toml"), Collect(), resume=run_dir)
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "completed"


def test_recipe_and_resume_on_the_command_line(tmp_path, tiny_models, corpus):
    (tmp_path / "r.toml").write_text(recipe_toml(tiny_models["bert"], corpus, DISTILL, verify=False))
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    run_dir = Path(cli("run", "--quiet", "r.toml").stdout.strip())
    done = cli("run", "--quiet", "r.toml", "--resume", str(run_dir))
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == run_dir
    (tmp_path / "r.toml").write_text((tmp_path / "r.toml").read_text().replace("layers = 2", "layers = 3"))
    refused = cli("run", "r.toml", "--resume", str(run_dir))
    assert refused.returncode == 2
    assert "stages[1].layers: 2 -> 3" in refused.stderr and "Traceback" not in refused.stderr
