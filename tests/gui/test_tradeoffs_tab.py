"""gui.tradeoffs_tab: points from run folders, Pareto front, size switch, score choice, table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from gui.runs_model import RunsModel, summarise
from gui.tradeoff_points import NONE, load_points, pareto_front
from gui.tradeoffs_tab import TradeoffsTab

STAGES = [("distill", 60_000_000, 240_000_000), ("prune", 50_000_000, 200_000_000),
          ("shrink", 20_000_000, 80_000_000), ("trim_vocab", 5_000_000, 20_000_000)]
NER = {"teacher": 0.80, "01-distill": 0.78, "02-prune": 0.79, "03-shrink": 0.70, "04-trim_vocab": 0.72}


def write_run(folder: Path, name: str, stages=STAGES, ner: dict | None = NER, fidelity: bool = False) -> Path:
    run = folder / name
    run.mkdir(parents=True)
    manifest = {"status": "completed", "teacher": {"source": "packaged:multilingual-e5-small", "params": 100_000_000},
                "stages": [{"kind": k, "status": "completed", "model_dir": f"stages/{i:02d}-{k}/model", "params": p,
                            "bytes": b, **({"quality": {"fidelity": 1 - 0.05 * i}} if fidelity else {})}
                           for i, (k, p, b) in enumerate(stages, start=1)]}
    (run / "manifest.json").write_text(json.dumps(manifest))
    if ner is not None:
        names = list(ner)
        results = [{"model": n, "task": "ner", "metric": "f1", "mean": v, "std": 0.01, "seeds": 3}
                   for n, v in ner.items()]
        results += [{"model": n, "task": "ner", "metric": "precision", "mean": 0.5, "std": 0, "seeds": 3}
                    for n in names]
        models = [{"name": "teacher", "path": "/t", "params": 100_000_000, "bytes": 410_000_000}]
        models += [{"name": n, "path": "/s", "params": p, "bytes": b,
                    "fidelity": {"similarity_correlation": 0.9 - 0.1 * i, "sentence_cosine": None}}
                   for i, (n, (_, p, b)) in enumerate(zip(names[1:], stages, strict=True))]
        (run / "eval").mkdir()
        (run / "eval" / "summary.json").write_text(json.dumps({"teacher": "teacher", "results": results,
                                                               "models": models}))
    return run


def test_pareto_front_keeps_only_non_dominated_points():
    xs, ys = [1.0, 2.0, 3.0, 4.0, 2.0], [50.0, 70.0, 60.0, 80.0, 70.0]
    assert pareto_front(xs, ys) == [0, 1, 4, 3]  # 2 is beaten by 1 (smaller and better); 1 and 4 tie
    assert pareto_front([3.0, 1.0], [10.0, 20.0]) == [1]
    assert pareto_front([], []) == []


def test_load_points_reads_manifest_and_summary(tmp_path):
    points = load_points(summarise(write_run(tmp_path, "run-a")))
    assert [p.name for p in points] == ["teacher", "01-distill", "02-prune", "03-shrink", "04-trim_vocab"]
    teacher = points[0]
    assert (teacher.params, teacher.bytes, teacher.bytes_estimated) == (100_000_000, 410_000_000, False)
    assert points[3].scores["ner:f1"] == (0.70, 0.01)
    assert "ner:precision" not in points[3].scores  # only each task's headline metric
    assert points[1].scores["fidelity:similarity_correlation"] == (pytest.approx(0.9), 0.0)
    assert "fidelity:sentence_cosine" not in points[1].scores
    bare = load_points(summarise(write_run(tmp_path, "run-b", ner=None)))
    assert bare[0].bytes_estimated and bare[0].bytes == 400_000_000 and not bare[2].scores


def test_tab_plots_scores_labels_front_and_table(qtbot, tmp_path):
    run = write_run(tmp_path, "20260101-000000-a")
    tab = TradeoffsTab(RunsModel(tmp_path))
    qtbot.addWidget(tab)
    assert tab.score == "ner:f1"
    assert [p.name for p in tab.chart.shown] == list(NER)
    assert [label.toPlainText() for label in tab.chart.labels] == list(NER)
    (scatter,) = tab.chart.scatters
    xs, ys = scatter.getData()
    assert list(xs) == pytest.approx([math.log10(p) for p in (100, 60, 50, 20, 5)])
    assert list(ys) == pytest.approx([80, 78, 79, 70, 72])
    # 01-distill (60M, 78) is beaten by 02-prune (50M, 79); 03-shrink by 04-trim_vocab
    assert sorted(tab.chart.shown[i].name for i in tab.chart.front) == ["02-prune", "04-trim_vocab", "teacher"]
    front_x, _ = tab.chart.front_curve.getData()
    assert list(front_x) == sorted(front_x)
    assert "60,000,000 parameters" in scatter.opts["tip"](x=0, y=0, data=1)

    table = [[tab.table.item(r, c).text() for c in range(tab.table.columnCount())]
             for r in range(tab.table.rowCount())]
    assert table[1][:6] == [run.name, "01-distill", "60.00", "240.0", "78.00 ± 1.00", "+2.00"]
    assert [row[7] for row in table] == ["✓", "", "✓", "", "✓"]

    tab.size_combo.setCurrentIndex(tab.size_combo.findData("mb"))
    xs, _ = tab.chart.scatters[0].getData()
    assert list(xs) == pytest.approx([math.log10(m) for m in (410, 240, 200, 80, 20)])
    assert "MB" in tab.chart.plot.getPlotItem().getAxis("bottom").labelText

    tab.score_combo.setCurrentIndex(tab.score_combo.findData("fidelity:similarity_correlation"))
    assert tab.chart.shown[0].name == "teacher" and tab.table.item(0, 4).text() == "100.00 ± 0.00"


def test_unevaluated_run_shows_size_per_stage_and_runs_compare(qtbot, tmp_path):
    write_run(tmp_path, "20260101-000000-a")
    bare = write_run(tmp_path, "20260102-000000-b", stages=STAGES[:2], ner=None)
    tab = TradeoffsTab(RunsModel(tmp_path))
    qtbot.addWidget(tab)
    assert tab.run_list.count() == 2
    tab.checked = set()
    tab.show_run(bare)
    assert [tab.score_combo.itemData(i) for i in range(tab.score_combo.count())] == [NONE]
    _, ys = tab.chart.scatters[0].getData()
    assert list(ys) == [0, 1, 2] and tab.chart.front == []
    assert "sizes only" in tab.note.text()

    for i in range(tab.run_list.count()):
        tab.run_list.item(i).setCheckState(Qt.CheckState.Checked)
    assert tab.score == "ner:f1" and len(tab.chart.scatters) == 1  # the bare run has no NER score
    assert "20260102-000000-b" in tab.note.text()
    tab.score_combo.setCurrentIndex(tab.score_combo.findData(NONE))
    assert len(tab.chart.scatters) == 2 and len(tab.chart.shown) == 8


def test_every_stage_recorded_fidelity_gives_an_unevaluated_run_a_score_axis(qtbot, tmp_path):
    run = write_run(tmp_path, "20260103-000000-c", ner=None, fidelity=True)
    fidelity = [p.scores["stage:fidelity"][0] for p in load_points(summarise(run))]
    assert fidelity == pytest.approx([1.0, 0.95, 0.9, 0.85, 0.8])
    tab = TradeoffsTab(RunsModel(tmp_path))
    qtbot.addWidget(tab)
    assert tab.score == "stage:fidelity" and len(tab.chart.shown) == 5 and tab.chart.front


def test_a_planned_runs_tried_candidates_are_drawn_as_trials_apart_from_the_front(qtbot, tmp_path):
    run = write_run(tmp_path, "20260103-000000-p", ner=None, fidelity=True)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["plan"] = {"target_params": 20_000_000, "ranked_by": "fidelity", "winner": "a", "candidates": [
        {"name": "a", "params": 19_000_000, "status": "tried", "fidelity": 0.99},  # would dominate every stage
        {"name": "b", "params": 18_000_000, "status": "tried", "fidelity": 0.7},
        {"name": "c", "params": 17_000_000, "status": "not tried (time budget)"}]}
    (run / "manifest.json").write_text(json.dumps(manifest))
    tab = TradeoffsTab(RunsModel(tmp_path))
    qtbot.addWidget(tab)
    assert tab.score == "stage:fidelity"
    shown = tab.chart.shown
    assert [p.name for p in shown if p.trial] == ["trial a", "trial b"]  # the untried one has no score
    assert tab.chart.front and not any(shown[i].trial for i in tab.chart.front)
    assert "planner's short trial run" in tab.table.item(len(shown) - 2, 0).toolTip()
    tab.score_combo.setCurrentIndex(tab.score_combo.findData(NONE))
    assert not any(p.trial for p in tab.chart.shown)  # sizes per stage: trials are no stage


def test_each_stages_retrieval_score_is_a_score_axis_with_the_teachers_own(qtbot, tmp_path):
    run = write_run(tmp_path, "20260103-000000-r", ner=None, fidelity=True)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["teacher"]["retrieval"] = {"top1": 0.97, "mrr": 0.98}
    for i, stage in enumerate(manifest["stages"], start=1):
        stage["quality"]["retrieval_top1"] = 0.97 - 0.05 * i
    (run / "manifest.json").write_text(json.dumps(manifest))
    top1 = [p.scores["stage:retrieval_top1"][0] for p in load_points(summarise(run))]
    assert top1 == pytest.approx([0.97, 0.92, 0.87, 0.82, 0.77])
    tab = TradeoffsTab(RunsModel(tmp_path))
    qtbot.addWidget(tab)
    choices = {tab.score_combo.itemData(i): tab.score_combo.itemText(i) for i in range(tab.score_combo.count())}
    assert choices["stage:retrieval_top1"] == "retrieval top-1 (validation text → translations)"


def test_a_stage_level_with_the_teacher_shows_no_negative_zero_drop(qtbot, tmp_path):
    write_run(tmp_path, "20260104-000000-d", ner={**NER, "01-distill": 0.800001, "02-prune": 0.81})
    tab = TradeoffsTab(RunsModel(tmp_path))
    qtbot.addWidget(tab)
    assert [tab.table.item(r, 5).text() for r in (1, 2)] == ["+0.00", "-1.00"]


def test_a_task_scored_on_two_data_sets_gives_two_score_axes(tmp_path):
    run = write_run(tmp_path, "20260105-000000-e", stages=STAGES[:1], ner={"teacher": 0.8, "01-distill": 0.7})
    summary_file = run / "eval" / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary["results"] = [{"model": n, "task": f"topic@{data}", "metric": metric, "mean": mean, "std": 0.0}
                          for n in ("teacher", "01-distill") for data, mean in (("swh", 0.7), ("mlt", 0.6))
                          for metric in ("macro_f1", "accuracy")]
    summary_file.write_text(json.dumps(summary))
    teacher, distilled = load_points(summarise(run))[:2]
    assert distilled.scores["topic@mlt:macro_f1"] == (0.6, 0.0)
    assert {key for key in teacher.scores if key.startswith("topic")} == {"topic@swh:macro_f1", "topic@mlt:macro_f1"}
