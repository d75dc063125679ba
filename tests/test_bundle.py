"""The PyInstaller bundle: its entry points (fast, unfrozen) and a real build run as a new user would (slow).

The build test is marked `bundle` and runs with the whole suite (CI included); `./run-tests -m 'not bundle'`
leaves it out, `./run-tests -m bundle` runs it alone (about 6 minutes).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine import verify
from engine.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"


def test_frozen_verification_reloads_through_the_bundle_entry_point(monkeypatch, tmp_path, tiny_models):
    """In a bundle sys.executable is the app: verify_folder runs it with the child flag instead of `-m`."""
    launcher = tmp_path / "miniglot-cli"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{PACKAGING / "miniglot_cli.py"}" "$@"\n')
    launcher.chmod(0o755)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(launcher))
    loaded = load_model(tiny_models["bert"])
    result = verify.verify_folder(tiny_models["bert"], loaded, ["kali muto rane.", "sipo hawu!"])
    assert result["problems"] == [] and result["max_abs_diff"]["logits"] <= verify.TOLERANCE


def test_the_child_flag_is_the_one_engine_verify_sets():
    spec = importlib.util.spec_from_file_location("bundle_boot", PACKAGING / "bundle_boot.py")
    bundle_boot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle_boot)
    assert bundle_boot.FROZEN_CHILD_ENV == verify.FROZEN_CHILD_ENV


def test_bundle_entry_points_work_offline_unless_told_otherwise(tmp_path, tiny_models):
    recipe = tmp_path / "recipe.toml"
    teacher = tiny_models["bert"]
    recipe.write_text(f'[teacher]\nsource = "{teacher}"\n[corpus]\ntrain = ["hub:wikitext:wikitext-2-raw-v1"]\n'
                      '[[stages]]\nkind = "trim_vocab"\nsize = 100\n')
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    proc = subprocess.run([sys.executable, str(PACKAGING / "miniglot_cli.py"), "run", "--quiet", str(recipe),
                           "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    assert "needs network access to the Hugging Face hub, but HF_HUB_OFFLINE is set" in proc.stderr


@pytest.mark.bundle
@pytest.mark.timeout(3600)
def test_build_unpack_and_self_test_without_python(tmp_path):
    """packaging/build, unpack elsewhere, run the executables with no Python environment on PATH."""
    dist = tmp_path / "dist"
    build = subprocess.run([str(PACKAGING / "build"), str(dist)], capture_output=True, text=True, timeout=3000)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (archive,) = dist.glob("MiniGlot-*-linux-*.tar.gz")
    unpacked = tmp_path / "elsewhere"
    unpacked.mkdir()
    subprocess.run(["tar", "-C", str(unpacked), "-xzf", str(archive)], check=True)
    bundle = unpacked / "MiniGlot"
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "QT_QPA_PLATFORM": "offscreen"}

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*args], capture_output=True, text=True, env={**env, **extra}, cwd=home, timeout=900)

    test = run(str(bundle / "MiniGlot"), "--self-test")
    assert test.returncode == 0, test.stdout + test.stderr[-3000:]
    assert re.fullmatch(r"MiniGlot \S+ self-test OK: 4 stages, .*multilingual-e5-small.*, [\d.]+ s\n", test.stdout)
    assert run(str(bundle / "miniglot-cli"), "--help").returncode == 0
    # the e5 teacher is converted with sentencepiece's data files, which no PyInstaller hook collects
    inspect = run(str(bundle / "miniglot-cli"), "inspect", "packaged:multilingual-e5-small")
    assert inspect.returncode == 0 and "250,002 entries" in inspect.stdout, inspect.stderr[-3000:]
    hub = run(str(bundle / "miniglot-cli"), "inspect", "hub:google-bert/bert-base-multilingual-cased")
    assert hub.returncode == 1 and "hub is not reachable" in hub.stderr
    install = run(str(bundle / "install.sh"), XDG_DATA_HOME=str(home / "data"))
    assert install.returncode == 0, install.stderr
    entry = (home / "data" / "applications" / "miniglot.desktop").read_text(encoding="utf-8")
    assert f'Exec="{bundle / "MiniGlot"}"' in entry.splitlines()


def test_the_reload_check_tokenises_within_the_models_positions(tmp_path):
    """A 64-position model (the bundled tiny BERT) and validation lines longer than that: the check reloads it."""
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM

    from engine.resources import SAMPLES

    folder = tmp_path / "tiny-bert"
    shutil.copytree(SAMPLES / "tiny-bert", folder)
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(folder)).save_pretrained(folder)
    loaded = load_model(folder)
    assert loaded.config.max_position_embeddings < 100
    long_line = " ".join(["kali muto rane sipo hawu"] * 40)
    result = verify.verify_folder(folder, loaded, [long_line, "sipo hawu!"])
    assert result["problems"] == []
