"""gui.task_tab: a tiny encoder trained from the tab through the worker on synthetic data (curves, scores beside
the teacher's, Try it), cancel leaving nothing behind, the form's choices and a model already on disk."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from test_evaluation_tab import write_run
from test_finetune import FILLER, KEYWORDS
from test_taskmodel import write_ner, write_sentiment

from engine.configs import TaskModelConfig
from engine.data.tasks import word_spans
from engine.events import Collect
from engine.taskmodel import build_task_model
from gui import task_tab
from gui.runs_model import RunsModel
from gui.task_form import encoder_choices
from gui.task_jobs import in_text
from gui.task_tab import TaskModelTab
from gui.worker import COMPLETED

TRAINING_MS = 240_000


def make_tab(qtbot, tmp_path: Path, encoder: Path) -> TaskModelTab:
    tab = TaskModelTab(RunsModel(tmp_path / "runs"))
    qtbot.addWidget(tab)
    tab.form.add_encoder_folder(encoder)
    return tab


def train(qtbot, tab: TaskModelTab):
    with qtbot.waitSignal(tab.running_changed, timeout=5_000):
        worker = tab.start()
    assert worker is not None, tab.status.text()
    with qtbot.waitSignal(worker.finished, timeout=TRAINING_MS) as finished:
        pass
    return finished.args[0]


def cells(table) -> list[list[str]]:
    return [[table.item(r, c).text() for c in range(table.columnCount())] for r in range(table.rowCount())]


def header(table) -> list[str]:
    return [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]


def ask(qtbot, tab: TaskModelTab, text: str) -> None:
    tab.try_it.input.setText(text)
    with qtbot.waitSignal(tab.try_it.asked, timeout=1_000):
        qtbot.keyClick(tab.try_it.input, Qt.Key.Key_Return)
    with qtbot.waitSignal(tab.labelling.finished, timeout=120_000):
        pass


@pytest.fixture(scope="module")
def sentiment_teacher(tmp_path_factory, tiny_teacher) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sentiment")
    data = write_sentiment(root / "data", n_train=40)
    build_task_model(str(tiny_teacher), TaskModelConfig("sentiment", str(data), epochs=1), root / "teacher",
                     Collect())
    return data, root / "teacher"


def test_the_form_offers_final_students_packaged_teachers_and_folders(qtbot, tmp_path, tiny_teacher):
    run = write_run(tmp_path / "runs", with_summary=False)
    tab = TaskModelTab(RunsModel(tmp_path / "runs"))
    qtbot.addWidget(tab)
    labels = [tab.form.encoder.itemText(i) for i in range(tab.form.encoder.count())]
    assert labels[0] == f"{run.name} · 02-shrink (3.0M)"  # the final student only
    assert any("packaged" in label for label in labels[1:])
    assert tab.form.output_dir() == tmp_path.resolve() / "task-models" / f"{run.name}-ner"
    assert "IOB" in tab.form.task.itemData(tab.form.task.findText("ner"), Qt.ItemDataRole.ToolTipRole)
    assert tab.form.task.findText("retrieval") == -1  # no task model is trained for retrieval
    tab.form.task.setCurrentText("pos")
    assert tab.form.output_dir().name == f"{run.name}-pos"
    tab.form.add_encoder_folder(tiny_teacher)
    assert tab.form.encoder.currentData().source == str(tiny_teacher.resolve())
    assert tab.form.output_dir().name == "bert-pos"
    assert [c.name for c in encoder_choices([], [tiny_teacher])][-1] == "bert"

    assert tab.start() is None and "task data" in tab.status.text()  # nothing starts without data
    tab.form.data.setText(str(tmp_path))
    tab.form.distill.setChecked(True)
    assert tab.start() is None and "teacher task model" in tab.status.text()


def test_training_a_tagger_from_the_tab_shows_curves_scores_and_spans(qtbot, tmp_path, tiny_teacher):
    tab = make_tab(qtbot, tmp_path, tiny_teacher)
    tab.form.data.setText(str(write_ner(tmp_path / "ner", n_train=80)))
    tab.form.epochs.setValue(2)
    out = tab.form.output_dir()
    trained = []
    tab.model_trained.connect(trained.append)
    assert train(qtbot, tab).status == COMPLETED
    assert trained and trained[0].folder == out and (out / "config.json").is_file()
    assert tab.curves.loss.n > 0 and tab.curves.dev.n == 2  # a loss per step, a dev score per epoch
    assert header(tab.scores.table)[:4] == ["Model", "Parameters", "dev F1", "test F1"]
    rows = cells(tab.scores.table)
    assert len(rows) == 1 and rows[0][0] == "task model" and float(rows[0][3]) >= 0
    assert tab.progress.value() == tab.progress.maximum() and "Finished" in tab.eta.text()

    ask(qtbot, tab, "ne żato po ċebo si")
    assert "ms" in tab.try_it.timing.text() and "loaded" in tab.try_it.timing.text()
    assert header(tab.try_it.details) == ["Words", "Tag", "Score"]
    ask(qtbot, tab, "żimu")  # the pipeline is loaded once per folder
    assert "loaded" not in tab.try_it.timing.text()
    text = "ne  żato, (po) ċebo si."  # tagged word by word: punctuation is a word of its own
    bounds = {offset for span in word_spans(text) for offset in span}
    assert all({item["start"], item["end"]} <= bounds and item["word"] == text[item["start"]:item["end"]]
               for item in tab.labeller(out, text).items)

    exported = []
    tab.export_requested.connect(exported.append)
    tab.export_button.click()
    assert exported == [out]

    again = make_tab(qtbot, tmp_path, tiny_teacher)  # a task model already in the output folder is shown
    qtbot.waitUntil(lambda: again.model is not None, timeout=30_000)
    assert cells(again.scores.table) == rows and again.export_button.isEnabled()


def test_a_distilled_classifier_shows_the_teachers_scores_and_labels_text(qtbot, tmp_path, tiny_teacher,
                                                                          sentiment_teacher):
    data, teacher = sentiment_teacher
    rng = random.Random(3)
    unlabelled = tmp_path / "unlabelled.txt"
    keywords = [word for words in KEYWORDS.values() for word in words]
    unlabelled.write_text("\n".join(" ".join([*rng.choices(FILLER, k=4), rng.choice(keywords)])
                                    for _ in range(30)) + "\n", encoding="utf-8")
    tab = make_tab(qtbot, tmp_path, tiny_teacher)
    tab.form.task.setCurrentText("sentiment")
    tab.form.data.setText(str(data))
    tab.form.epochs.setValue(1)
    tab.form.distill.setChecked(True)
    tab.form.teacher.setText(str(teacher))
    tab.form.unlabelled.setText(str(unlabelled))
    with qtbot.waitActive(tab):
        tab.show()
        tab.activateWindow()
    tab.form.data.setFocus()
    with qtbot.waitSignal(tab.running_changed, timeout=5_000):  # Ctrl+Enter trains
        qtbot.keyClick(tab.form.data, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    with qtbot.waitSignal(tab.worker.finished, timeout=TRAINING_MS):
        pass
    facts = json.loads((tab.form.output_dir() / "miniglot_task.json").read_text())
    assert facts["distilled"] and facts["unlabelled"] == 30
    rows = cells(tab.scores.table)
    assert [row[0] for row in rows] == ["task model", "teacher"]
    assert rows[1][3] == f"{100 * facts['teacher_test']['macro_f1']:.1f}"
    assert rows[1][2] != "–"  # the teacher was scored on the same data: its dev score shows too

    ask(qtbot, tab, f"ne {KEYWORDS['bad'][0]} po")
    assert header(tab.try_it.details) == ["Label", "Confidence"]
    assert {cells(tab.try_it.details)[i][0] for i in range(3)} == set(KEYWORDS)
    assert "confident" in tab.try_it.answer.text()


def test_spans_over_the_words_the_pipeline_was_given_are_moved_back_into_the_typed_text():
    text = "Benki  ya Dunia.(Dodoma)"
    spans = word_spans(text)  # the pipeline saw "Benki ya Dunia . ( Dodoma )"
    assert in_text({"entity_group": "ORG", "start": 0, "end": 14, "word": "x"}, text, spans) == \
        {"entity_group": "ORG", "start": 0, "end": 15, "word": "Benki  ya Dunia"}
    assert in_text({"start": 15, "end": 16}, text, spans)["word"] == "."
    assert in_text({"start": 19, "end": 25}, text, spans) == {"start": 17, "end": 23, "word": "Dodoma"}


def test_cancel_writes_nothing(qtbot, tmp_path, tiny_teacher):
    tab = make_tab(qtbot, tmp_path, tiny_teacher)
    tab.form.data.setText(str(write_ner(tmp_path / "ner", n_train=320)))
    tab.form.epochs.setValue(3)
    out = tab.form.output_dir()
    worker = tab.start()
    qtbot.waitUntil(lambda: tab.progress.value() >= 1, timeout=TRAINING_MS)
    tab.cancel()
    with qtbot.waitSignal(worker.finished, timeout=60_000) as finished:
        pass
    assert finished.args[0].status == "cancelled"
    assert not out.exists() and not list(out.parent.glob("*partial*"))
    assert "nothing was written" in tab.status.text() and tab.train_button.isEnabled()


def test_a_failed_training_is_shown_in_a_dialog(qtbot, tmp_path, tiny_teacher, monkeypatch):
    errors = []
    monkeypatch.setattr(task_tab, "show_error", lambda parent, title, text, details="": errors.append(text))
    tab = make_tab(qtbot, tmp_path, tiny_teacher)
    tab.form.data.setText(str(tmp_path / "no-such-data"))
    train(qtbot, tab)
    assert errors and "Training failed" in tab.status.text() and tab.train_button.isEnabled()
