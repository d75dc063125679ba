"""`miniglot --self-test` outside a bundle: one summary line and exit 0, or one failure line and exit 1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from gui import selftest

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(r"^MiniGlot \S+ self-test OK: 4 stages, (\d+)k -> (\d+)k params, reload max diff (\S+), "
                     r"offline data: [\d,]+ Chichewa verses, teachers .+, [\d.]+ s$")


def test_self_test_compresses_reloads_and_opens_the_window(tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "gui.app", "--self-test"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    match = SUMMARY.match(lines[0])
    assert match, lines[0]
    teacher, student, diff = int(match[1]), int(match[2]), float(match[3])
    assert student < teacher / 2 and diff <= 1e-4
    assert not list(tmp_path.iterdir()), "the self-test leaves nothing behind"


def test_a_failing_check_is_one_line_and_exit_1(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(selftest, "RECIPE", tmp_path / "missing.toml")
    assert selftest.main() == 1
    out = capsys.readouterr().out
    assert out == f"self-test FAILED: recipe file not found: {tmp_path / 'missing.toml'}\n"
