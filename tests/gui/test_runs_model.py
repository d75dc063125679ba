"""gui.runs_model: one reading of every manifest shared by the tabs, re-read when a run folder changes."""

from __future__ import annotations

import json
from pathlib import Path

from engine.runfolder import Manifest, RunFolder
from gui.runs_model import RunsModel, newest_run
from gui.runs_tab import RunsTab


def write_run(runs_dir: Path, name: str, status: str = "completed") -> Path:
    run = runs_dir / name
    run.mkdir(parents=True)
    Manifest(run, {"status": status, "language": "nya_Latn",
                   "teacher": {"source": "packaged:tiny", "params": 10_000_000},
                   "stages": [{"kind": "distill", "status": "completed", "model_dir": "stages/01-distill/model",
                               "params": 4_000_000, "bytes": 16_000_000},
                              {"kind": "prune", "status": "pending"}]}).save()
    return run


def test_runs_newest_first_with_what_the_table_shows(tmp_path):
    old = write_run(tmp_path, "20260101-000000-old")
    new = write_run(tmp_path, "20260102-000000-new", status="running")
    (tmp_path / "not-a-run").mkdir()
    model = RunsModel(tmp_path)
    assert [run.path for run in model.runs] == [new.resolve(), old.resolve()] and newest_run(tmp_path) == new.resolve()
    run = model.runs[0]
    assert (run.status, run.language, run.stages) == ("running", "nya_Latn", "distill → prune")
    assert (run.final_params, run.final_bytes, run.teacher_params) == (4_000_000, 16_000_000, 10_000_000)
    assert run.compression == 0.6 and [s.name for s in run.stage_models()] == ["01-distill"]


def test_one_reading_per_refresh_whatever_the_tabs_ask(tmp_path, monkeypatch):
    write_run(tmp_path / "runs", "20260101-000000-a")
    elsewhere = write_run(tmp_path / "other", "20260102-000000-b")
    reads: list[Path] = []
    original = RunFolder.read_manifest
    monkeypatch.setattr(RunFolder, "read_manifest", lambda self: reads.append(self.path) or original(self))
    model = RunsModel(tmp_path / "runs")
    assert len(reads) == 1
    for _ in range(3):
        assert model.summary(elsewhere).status == "completed"
        assert [run.path.name for run in model.with_extra([elsewhere])] == ["20260101-000000-a", elsewhere.name]
    assert len(reads) == 2
    assert model.summary(tmp_path / "other") is None and len(reads) == 3
    model.refresh()  # both runs again, and the folder that is not a run
    assert len(reads) == 6


def test_a_new_run_folder_is_seen_and_the_runs_tab_follows(qtbot, tmp_path):
    write_run(tmp_path, "20260101-000000-a")
    model = RunsModel(tmp_path)
    tab = RunsTab(model)
    qtbot.addWidget(tab)
    tab.table.selectRow(0)
    with qtbot.waitSignal(model.changed, timeout=10_000):
        write_run(tmp_path, "20260102-000000-b")
    assert tab.table.rowCount() == 2 and tab.table.item(0, 0).text() == "20260102-000000-b"
    assert tab.table.selectionModel().selectedRows()[0].row() == 1 and tab.open_button.isEnabled()

    with qtbot.waitSignal(model.changed, timeout=10_000):  # a manifest rewritten in place (atomic rename)
        manifest = json.loads((tmp_path / "20260102-000000-b" / "manifest.json").read_text())
        Manifest(tmp_path / "20260102-000000-b", {**manifest, "status": "failed"}).save()
    assert tab.table.item(0, 1).text() == "failed"
