"""Task models that ship (`engine.taskmodel`, `miniglot-cli finetune`): tiny encoders on synthetic tasks."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_finetune import FILLER, KEYWORDS
from tiny import tiny_model_dir

from engine.cli import main as cli
from engine.configs import TaskModelConfig
from engine.data.tasks import load_task
from engine.errors import ModelError, TaskDataError
from engine.events import Collect, Metric, Progress
from engine.taskmodel import TASK_FILE, build_task_model, teacher_predictions, unlabelled_inputs

ENTITIES = {"żato": "PER", "żimu": "PER", "ċebo": "LOC", "ċaha": "LOC"}  # first pieces no other word has
REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("enc") / "bert", "bert", mlm_head=True, layers=2)


def ner_sentence(rng: random.Random) -> list[tuple[str, str]]:
    words = [(w, "O") for w in rng.choices(FILLER, k=rng.randint(3, 8))]
    at = rng.randint(0, len(words))
    name = rng.choice(sorted(ENTITIES))
    words[at:at] = [(name, "B-" + ENTITIES[name])] + ([("għija", "I-" + ENTITIES[name])] if rng.random() < 0.3 else [])
    return words


def write_ner(folder: Path, n_train: int = 320, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", 40), ("test", 40)):
        sentences = ["\n".join(f"{w} {t}" for w, t in ner_sentence(rng)) for _ in range(n)]
        (folder / f"{split}.txt").write_text("\n\n".join(sentences) + "\n", encoding="utf-8")
    return folder


def write_sentiment(folder: Path, n_train: int = 160, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", 40), ("test", 40)):
        rows = ["text,label"]
        for _ in range(n):
            label = rng.choice(sorted(KEYWORDS))
            words = rng.choices(FILLER, k=rng.randint(3, 8))
            words.insert(rng.randint(0, len(words)), rng.choice(KEYWORDS[label]))
            rows.append(f"{' '.join(words)},{label}")
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def ner_teacher(tmp_path_factory, encoder) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("ner")
    data = write_ner(root / "data")
    facts = build_task_model(str(encoder), TaskModelConfig("ner", str(data), epochs=20, learning_rate=3e-3),
                             root / "teacher", Collect())
    return data, root / "teacher", facts


def test_ner_task_model_is_a_stock_tagger_with_the_datas_labels(ner_teacher):
    data, folder, facts = ner_teacher
    from transformers import AutoConfig

    labels = load_task("ner", data).labels
    config = AutoConfig.from_pretrained(folder)
    assert config.architectures == ["BertForTokenClassification"]
    assert [config.id2label[i] for i in range(len(labels))] == list(labels)
    assert {config.label2id[label] for label in labels} == set(range(len(labels)))
    # the synthetic entities are easy (a tagger that finds none scores 0); 40 test sentences, so one entity
    # moves F1 by about 2.5 points: seen at 0.79 in a full suite run (order-dependent), 0.8+ alone
    assert facts["test"]["f1"] > 0.7, facts["test"]
    assert facts["verification"]["problems"] == [] and facts["verification"]["max_abs_diff"]["logits"] <= 1e-4
    written = json.loads((folder / TASK_FILE).read_text())
    assert written["data_fingerprint"] == load_task("ner", data).fingerprint()
    card = (folder / "README.md").read_text()
    assert "pipeline_tag: token-classification" in card and "| test |" in card and "is_split_into_words" in card
    assert not (folder.parent / "teacher.partial").exists()


def test_a_fresh_process_tags_raw_text_by_words_with_the_pipeline(ner_teacher):
    _, folder, _ = ner_teacher
    script = ("import json, sys; from transformers import pipeline\n"
              "tagger = pipeline('token-classification', model=sys.argv[1], aggregation_strategy='first')\n"
              "text = 'ne żato po ċebo si'\n"
              "print(json.dumps([(s['entity_group'], text[s['start']:s['end']]) for s in tagger(text)]))")
    out = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, check=True)
    spans = json.loads(out.stdout.strip().splitlines()[-1])
    assert ["PER", "żato"] in spans and ["LOC", "ċebo"] in spans  # whole words, named by their tag


def test_text_task_model_distils_from_a_teacher_with_unlabelled_text(tmp_path, encoder):
    data = write_sentiment(tmp_path / "data")
    teacher = tmp_path / "teacher"
    build_task_model(str(encoder), TaskModelConfig("sentiment", str(data), epochs=6, learning_rate=3e-3), teacher,
                     Collect())
    rng = random.Random(5)
    unlabelled = tmp_path / "unlabelled.txt"
    keywords = [word for words in KEYWORDS.values() for word in words]
    lines = [" ".join([*rng.choices(FILLER, k=4), rng.choice(keywords)]) for _ in range(120)]
    unlabelled.write_text("\n".join(lines) + "\n", encoding="utf-8")
    events = Collect()
    # alpha = 0: the student sees no gold label, only the teacher's predictions
    facts = build_task_model(str(encoder), TaskModelConfig("sentiment", str(data), unlabelled=(str(unlabelled),),
                                                           epochs=15, learning_rate=3e-3, alpha=0.0),
                             tmp_path / "student", events, teacher=str(teacher), cache=tmp_path)
    assert facts["distilled"] and facts["unlabelled"] == 120
    assert facts["test"]["macro_f1"] > 0.9 and facts["teacher_test"]["macro_f1"] > 0.9, facts
    assert any(isinstance(e, Progress) and e.eta_seconds is not None for e in events.events)
    assert any(isinstance(e, Metric) and e.split == "dev" for e in events.events)
    from transformers import pipeline

    label = pipeline("text-classification", model=str(tmp_path / "student"))(f"ne {KEYWORDS['bad'][0]} po")[0]
    assert label["label"] == "bad"
    assert len(list(tmp_path.glob("teacher-logits-*.npz"))) == 1  # computed once, reused below
    task_data = load_task("sentiment", data)
    first = teacher_predictions(str(teacher), task_data, (), tmp_path, "cpu", events_token())
    assert len(list(tmp_path.glob("teacher-logits-*.npz"))) == 2  # another text set, another file
    again = teacher_predictions(str(teacher), task_data, (), tmp_path, "cpu", events_token())
    np.testing.assert_array_equal(np.stack(first[0].train), np.stack(again[0].train))


def events_token():
    from engine.events import CancelToken

    return CancelToken()


def test_unlabelled_text_leaves_out_dev_and_test_sentences(tmp_path):
    data = load_task("ner", write_ner(tmp_path / "data"))
    held = " ".join(data.test[0].words)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(f"ne kamuli, po.\n{held}\nne kamuli, po.\n", encoding="utf-8")
    assert unlabelled_inputs([str(corpus)], data) == [("ne", "kamuli", ",", "po", ".")]


def test_a_teacher_missing_the_datas_labels_is_refused_in_one_line(tmp_path, ner_teacher, encoder, capsys):
    _, teacher, _ = ner_teacher
    other = tmp_path / "other"
    other.mkdir()
    rng = random.Random(1)
    for split in ("train", "dev", "test"):
        rows = [" ".join(rng.choices(FILLER, k=3)) + " " + "kamuli B-ORG" for _ in range(20)]
        (other / f"{split}.txt").write_text("\n\n".join(row.replace(" ", " O\n", 3) for row in rows) + "\n")
    with pytest.raises(TaskDataError, match=r"does not know the labels \['B-ORG', 'I-ORG'\]"):
        build_task_model(str(encoder), TaskModelConfig("ner", str(other), epochs=1), tmp_path / "s", Collect(),
                         teacher=str(teacher))
    code = cli(["finetune", str(encoder), "--task", "ner", "--data", str(other), "--out", str(tmp_path / "s"),
                "--teacher", str(teacher), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "B-ORG" in err
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()


def test_a_task_model_of_another_kind_is_refused_as_model_and_teacher(tmp_path, ner_teacher, encoder, capsys):
    _, tagger, _ = ner_teacher
    data = write_sentiment(tmp_path / "data", n_train=20)
    with pytest.raises(ModelError, match=r"token-classification model .* task topic needs a text"):
        build_task_model(str(tagger), TaskModelConfig("topic", str(data)), tmp_path / "s", Collect())
    code = cli(["finetune", str(encoder), "--task", "sentiment", "--data", str(data), "--out", str(tmp_path / "s"),
                "--teacher", str(tagger), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "the teacher" in err and "token-classification" in err
    with pytest.raises(ModelError, match="not a task model"):
        build_task_model(str(encoder), TaskModelConfig("sentiment", str(data)), tmp_path / "s", Collect(),
                         teacher=str(encoder))


def test_cli_json_names_the_folder_and_scores(tmp_path, encoder, capsys):
    data = write_sentiment(tmp_path / "data", n_train=40)
    out = tmp_path / "model"
    assert cli(["finetune", str(encoder), "--task", "sentiment", "--data", str(data), "--out", str(out),
                "--epochs", "1", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["out"] == str(out.resolve()) and result["task"] == "sentiment" and result["headline"] == "macro_f1"
    assert set(result["dev"]) >= {"macro_f1", "accuracy"} and set(result["test"]) >= {"macro_f1", "accuracy"}
    assert "teacher_test" not in result
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    assert cli(["finetune", str(encoder), "--task", "sentiment", "--data", str(data), "--out",
                str(tmp_path / "busy"), "--quiet"]) == 1
    assert "not a MiniGlot task model" in capsys.readouterr().err
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep"


def test_a_full_disk_while_a_task_model_is_saved_names_the_folder_and_leaves_nothing(tmp_path, encoder, monkeypatch):
    import transformers.modeling_utils as modeling_utils
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from engine.runfolder import DiskFull
    from engine.taskmodel import write_task_model

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(modeling_utils, "safe_save_file", full_disk)
    model = AutoModelForSequenceClassification.from_pretrained(encoder, num_labels=2)
    data = load_task("sentiment", str(write_sentiment(tmp_path / "data")), seed=0)
    out = tmp_path / "model"
    with pytest.raises(DiskFull, match=f"^the disk is full: saving {out} needs about .* MB free\\); free some space$"):
        write_task_model(model, AutoTokenizer.from_pretrained(encoder), {}, data, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_task_model_keeps_no_remote_code(tmp_path, remote_code_teacher):
    config = TaskModelConfig(task="sentiment", data=str(write_sentiment(tmp_path / "data")), epochs=1)
    build_task_model(str(remote_code_teacher), config, tmp_path / "model", Collect())
    for name in ("config.json", "tokenizer_config.json"):
        assert "auto_map" not in json.loads((tmp_path / "model" / name).read_text()), name


def test_a_mount_point_as_the_output_is_refused_before_training(tmp_path, encoder, monkeypatch, capsys):
    data = write_sentiment(tmp_path / "data", n_train=20)
    mount = tmp_path / "mnt"
    mount.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == mount or real(path))
    assert cli(["finetune", str(encoder), "--task", "sentiment", "--data", str(data), "--out", str(mount),
                "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a mount point" in err and str(mount / "task-model") in err
