"""Export an encoder or a task model folder to ONNX (optionally int8 too), checked against PyTorch on real text.

Inputs `input_ids`, `attention_mask` (and `token_type_ids` when the tokenizer emits them) with dynamic batch
and sequence axes. An encoder is exported alone (no MLM head, no pooler), output `last_hidden_state`. A task
model (config.architectures ending in ForTokenClassification / ForSequenceClassification, as
`miniglot-cli finetune` writes) is exported whole, output `logits` ([batch, sequence, labels] or
[batch, labels], columns in config.id2label order), and its `miniglot_task.json` is copied too; the folder is
laid out as optimum's ORTModelFor…Classification loads one (`model.onnx`, `config.json`, tokenizer, `logits`).
An encoder that is a sentence embedder (sentence-transformers' `modules.json`, as the packaged e5 teacher and
the stage folders of its runs have) also outputs `sentence_embedding` [batch, width]: its pooling under the
attention mask, its Dense modules (a student's map onto the teacher's space among them) and
normalisation, checked against sentence-transformers' embeddings of the same sentences.
torch's exporter (torch.export + onnxscript) writes `model.onnx`; ONNX Runtime runs it and writes
`model.int8.onnx` by dynamic quantization (int8 weights, activations quantized on the fly). The folder also
gets the tokenizer and config, so it is self-contained, and `export.json`, the report.
Everything is written to a temporary folder first: a failed export leaves nothing behind.
"""

from __future__ import annotations

import errno
import importlib
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ModelError, VerificationError
from engine.runfolder import TASK_FILE, RunFolder, atomic_dir
from engine.tasks import HEAD_SUFFIX

if TYPE_CHECKING:
    from engine.models.embedder import Embedder  # imports torch

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
REPORT_FILE = "export.json"
OUTPUT = "last_hidden_state"
TASK_OUTPUT = "logits"
EMBEDDING_OUTPUT = "sentence_embedding"
EMBEDDING_COSINE = 0.999  # the fp32 sentence embeddings' least cosine with sentence-transformers' (issue 21)
EMBEDDING_REFERENCE = "engine.models.embedder.embed (equal to SentenceTransformer.encode)"
HEADS = {HEAD_SUFFIX[True]: ("token", ("batch", "sequence", "labels")),
         HEAD_SUFFIX[False]: ("text", ("batch", "labels"))}  # architecture suffix: level, logits axes
FP32_TOLERANCE = 1e-4  # max abs difference of the output, as for every stage model (DESIGN.md §2)
MAX_TOKENS = 128  # check sentences are cut to this many tokens (the graph takes any length the model does)
EXTERNAL_DATA_BYTES = 1 << 30  # larger models keep their weights in `<file>.data` (protobuf's 2 GB limit)
REQUIRED = ("onnx", "onnxscript", "onnxruntime")
# Real sentences of different lengths and scripts (UDHR, article 1, and greetings): the default check texts.
SENTENCES = (
    "All human beings are born free and equal in dignity and rights. They are endowed with reason and "
    "conscience and should act towards one another in a spirit of brotherhood.",
    "Watu wote wamezaliwa huru, hadhi na haki zao ni sawa.",
    "Il-bnedmin kollha jitwieldu ħielsa u ugwali fid-dinjità u d-drittijiet.",
    "Asante sana.",
    "Tous les êtres humains naissent libres et égaux en dignité et en droits.",
    "Alle Menschen sind frei und gleich an Würde und Rechten geboren.",
    "Good morning!",
)


def default_out(source: str | Path) -> Path:
    """`<folder>-onnx` beside a model folder; `<name>-onnx` in the working folder for packaged:/hub: sources."""
    text = str(source)
    if text.startswith(("packaged:", "hub:")):
        return Path(text.split(":", 1)[1].replace("/", "-").partition("@")[0] + "-onnx")
    path = Path(text).expanduser().resolve()
    return path.with_name(f"{path.name}-onnx")


def require_onnx() -> None:
    """Raise a one-line ModelError naming the missing export libraries."""
    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing and getattr(sys, "frozen", False):
        raise ModelError("ONNX export is not part of the packaged app: install MiniGlot with pip "
                         "(pip install 'miniglot[export]') and run miniglot-cli export")
    if missing:
        raise ModelError(f"ONNX export needs {', '.join(missing)}: install miniglot[export] "
                         "(pip install 'miniglot[export]')")


