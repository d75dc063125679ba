"""ONNX export: tiny BERT and XLM-R encoders export to a self-contained folder, run in ONNX Runtime like
PyTorch on new text at other batch sizes and lengths, the int8 copy keeps the MLM head's predictions, task
models (a token and a text one) export with their head (`logits`) and their facts, and `miniglot-cli export`
answers with exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_taskmodel import write_ner, write_sentiment
from tiny import sentences, tiny_model_dir
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from engine import export, taskmodel
from engine.cli import main
from engine.configs import TaskModelConfig
from engine.errors import VerificationError
from engine.events import Collect
from engine.export import INT8_FILE, ONNX_FILE, REPORT_FILE, export_onnx, onnx_session
from engine.runfolder import TASK_FILE

REPO = Path(__file__).resolve().parents[1]
TEXTS = sentences(12, seed=7)  # not the texts the export checked itself with


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module", params=["bert", "xlm-roberta"])
def exported(request, tiny_models, tmp_path_factory) -> tuple[str, Path, dict]:
    """(family, output folder, report) of each tiny MLM model exported once with int8."""
    out = tmp_path_factory.mktemp("export") / request.param
    return request.param, out, export_onnx(tiny_models[request.param], out, int8=True, threads=1)


def reference(model_dir: Path, texts: list[str]):
    """PyTorch's hidden states and MLM logits, and the attention mask, for `texts` padded together."""
    model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    enc = AutoTokenizer.from_pretrained(model_dir)(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model(**enc, output_hidden_states=True)
    return model, out.hidden_states[-1].numpy(), out.logits.numpy(), enc["attention_mask"].numpy().astype(bool)


def onnx_hidden(folder: Path, file: str, texts: list[str]) -> np.ndarray:
    """last_hidden_state from `folder/file`, tokenized with the folder's own tokenizer."""
    session = onnx_session(folder / file, threads=1)
    names = [i.name for i in session.get_inputs()]
    enc = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="np")
    return session.run(["last_hidden_state"], {name: enc[name].astype(np.int64) for name in names})[0]


