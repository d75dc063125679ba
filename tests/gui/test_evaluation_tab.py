"""gui.evaluation_tab: results from a run folder, a background evaluation (engine faked), cancel, exports."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import engine.evaluate.runner as runner
import engine.models.loading as loading
from engine.errors import MiniGlotError
from engine.events import EvalDevScore, EvalProgress, EvalResult
from gui import evaluation_tab
from gui.eval_models import OTHER, ModelChoice, plan_models
from gui.evaluation_tab import EvaluationTab
from gui.runs_model import RunsModel

NAMES = ["teacher", "01-distill", "02-shrink"]
POS = {"teacher": 0.90, "01-distill": 0.88, "02-shrink": 0.80}


def summary(names=NAMES, pos=POS) -> dict:
    results = [{"model": n, "task": "pos", "metric": "accuracy", "mean": pos[n], "std": 0.01, "seeds": 2}
               for n in names]
    results += [{"model": n, "task": "topic", "metric": "macro_f1", "mean": pos[n] - 0.2, "std": 0.02, "seeds": 2}
                for n in names]
    models = [{"name": n, "path": f"/m/{n}", "params": 10_000_000 // (i + 1), "bytes": 40_000_000 // (i + 1),
               "speedup_latency": 1.0 + i, "speedup_throughput": 1.0 + 2 * i} for i, n in enumerate(names)]
    return {"teacher": names[0], "results": results, "models": models}


def write_run(folder: Path, name: str = "20260101-000000-run", with_summary: bool = True) -> Path:
    run = folder / name
    stages = [{"kind": "distill", "status": "completed", "model_dir": "stages/01-distill/model", "params": 5_000_000},
              {"kind": "shrink", "status": "completed", "model_dir": "stages/02-shrink/model", "params": 3_000_000}]
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps(
        {"status": "completed", "teacher": {"source": "packaged:tiny", "params": 10_000_000}, "stages": stages}))
    if with_summary:
        (run / "eval").mkdir()
        (run / "eval" / "summary.json").write_text(json.dumps(summary()))
    return run


def cells(table) -> list[list[str]]:
    return [[table.item(r, c).text() for c in range(table.columnCount())] for r in range(table.rowCount())]


def make_tab(qtbot, runs_dir: Path) -> EvaluationTab:
    tab = EvaluationTab(RunsModel(runs_dir))
    qtbot.addWidget(tab)
    return tab


@pytest.fixture()
def fake_sources(monkeypatch):
    monkeypatch.setattr(loading, "resolve_source", lambda source: Path(source))


def test_plan_models_names_and_reference_order():
    a = [ModelChoice("a", "01-distill", "/a/1"), ModelChoice("a", "teacher", "hub:x", teacher=True)]
    assert plan_models(a) == [("teacher", "hub:x"), ("01-distill", "/a/1")]
    b = [*a, ModelChoice("b", "teacher", "hub:x", teacher=True), ModelChoice("b", "01-distill", "/b/1"),
         ModelChoice(OTHER, "01-distill", "/o/01-distill")]
    assert plan_models(b) == [("teacher", "hub:x"), ("a-01-distill", "/a/1"), ("b-01-distill", "/b/1"),
                              ("01-distill", "/o/01-distill")]


def test_opening_a_run_with_results_fills_table_and_charts(qtbot, tmp_path):
    run = write_run(tmp_path)
    tab = make_tab(qtbot, tmp_path)
    tab.show_run(run)
    assert [c.name for c in tab.chosen()] == NAMES
    assert tab.options.output_dir() == run.resolve() / "eval"
    header = [tab.results.table.horizontalHeaderItem(c).text() for c in range(tab.results.table.columnCount())]
    assert header[:4] == ["model", "pos accuracy", "pos drop (pts)", "pos drop (%)"]
    rows = cells(tab.results.table)
    assert [r[0] for r in rows] == NAMES
    assert rows[2][1:3] == ["80.0 ± 1.0", "+10.0"]
    assert tab.results.plots.bars["pos"] == pytest.approx({"teacher": 90, "01-distill": 88, "02-shrink": 80})
    assert tab.results.plots.bars["topic"]["02-shrink"] == pytest.approx(60)
    assert tab.results.plots.bars["speed"] == pytest.approx({"teacher": 1, "01-distill": 2, "02-shrink": 3})
    assert set(tab.results.plots.shown) == {"pos", "topic", "speed"}


def test_exports_write_csv_markdown_and_pngs(qtbot, tmp_path):
    tab = make_tab(qtbot, tmp_path / "none")
    tab.results.show_summary(summary())
    tab.results.export_table(tmp_path / "out.csv")
    tab.results.export_table(tmp_path / "out.md")
    csv_lines = (tmp_path / "out.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,pos accuracy,pos drop (pts)") and len(csv_lines) == 4
    assert (tmp_path / "out.md").read_text().startswith("| model | pos accuracy |")
    written = tab.results.export_plots(tmp_path / "png")
    assert sorted(p.name for p in written) == ["eval-pos.png", "eval-speed.png", "eval-topic.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_running_an_evaluation_shows_progress_rows_and_results(qtbot, tmp_path, monkeypatch, fake_sources):
    calls = []

    def fake_evaluate(plan, out_dir, sink, token=None):
        calls.append((plan, Path(out_dir)))
        jobs = [(t, m.name, s) for t, _ in plan.tasks for m in plan.models for s in range(plan.config.seeds)]
        for done, (task, model, seed) in enumerate(jobs):
            sink.emit(EvalProgress(done=done, total=len(jobs), task=task, model=model, seed=seed))
            sink.emit(EvalDevScore(task=task, model=model, seed=seed, metric="accuracy", value=0.5, epoch=1))
            sink.emit(EvalResult(model=model, task=task, seed=seed, metrics={"accuracy": POS[model]}))
        sink.emit(EvalProgress(done=len(jobs), total=len(jobs), eta_seconds=0.0))
        return summary([m.name for m in plan.models])

    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    run = write_run(tmp_path, with_summary=False)
    tab = make_tab(qtbot, tmp_path)
    tab.show_run(run)
    assert tab.results.table.rowCount() == 0
    tab.tasks.cellWidget(0, 1).setText(str(tmp_path / "pos-data"))
    tab.options.seeds.setValue(2)
    tab.options.speed.setChecked(False)
    tab.options.learning_rate.setText("2e-4")
    with qtbot.waitSignal(tab.evaluation_finished, timeout=60_000) as finished:
        worker = tab.start()
        assert worker is not None and not tab.run_button.isEnabled() and tab.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not tab.is_running())
    plan, out = calls[0]
    assert finished.args == [run.resolve() / "eval"] and out == run.resolve() / "eval"
    assert [m.name for m in plan.models] == NAMES and plan.models[0].path == Path("packaged:tiny")
    assert plan.tasks == (("pos", str(tmp_path / "pos-data")),) and plan.config.seeds == 2 and not plan.config.speed
    assert plan.config.learning_rate == 2e-4
    assert (tab.progress.value(), tab.progress.maximum()) == (6, 6)
    assert tab.results.live.rowCount() == 6 and tab.results.live.item(5, 3).text() == "accuracy 80.0"
    assert [r[0] for r in cells(tab.results.table)] == NAMES
    assert tab.run_button.isEnabled() and not tab.cancel_button.isEnabled()


def test_cancel_ends_the_worker(qtbot, tmp_path, monkeypatch, fake_sources):
    def slow_evaluate(plan, out_dir, sink, token=None):
        sink.emit(EvalProgress(done=0, total=10, task="pos", model="teacher"))
        while True:
            token.raise_if_cancelled()
            time.sleep(0.01)

    monkeypatch.setattr(runner, "evaluate", slow_evaluate)
    tab = make_tab(qtbot, tmp_path)
    tab.show_run(write_run(tmp_path, with_summary=False))
    tab.tasks.cellWidget(0, 1).setText("hub:some/dataset")
    worker = tab.start()
    qtbot.waitUntil(lambda: tab.progress.maximum() == 10, timeout=60_000)
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        tab.cancel()
    assert not tab.is_running() and tab.results.summary is None
    assert "cancelled" in tab.results.status.text() and tab.run_button.isEnabled()


def test_failure_is_reported_and_missing_inputs_refuse_to_start(qtbot, tmp_path, monkeypatch, fake_sources):
    def broken(plan, out_dir, sink, token=None):
        raise MiniGlotError("no such dataset")

    errors = []
    monkeypatch.setattr(runner, "evaluate", broken)
    monkeypatch.setattr(evaluation_tab, "show_error", lambda parent, title, message, details="":
                        errors.append(message))
    tab = make_tab(qtbot, tmp_path)
    tab.show_run(write_run(tmp_path, with_summary=False))
    assert tab.start() is None and "task" in tab.results.status.text()  # no task data yet
    tab.tasks.cellWidget(0, 1).setText("hub:missing")
    tab.options.learning_rate.setText("fast")
    assert tab.start() is None and "evaluation.learning_rate must be a number" in tab.results.status.text()
    tab.options.learning_rate.setText("1.5")  # the message a recipe with this rate gets
    assert tab.start() is None and "evaluation.learning_rate must be 0 (task default)" in tab.results.status.text()
    tab.options.learning_rate.setText("")
    worker = tab.start()
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass  # signals reach the GUI thread only once the event loop runs, i.e. inside the wait
    assert errors == ["no such dataset"] and "failed" in tab.results.status.text()


def test_a_task_scored_on_two_data_sets_gets_a_chart_per_data_set(qtbot):
    from gui.eval_charts import ResultPlots

    plots = ResultPlots()
    qtbot.addWidget(plots)
    results = [{"model": n, "task": f"topic@{data}", "metric": metric, "mean": mean, "std": 0.0, "seeds": 1}
               for n in NAMES for data, mean in (("sib_swh", 0.7), ("sib_mlt", 0.6))
               for metric in ("macro_f1", "accuracy")]
    plots.show_summary({"teacher": "teacher", "results": results, "models": []})
    assert set(plots.shown) == {"topic@sib_swh", "topic@sib_mlt"}
    assert plots.bars["topic@sib_mlt"] == pytest.approx(dict.fromkeys(NAMES, 60))


def test_each_task_choice_says_what_it_is_and_which_files_it_reads(qtbot):
    from PySide6.QtCore import Qt

    from gui.eval_form import TaskTable

    table = TaskTable()
    qtbot.addWidget(table)
    table.add_row("ner")
    combo = table.cellWidget(0, 0)
    tips = {combo.itemText(i): combo.itemData(i, Qt.ItemDataRole.ToolTipRole) for i in range(combo.count())}
    assert tips["ner"] == "named-entity recognition (IOB): .txt, .conll, .iob, .iob2, .bio, .tsv"
    assert tips["pos"] == "part-of-speech tagging (UPOS): .conllu, .conll"
    assert tips["retrieval"] == "cross-lingual retrieval (two line-aligned text files): .dev, .devtest, .txt"
    assert set(tips) == {"pos", "ner", "sentiment", "topic", "retrieval"}
