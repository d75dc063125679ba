"""File → Export to ONNX: the dialog exports in the background and shows the result or the error; the main
window presets it to the shown run's last finished stage model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.export import INT8_FILE, ONNX_FILE, default_out
from gui import export_dialog
from gui.export_dialog import ExportDialog
from gui.main_window import MainWindow


@pytest.fixture()
def dialog(qtbot):
    def make(model_dir: Path | None = None) -> ExportDialog:
        made = ExportDialog(model_dir)
        qtbot.addWidget(made)
        made.open()
        return made

    return make


def test_exports_in_the_background_and_shows_the_result(qtbot, dialog, tiny_teacher, tmp_path, monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(export_dialog, "inform", lambda parent, title, text: shown.append(text))
    form = dialog(tiny_teacher)
    assert form.out.text() == str(default_out(tiny_teacher))
    form.out.setText(str(tmp_path / "onnx"))
    form.int8.setChecked(True)
    with qtbot.waitSignal(form.exported, timeout=180_000) as blocker:
        form.export_button.click()
        assert form.task is not None and not form.export_button.isEnabled() and not form.model.isEnabled()
        form.reject()  # the export cannot be interrupted: closing waits for it
        assert form.isVisible()
    report = blocker.args[0]
    assert report["out"] == str((tmp_path / "onnx").resolve()) and report["fp32"]["max_abs_diff"] <= 1e-4
    assert (tmp_path / "onnx" / ONNX_FILE).is_file() and (tmp_path / "onnx" / INT8_FILE).is_file()
    assert len(shown) == 1 and report["out"] in shown[0] and "max abs diff" in shown[0] and INT8_FILE in shown[0]
    assert not form.isVisible() and form.task is None


def test_an_error_is_shown_and_the_form_stays_open(qtbot, dialog, tmp_path, monkeypatch):
    errors: list[str] = []
    monkeypatch.setattr(export_dialog, "show_error", lambda parent, title, message, details="": errors.append(message))
    form = dialog(tmp_path)  # a folder without config.json
    with qtbot.waitSignal(form.failed, timeout=60_000):
        form.start()
    assert len(errors) == 1 and "has no config.json" in errors[0]
    assert form.isVisible() and form.export_button.isEnabled() and form.model.isEnabled()
    assert not default_out(tmp_path).exists() and not list(tmp_path.parent.glob(f".{tmp_path.name}-onnx.*"))


def test_output_follows_the_model_until_edited_and_onnx_is_required(dialog, tmp_path):
    form = dialog()
    assert form.model.text() == form.out.text() == "" and form.start() is None
    form.model.setText(str(tmp_path / "a"))
    assert form.out.text() == str(tmp_path / "a-onnx")
    form.out.textEdited.emit("mine")  # as when the user types
    form.model.setText(str(tmp_path / "b"))
    assert form.out.text() == str(tmp_path / "a-onnx")
    form.onnx.setChecked(False)
    assert not form.export_button.isEnabled() and form.start() is None and form.task is None


def test_main_window_presets_the_last_finished_stage_model(qtbot, tmp_path):
    run = tmp_path / "run"
    stages = [{"kind": "distill", "status": "completed", "model_dir": "stages/01-distill/model"},
              {"kind": "prune", "status": "completed", "model_dir": "stages/02-prune/model"},
              {"kind": "shrink", "status": "failed"}]
    for stage in stages[:2]:
        (run / stage["model_dir"]).mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"status": "failed", "stages": stages}))
    window = MainWindow(runs_dir=tmp_path / "runs")
    qtbot.addWidget(window)
    window.export_onnx_action.trigger()
    assert window.export_dialog.model.text() == ""
    window.training_tab.run_dir = run
    window.export_onnx_action.trigger()
    model = (run / "stages" / "02-prune" / "model").resolve()
    assert window.export_dialog.model.text() == str(model) and window.export_dialog.isVisible()
    assert window.export_dialog.out.text() == str(model.with_name("model-onnx"))
    assert window.export_onnx_action.shortcut().toString() == "Ctrl+Shift+E"
    window.export_dialog.reject()
    window.close()