def export_onnx(source: str | Path, out: Path | None = None, *, int8: bool = False,
                texts: Sequence[str] = SENTENCES, threads: int | None = None) -> dict[str, Any]:
    """Export `source` (a model folder, packaged:<name> or hub:<id>) to `out`; returns the report.

    `out` may not exist, be empty, or hold an earlier export (which is replaced). The fp32 model must
    match PyTorch within FP32_TOLERANCE on `texts` (padded together and one at a time), else
    VerificationError; the int8 model's difference and cosine similarity are reported, not bounded. A task
    model's report also has `head` (what `logits` hold) and each comparison its `argmax_agreement`. A
    sentence embedder's has `embedding`: what `sentence_embedding` holds and, per variant, its cosine with
    sentence-transformers' embeddings (fp32 at least EMBEDDING_COSINE, else VerificationError).
    """
    from engine.models.embedder import read_embedder
    from engine.models.loading import resolve_source, strip_remote_code, weight_bytes

    started = time.perf_counter()
    _refuse_run_folder(source)
    model_dir = resolve_source(str(source))
    out = Path(out).expanduser().resolve() if out is not None else default_out(source).resolve()
    _check_out(out, default_out(source).name)
    require_onnx()
    tokenizer, model, config, head = load_for_export(model_dir)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ModelError("export needs at least one non-empty sentence to check the model with")
    output = OUTPUT if head is None else TASK_OUTPUT
    embedder = read_embedder(model_dir) if head is None else None
    module = _output_module(model.float().eval(), output, embedder)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in
                                                tokenizer.model_input_names else [])
    external = weight_bytes(module) > EXTERNAL_DATA_BYTES
    with _replacing(out, default_out(source).name) as tmp:
        outputs = [output] + ([EMBEDDING_OUTPUT] if embedder is not None else [])
        _export(module, tokenizer, names, texts, tmp / ONNX_FILE, outputs, external)
        tokenizer.save_pretrained(tmp)
        shutil.copy2(model_dir / "config.json", tmp / "config.json")
        strip_remote_code(tmp)
        if (model_dir / TASK_FILE).is_file():
            shutil.copy2(model_dir / TASK_FILE, tmp / TASK_FILE)
        fp32 = compare(module, tokenizer, tmp, ONNX_FILE, names, texts, threads, output)
        if not fp32["max_abs_diff"] <= FP32_TOLERANCE:
            raise VerificationError(
                f"{model_dir}: the ONNX model differs from PyTorch by {fp32['max_abs_diff']:.1e} "
                f"(> {FP32_TOLERANCE:.0e}) on real sentences; nothing was written — report it with the "
                "model's config.json")
        if embedder is not None:
            sentence = compare_embedding(module, tokenizer, tmp, ONNX_FILE, names, texts, embedder, threads)
            if not sentence["cosine_min"] >= EMBEDDING_COSINE:
                raise VerificationError(
                    f"{model_dir}: the ONNX sentence embeddings differ from sentence-transformers' (cosine "
                    f"{sentence['cosine_min']:.6f} < {EMBEDDING_COSINE}) on real sentences; nothing was written — "
                    "report it with the model's modules.json")
        if int8:
            quantize_int8(tmp / ONNX_FILE, tmp / INT8_FILE, external)
        report = {
            "source": str(source), "model_dir": str(model_dir), "out": str(out),
            "model_type": config.model_type, "inputs": names, "output": output,
            "opset": _opset(tmp / ONNX_FILE), "sentences": len(texts), "tolerance": FP32_TOLERANCE,
            "bytes": {"torch": weight_bytes(module), "onnx": _file_bytes(tmp / ONNX_FILE)},
            "fp32": fp32, "versions": _versions(),
        }
        if head is not None:
            report["head"] = head
        if embedder is not None:
            report["embedding"] = {**embedding_facts(embedder, module), "fp32": sentence}
        if int8:
            report["bytes"]["int8"] = _file_bytes(tmp / INT8_FILE)
            report["int8"] = compare(module, tokenizer, tmp, INT8_FILE, names, texts, threads, output)
            if embedder is not None:
                report["embedding"]["int8"] = compare_embedding(module, tokenizer, tmp, INT8_FILE, names, texts,
                                                                embedder, threads)
        report["seconds"] = round(time.perf_counter() - started, 1)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The export's files, sizes and agreement with PyTorch, for people (CLI and GUI)."""
    sizes = report["bytes"]
    fp32 = report["fp32"]
    head = report.get("head")
    kind = "encoder" if head is None else "model"
    lines = [f"{ONNX_FILE}: {sizes['onnx'] / 1e6:.1f} MB (PyTorch fp32 {kind} {sizes['torch'] / 1e6:.1f} MB), "
             f"max abs diff vs PyTorch {fp32['max_abs_diff']:.1e} on {report['sentences']} sentences"]
    if "int8" in report:
        q = report["int8"]
        agrees = f", argmax agrees {q['argmax_agreement']:.1%}" if head is not None else ""
        lines.append(f"{INT8_FILE}: {sizes['int8'] / 1e6:.1f} MB, max abs diff {q['max_abs_diff']:.3f}, "
                     f"cosine {q['cosine_mean']:.4f} (min {q['cosine_min']:.4f}){agrees}")
    if head is not None:
        labels = head["labels"]
        shown = ", ".join(labels[:6]) + (", …" if len(labels) > 6 else "")
        task = f", task {head['task']}" if head.get("task") else ""
        lines.append(f"output {report['output']} [{', '.join(head['axes'])}]: {head['architecture']}{task}, "
                     f"{len(labels)} labels ({shown})")
    embedding = report.get("embedding")
    if embedding is not None:
        steps = ", ".join([f"{embedding['pooling']} pooling", *embedding["modules"]])
        int8 = (f", int8 mean {embedding['int8']['cosine_mean']:.4f} (min {embedding['int8']['cosine_min']:.4f})"
                if "int8" in embedding else "")
        prompts = "; prompts " + ", ".join(f"{k} {v!r}" for k, v in embedding["prompts"].items()) \
            if embedding["prompts"] else ""
        lines.append(f"output {embedding['output']} [batch, {embedding['dimension']}]: {steps}; cosine with "
                     f"SentenceTransformer min {embedding['fp32']['cosine_min']:.6f}{int8}{prompts}")
    return lines


