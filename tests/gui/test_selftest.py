"""`miniglot --self-test`'s failure line (its success runs from the installed wheel, tests/test_install.py, and from
the bundle, tests/test_bundle.py)."""

from __future__ import annotations

from gui import selftest


def test_a_failing_check_is_one_line_and_exit_1(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(selftest, "RECIPE", tmp_path / "missing.toml")
    assert selftest.main() == 1
    out = capsys.readouterr().out
    assert out == f"self-test FAILED: recipe file not found: {tmp_path / 'missing.toml'}\n"