def test_export_writes_a_self_contained_checked_folder(exported, tiny_models):
    family, out, report = exported
    assert {ONNX_FILE, INT8_FILE, REPORT_FILE, "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.parent.glob(".*.tmp")), "the temporary folder was left behind"
    assert json.loads((out / REPORT_FILE).read_text()) == report
    assert report["inputs"] == (["input_ids", "attention_mask", "token_type_ids"] if family == "bert"
                                else ["input_ids", "attention_mask"])
    assert [i.name for i in onnx_session(out / ONNX_FILE).get_inputs()] == report["inputs"]
    assert report["model_dir"] == str(tiny_models[family]) and report["opset"] >= 18
    assert report["fp32"]["max_abs_diff"] <= 1e-4 and report["fp32"]["cosine_min"] > 0.9999
    assert report["bytes"]["onnx"] == (out / ONNX_FILE).stat().st_size
    assert report["bytes"]["int8"] < 0.5 * report["bytes"]["onnx"]
    assert set(report["versions"]) == {"torch", "transformers", "onnx", "onnxscript", "onnxruntime"}
    assert report["output"] == "last_hidden_state" and "head" not in report and "argmax_agreement" not in report["int8"]


def test_an_export_keeps_no_remote_code(remote_code_teacher, tmp_path):
    export_onnx(remote_code_teacher, tmp_path / "onnx", threads=1)
    for name in ("config.json", "tokenizer_config.json"):
        assert "auto_map" not in json.loads((tmp_path / "onnx" / name).read_text()), name


def test_onnx_matches_pytorch_at_other_batch_sizes_and_lengths(exported, tiny_models):
    family, out, _ = exported
    for texts in (TEXTS[:5], TEXTS[5:6], TEXTS[6:]):
        _, hidden, _, mask = reference(tiny_models[family], texts)
        got = onnx_hidden(out, ONNX_FILE, texts)
        assert got.shape == hidden.shape
        assert np.abs(got - hidden)[mask].max() <= 1e-4


def test_int8_keeps_the_mlm_heads_predictions(exported, tiny_models):
    family, out, report = exported
    model, _, logits, mask = reference(tiny_models[family], TEXTS)
    head = model.cls if family == "bert" else model.lm_head
    with torch.inference_mode():
        int8_logits = head(torch.from_numpy(onnx_hidden(out, INT8_FILE, TEXTS))).numpy()
    agreement = (int8_logits.argmax(-1) == logits.argmax(-1))[mask].mean()
    assert agreement >= 0.9, f"int8 changes {1 - agreement:.0%} of the MLM head's top predictions"
    assert 0 < report["int8"]["max_abs_diff"] and report["int8"]["cosine_mean"] > 0.99


@pytest.fixture(scope="module", params=["ner", "sentiment"])
def task_export(request, tiny_models, tmp_path_factory) -> tuple[str, Path, Path, dict, list[str]]:
    """(task, task model, export folder, report, CLI output) of a tiny task model (NER on BERT, sentiment on
    XLM-R) fine-tuned by `engine.taskmodel` and exported with int8 by `miniglot-cli export`."""
    task = request.param
    root = tmp_path_factory.mktemp(task)
    write, family = (write_ner, "bert") if task == "ner" else (write_sentiment, "xlm-roberta")
    data = write(root / "data", n_train=120)
    model = root / "model"
    taskmodel.build_task_model(str(tiny_models[family]), TaskModelConfig(task, str(data), epochs=4,
                                                                          learning_rate=3e-3), model, Collect())
    out = root / "onnx"
    stdout = run_cli(["export", str(model), "--onnx", "--int8", "--out", str(out)])
    return task, model, out, json.loads((out / REPORT_FILE).read_text()), stdout


def run_cli(argv: list[str]) -> list[str]:
    """`miniglot-cli argv` in this process; its stdout lines (exit 0 asserted)."""
    from contextlib import redirect_stdout
    from io import StringIO

    buffer = StringIO()
    with redirect_stdout(buffer):
        assert main(argv) == 0
    return buffer.getvalue().splitlines()


def task_logits(model_dir: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's task logits for `texts` padded together (stock Auto class), and the attention mask."""
    level = AutoConfig.from_pretrained(model_dir).architectures[0].endswith("ForTokenClassification")
    auto = AutoModelForTokenClassification if level else AutoModelForSequenceClassification
    enc = AutoTokenizer.from_pretrained(model_dir)(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = auto.from_pretrained(model_dir).eval()(**enc).logits.numpy()
    return logits, enc["attention_mask"].numpy().astype(bool)


def onnx_logits(folder: Path, file: str, texts: list[str]) -> np.ndarray:
    session = onnx_session(folder / file, threads=1)
    enc = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="np")
    return session.run(["logits"], {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()})[0]


def test_task_model_exports_with_its_head_and_facts(task_export):
    task, model, out, report, stdout = task_export
    files = {p.name for p in out.iterdir()}
    assert {ONNX_FILE, INT8_FILE, REPORT_FILE, TASK_FILE, "config.json", "tokenizer.json"} <= files
    assert json.loads((out / TASK_FILE).read_text()) == json.loads((model / TASK_FILE).read_text())
    config = AutoConfig.from_pretrained(out)
    labels = [config.id2label[i] for i in range(config.num_labels)]
    architecture, level, axes = ((config.architectures[0], "token", ["batch", "sequence", "labels"]) if task == "ner"
                                 else (config.architectures[0], "text", ["batch", "labels"]))
    assert report["output"] == "logits" and [o.name for o in onnx_session(out / ONNX_FILE).get_outputs()] == ["logits"]
    assert report["head"] == {"architecture": architecture, "level": level, "axes": axes, "labels": labels,
                              "task": task, "headline": "f1" if task == "ner" else "macro_f1"}
    assert report["fp32"]["max_abs_diff"] <= 1e-4 and report["fp32"]["argmax_agreement"] == 1.0
    assert 0 <= report["int8"]["argmax_agreement"] <= 1 and report["bytes"]["int8"] < report["bytes"]["onnx"]
    assert stdout[0] == str(out.resolve()) and len(stdout) == 4
    assert f"output logits [{', '.join(axes)}]: {architecture}, task {task}, {len(labels)} labels" in stdout[3]
    assert "argmax agrees" in stdout[2]


def test_task_logits_match_pytorch_at_other_batch_sizes_and_int8_runs(task_export):
    _, model, out, _, _ = task_export
    for texts in (TEXTS[:5], TEXTS[5:6], TEXTS[6:]):
        expected, mask = task_logits(model, texts)
        got = onnx_logits(out, ONNX_FILE, texts)
        assert got.shape == expected.shape
        rows = mask if expected.ndim == 3 else slice(None)
        assert np.abs(got - expected)[rows].max() <= 1e-4
    expected, mask = task_logits(model, TEXTS)
    int8 = onnx_logits(out, INT8_FILE, TEXTS)
    assert int8.shape == expected.shape and np.isfinite(int8).all()
    rows = mask if expected.ndim == 3 else slice(None)
    assert np.abs(int8 - expected)[rows].max() < 1.0  # quantized, not broken


def test_failed_check_leaves_nothing(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "FP32_TOLERANCE", -1.0)  # any difference, even none, fails the check
    with pytest.raises(VerificationError, match="differs from PyTorch") as error:
        export_onnx(tiny_models["xlm-roberta-nohead"], tmp_path / "out", threads=1)
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_replaces_an_earlier_export(tiny_models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / REPORT_FILE).write_text("{}")
    (out / "stale.onnx").write_text("from an earlier export")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "export", str(tiny_models["bert-nohead"]), "--onnx",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(out.resolve()) and "max abs diff vs PyTorch" in lines[1] and len(lines) == 2
    assert not (out / "stale.onnx").exists() and not (out / INT8_FILE).exists()
    assert json.loads((out / REPORT_FILE).read_text())["fp32"]["max_abs_diff"] <= 1e-4


def not_a_model(tmp: Path, models) -> tuple[list[str], int, str]:
    (tmp / "empty").mkdir()
    return [str(tmp / "empty"), "--onnx"], 1, "has no config.json"


def unsupported(tmp: Path, models) -> tuple[list[str], int, str]:
    (tmp / "gpt").mkdir()
    (tmp / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    return [str(tmp / "gpt"), "--onnx", "--out", str(tmp / "o")], 1, "unsupported architecture 'gpt2'"


def no_format(tmp: Path, models) -> tuple[list[str], int, str]:
    return [str(models["bert"])], 2, "choose what to export: --onnx"


def occupied_out(tmp: Path, models) -> tuple[list[str], int, str]:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("keep me")
    return [str(models["bert"]), "--onnx", "--out", str(tmp / "mine")], 1, "is not an earlier export"


def run_folder(tmp: Path, models) -> tuple[list[str], int, str]:
    run = tmp / "runs" / "20260101-000000"
    for model in ("stages/01-distill/model", "stages/02-prune/model", "tasks/ner/model"):
        (run / model).mkdir(parents=True)
        (run / model / "config.json").write_text("{}")
    (run / "stages" / "03-shrink" / ".model.x.tmp").mkdir(parents=True)  # a killed stage's: not a model
    (run / "manifest.json").write_text('{"status": "running", "stages": []}')
    return [str(run), "--onnx"], 1, (f"{run} is a run folder, not a model folder: export one of the models in it "
                                     "(stages/01-distill/model, stages/02-prune/model, tasks/ner/model)")


@pytest.mark.parametrize("case", [not_a_model, unsupported, no_format, occupied_out, run_folder])
def test_cli_errors_are_one_line(case, tiny_models, tmp_path, capsys):
    argv, code, needle = case(tmp_path, tiny_models)
    assert main(["export", *argv]) == code
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and needle in captured.err, captured.err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_mount_point_as_the_output_is_refused_before_exporting(tiny_models, tmp_path, capsys, monkeypatch):
    """A mount point cannot be replaced (the OS says "Device or resource busy" after the whole export)."""
    usb, real = tmp_path / "usb", os.path.ismount
    usb.mkdir()
    monkeypatch.setattr(export.os.path, "ismount", lambda path: Path(path) == usb or real(path))
    monkeypatch.setattr(export, "require_onnx", lambda: pytest.fail("the export started"))
    assert main(["export", str(tiny_models["bert"]), "--onnx", "--out", str(usb)]) == 1
    assert capsys.readouterr().err == (
        f"miniglot-cli: {usb} is a mount point (or in use), which an export cannot replace: export into a new "
        f"folder inside it (--out {usb / (tiny_models['bert'].name + '-onnx')})\n")
    assert list(tmp_path.iterdir()) == [usb] and not list(usb.iterdir())


def test_cli_names_the_missing_libraries(tiny_models, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    assert main(["export", str(tiny_models["bert"]), "--onnx", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs onnxruntime" in err and "install miniglot[export]" in err, err
    assert not (tmp_path / "o").exists()


def tiny_embedder(root: Path, family: str, pooling: str) -> Path:
    """A tiny sentence embedder folder: with "mean", a BERT student narrower than its teacher (its map back into
    the teacher's width, then the teacher's Dense with tanh and Normalize; prompts), else `pooling` alone."""
    from safetensors.torch import save_file

    from engine.models.embedder import Embedder, TeacherMap, write_embedder

    folder = tiny_model_dir(root / "student", family, mlm_head=False, hidden=32, heads=4, seed=3)
    if pooling != "mean":
        write_embedder(folder, Embedder(pooling, folder), 32)
        return folder
    home = root / "teacher"
    (home / "2_Dense").mkdir(parents=True)
    (home / "2_Dense" / "config.json").write_text(json.dumps({
        "in_features": 64, "out_features": 48, "bias": True,
        "activation_function": "torch.nn.modules.activation.Tanh"}))
    torch.manual_seed(1)
    save_file({"linear.weight": torch.randn(48, 64) / 8, "linear.bias": torch.randn(48) / 8},
              str(home / "2_Dense" / "model.safetensors"))
    (home / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "query: "}}))
    embedder = Embedder("mean", home, (("Dense", "2_Dense"), ("Normalize", "")), {"query": "query: "})
    write_embedder(folder, embedder, 32, TeacherMap(torch.randn(32, 64) / 8, torch.randn(64) / 8))  # onto the teacher
    return folder


@pytest.fixture(scope="module", params=[("bert", "mean"), ("xlm-roberta", "max")], ids=["student", "max"])
def embedder_export(request, tmp_path_factory) -> tuple[Path, Path, dict, list[str]]:
    """(model folder, export folder, report, CLI output) of a tiny sentence embedder exported with int8 by
    `miniglot-cli export`."""
    root = tmp_path_factory.mktemp(request.param[1])
    folder = tiny_embedder(root, *request.param)
    out = root / "onnx"
    stdout = run_cli(["export", str(folder), "--onnx", "--int8", "--out", str(out)])
    return folder, out, json.loads((out / REPORT_FILE).read_text()), stdout


def onnx_embeddings(folder: Path, file: str, texts: list[str]) -> np.ndarray:
    session = onnx_session(folder / file, threads=1)
    enc = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="np")
    return session.run(["sentence_embedding"], {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()})[0]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_a_sentence_embedder_exports_its_embeddings_checked(embedder_export):
    folder, out, report, stdout = embedder_export
    student = (folder / "2_Dense_to_teacher").is_dir()
    outputs = [o.name for o in onnx_session(out / ONNX_FILE).get_outputs()]
    assert outputs == ["last_hidden_state", "sentence_embedding"] and report["output"] == "last_hidden_state"
    embedding = report["embedding"]
    assert {k: embedding[k] for k in ("output", "dimension", "pooling", "modules", "normalized", "prompts")} == (
        {"output": "sentence_embedding", "dimension": 48, "pooling": "mean", "modules": ["Dense", "Dense", "Normalize"],
         "normalized": True, "prompts": {"query": "query: "}} if student else
        {"output": "sentence_embedding", "dimension": 32, "pooling": "max", "modules": [], "normalized": False,
         "prompts": {}})
    assert embedding["fp32"]["cosine_min"] >= 0.999 and embedding["fp32"]["max_abs_diff"] <= 1e-4
    assert 0.9 < embedding["int8"]["cosine_mean"] < 1 and report["fp32"]["max_abs_diff"] <= 1e-4
    assert len(stdout) == 4 and stdout[3].strip().startswith(
        f"output sentence_embedding [batch, {embedding['dimension']}]: {embedding['pooling']} pooling")
    assert "cosine with SentenceTransformer min 1.0000" in stdout[3] and "int8 mean" in stdout[3]
    assert ("prompts query 'query: '" in stdout[3]) == student


def test_onnx_sentence_embeddings_match_sentence_transformers_on_new_text(embedder_export):
    """SentenceTransformer(model folder).encode in a fresh process, with the prompt, at other batch sizes."""
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is an optional extra (embeddings)")
    from tiny import st_encode

    folder, out, report, _ = embedder_export
    prompt = report["embedding"]["prompts"].get("query", "")
    expected = st_encode(folder, TEXTS, prompt).numpy()
    got = np.concatenate([onnx_embeddings(out, ONNX_FILE, [prompt + t for t in texts])
                          for texts in (TEXTS[:5], TEXTS[5:6], TEXTS[6:])])
    assert got.shape == expected.shape and cosines(got, expected).min() >= 0.999
    assert np.abs(got - expected).max() <= 1e-4
    int8 = onnx_embeddings(out, INT8_FILE, [prompt + t for t in TEXTS])
    assert cosines(int8, expected).min() > 0.9  # quantized, not broken


def test_a_failed_embedding_check_leaves_nothing(tmp_path, monkeypatch):
    folder = tiny_embedder(tmp_path / "model", "bert", "cls")
    monkeypatch.setattr(export, "EMBEDDING_COSINE", 1.5)  # no cosine passes
    with pytest.raises(VerificationError, match="sentence embeddings differ from sentence-transformers'") as error:
        export_onnx(folder, tmp_path / "out", threads=1)
    assert "\n" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