def load_for_export(model_dir: Path) -> tuple[Any, Any, Any, dict[str, Any] | None]:
    """The folder's tokenizer, the model to export, its config, and its `head` (None: an encoder, whose
    base model alone is exported). Task models load as their stock `AutoModelFor…Classification`."""
    from engine.models.loading import fast_tokenizer, inspect_folder, load_model

    info = inspect_folder(model_dir)
    head = task_head(info.config, model_dir)
    if head is None:
        loaded = load_model(model_dir)
        return loaded.tokenizer, loaded.adapter.base(loaded.model), loaded.config, None
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    auto = AutoModelForTokenClassification if head["level"] == "token" else AutoModelForSequenceClassification
    model = auto.from_pretrained(model_dir, use_safetensors=info.safetensors, trust_remote_code=False)
    return fast_tokenizer(model_dir), model, model.config, head


def task_head(config: Any, model_dir: Path) -> dict[str, Any] | None:
    """What a task model's `logits` hold: `architecture`, `level` (token | text), `axes`, `labels` (the
    columns, config.id2label order), and `task` and `headline` from its miniglot_task.json when it has one;
    None when `config` is not a token- or text-classification model."""
    architecture = next((a for a in config.architectures or () if a.endswith(tuple(HEADS))), None)
    if architecture is None:
        return None
    level, axes = next(HEADS[suffix] for suffix in HEADS if architecture.endswith(suffix))
    head = {"architecture": architecture, "level": level, "axes": list(axes),
            "labels": [config.id2label[i] for i in range(config.num_labels)]}
    facts = model_dir / TASK_FILE
    if facts.is_file():
        try:
            known = json.loads(facts.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ModelError(f"{facts} is damaged ({exc}); fine-tune the model again") from None
        head |= {"task": known.get("task"), "headline": known.get("headline")}
    return head


def onnx_session(path: Path, threads: int | None = None, spinning: bool = True) -> Any:
    """An ONNX Runtime CPU session for `path` (`threads`: intra-op threads, default ONNX Runtime's).

    `spinning=False` keeps idle threads from busy-waiting between calls, so a benchmark that alternates
    ONNX Runtime with PyTorch does not lose the cores to them.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantize_int8(fp32: Path, int8: Path, external: bool = False) -> None:
    """Dynamic int8 quantization (weights int8 per channel; activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True,
                         use_external_data_format=external)


def compare(module: Any, tokenizer: Any, folder: Path, file: str, names: list[str], texts: Sequence[str],
            threads: int | None = None, output: str = OUTPUT) -> dict[str, float]:
    """`folder/file`'s `output` against PyTorch's on `texts` (padded together, then one at a time), real
    tokens only (per text for [batch, labels] logits).

    The ONNX side tokenizes with the tokenizer saved in `folder`, which must give the same ids.
    Returns `max_abs_diff` and the row cosine similarity (`cosine_mean`, `cosine_min`); for `logits`, also
    `argmax_agreement` (the fraction of rows whose top label is the same).
    """
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    session = onnx_session(folder / file, threads)
    saved = AutoTokenizer.from_pretrained(folder)
    diffs, cosines, agrees = [], [], []
    for batch in [list(texts)] + [[t] for t in texts]:
        enc = tokenizer(batch, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="np")
        again = saved(batch, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="np")
        feed = {name: again[name].astype(np.int64) for name in names}
        if not np.array_equal(feed["input_ids"], enc["input_ids"]):
            raise VerificationError(f"{folder}: the saved tokenizer segments text differently from the model's")
        with torch.inference_mode():
            expected = module(*(torch.from_numpy(enc[name]).long() for name in names))
        expected = (expected[0] if isinstance(expected, tuple) else expected).numpy()
        got = session.run([output], feed)[0]
        mask = enc["attention_mask"].astype(bool)
        a, b = (expected[mask], got[mask]) if expected.ndim == 3 else (expected, got)
        diffs.append(float(np.abs(a - b).max()))
        cosines.append((a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12))
        agrees.append(a.argmax(-1) == b.argmax(-1))
    cosine = np.concatenate(cosines)
    result = {"max_abs_diff": max(diffs), "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min())}
    if output == TASK_OUTPUT:
        result["argmax_agreement"] = float(np.concatenate(agrees).mean())
    return result


def embedding_facts(embedder: Embedder, module: Any) -> dict[str, Any]:
    """What an embedder's `sentence_embedding` holds: `output`, `dimension`, `pooling`, the `modules` after it,
    `normalized`, the `prompts` the model expects, and what the check compares it with (`reference`, `min_cosine`)."""
    import torch

    widths = [m.out_features for m in module.sentence.after if isinstance(m, torch.nn.Linear)]
    return {"output": EMBEDDING_OUTPUT, "dimension": widths[-1] if widths else module.base.config.hidden_size,
            "pooling": embedder.pooling, "modules": [kind for kind, _ in embedder.after],
            "normalized": embedder.normalized, "prompts": dict(embedder.prompts),
            "reference": EMBEDDING_REFERENCE, "min_cosine": EMBEDDING_COSINE}


def compare_embedding(module: Any, tokenizer: Any, folder: Path, file: str, names: list[str], texts: Sequence[str],
                      embedder: Embedder, threads: int | None = None) -> dict[str, float]:
    """`folder/file`'s `sentence_embedding` of `texts` (padded together, then one at a time) against
    sentence-transformers' embeddings computed from the model folder (`embed`, which equals
    `SentenceTransformer.encode`): `max_abs_diff` and the per-sentence cosine (`cosine_mean`, `cosine_min`)."""
    import numpy as np
    from transformers import AutoTokenizer

    from engine.models.embedder import embed

    expected = embed(module.base, tokenizer, list(texts), embedder, max_length=MAX_TOKENS).numpy()
    session = onnx_session(folder / file, threads)
    saved = AutoTokenizer.from_pretrained(folder)
    rows = [list(range(len(texts)))] + [[i] for i in range(len(texts))]
    diffs, cosines = [], []
    for indices in rows:
        enc = saved([texts[i] for i in indices], padding=True, truncation=True, max_length=MAX_TOKENS,
                    return_tensors="np")
        got = session.run([EMBEDDING_OUTPUT], {name: enc[name].astype(np.int64) for name in names})[0]
        want = expected[indices]
        diffs.append(float(np.abs(got - want).max()))
        cosines.append((got * want).sum(-1) / np.maximum(np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1),
                                                         1e-12))
    cosine = np.concatenate(cosines)
    return {"max_abs_diff": max(diffs), "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min())}


def _output_module(model: Any, output: str, embedder: Embedder | None = None) -> Any:
    """The exported module: `model`'s `output` (last_hidden_state or logits) from positional inputs, and
    with an `embedder` the sentence embeddings too (`sentence`: its pooling, Dense and Normalize modules)."""
    import torch

    from engine.models.embedder import SentenceHead

    class Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = model
            self.sentence = None if embedder is None else SentenceHead(embedder)

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            states = getattr(self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs), output)
            if self.sentence is None:
                return states
            return states, self.sentence(states, attention_mask)

    return Exported().eval()


def _export(module: Any, tokenizer: Any, names: list[str], texts: Sequence[str], path: Path, outputs: list[str],
            external: bool) -> None:
    import torch

    sample = (list(texts) * 2)[:2]  # two rows of different lengths: neither axis is specialised to 0 or 1
    enc = tokenizer(sample, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    args = tuple(enc[name].long() for name in names)
    axes = {0: "batch", 1: "sequence"}
    try:
        with _quiet(), _no_tqdm_monitor(), torch.no_grad():
            program = torch.onnx.export(module, args, input_names=names, output_names=outputs,
                                        dynamic_shapes=tuple(axes for _ in names), dynamo=True, verbose=False)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"torch.onnx could not export this {type(module.base).__name__}: {first}") from exc
    graph = program.model.graph
    for value in [*graph.initializers.values(), *graph.inputs]:
        value.metadata_props.clear()
    for node in graph.all_nodes():  # stack traces with this machine's paths: half the file of a small model
        node.metadata_props.clear()
        for value in node.outputs:
            value.metadata_props.clear()
    program.save(str(path), external_data=external)


def _refuse_run_folder(source: str | Path) -> None:
    """A run folder given as the model: say which model folders it holds."""
    run = RunFolder(Path(str(source)).expanduser())
    if (run.path / "config.json").is_file() or not run.is_run():
        return
    models = [p.relative_to(run.path).as_posix() for p in run.model_folders()]
    if not models:
        raise ModelError(f"{run.path} is a run folder with no model yet: export a stage's model folder "
                         "(stages/NN-kind/model) once that stage has completed")
    raise ModelError(f"{run.path} is a run folder, not a model folder: export one of the models in it "
                     f"({', '.join(models)})")


def _check_out(out: Path, name: str) -> None:
    """Refuse to replace anything but an empty folder or an earlier export (never the model itself), and a
    mount point (a folder that cannot be replaced); `name` is the folder to suggest inside it."""
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out} is a file: give a folder for the export (--out DIR)")
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_FILE).is_file():
        raise ModelError(f"{out} exists and is not an earlier export: choose an empty or new folder (--out DIR)")
    if out.is_dir() and os.path.ismount(out):
        raise ModelError(_unreplaceable(out, name))


@contextmanager
def _replacing(out: Path, name: str):
    """`atomic_dir(out)`; a folder the OS will not let go of (a bind mount) is told in one line."""
    try:
        with atomic_dir(out) as tmp:
            yield tmp
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        raise ModelError(_unreplaceable(out, name)) from None


def _unreplaceable(out: Path, name: str) -> str:
    return (f"{out} is a mount point (or in use), which an export cannot replace: export into a new folder "
            f"inside it (--out {out / name})")


def _file_bytes(path: Path) -> int:
    """The file and its external data, if any."""
    return sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*") if p.is_file())


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _versions() -> dict[str, str]:
    names = ("torch", "transformers", *REQUIRED)
    return {name: importlib.metadata.version(name) for name in names}


@contextmanager
def _quiet():
    """Silence the exporter's and quantizer's warnings and log lines (the report says what matters)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


@contextmanager
def _no_tqdm_monitor():
    """torch.fx's interpreter makes disabled tqdm bars, and the first starts tqdm's monitor thread, which then
    lives as long as the process (a stray thread in the app); tqdm starts none while its interval is 0."""
    from tqdm import tqdm

    interval, tqdm.monitor_interval = tqdm.monitor_interval, 0
    try:
        yield
    finally:
        tqdm.monitor_interval = interval
