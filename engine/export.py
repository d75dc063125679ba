"""Export an encoder folder to ONNX (optionally int8 too), checked against PyTorch on real sentences.

The exported graph is the encoder alone (no MLM head, no pooler): inputs `input_ids`, `attention_mask`
(and `token_type_ids` when the tokenizer emits them) with dynamic batch and sequence axes, output
`last_hidden_state`. torch's exporter (torch.export + onnxscript) writes `model.onnx`; ONNX Runtime runs
it and writes `model.int8.onnx` by dynamic quantization (int8 weights, activations quantized on the fly).
The folder also gets the tokenizer and config, so it is self-contained, and `export.json`, the report.
Everything is written to a temporary folder first: a failed export leaves nothing behind.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.errors import ModelError, VerificationError
from engine.runfolder import atomic_dir

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
REPORT_FILE = "export.json"
OUTPUT = "last_hidden_state"
FP32_TOLERANCE = 1e-4  # max abs difference of last_hidden_state, as for every stage model (DESIGN.md §2)
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
    VerificationError; the int8 model's difference and cosine similarity are reported, not bounded.
    """
    from engine.models.loading import load_model, resolve_source

    started = time.perf_counter()
    model_dir = resolve_source(str(source))
    out = Path(out).expanduser().resolve() if out is not None else default_out(source).resolve()
    _check_out(out)
    require_onnx()
    loaded = load_model(model_dir)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ModelError("export needs at least one non-empty sentence to check the model with")
    tokenizer, encoder = loaded.tokenizer, _encoder_module(loaded.adapter.base(loaded.model).float().eval())
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in
                                                tokenizer.model_input_names else [])
    external = _parameter_bytes(encoder) > EXTERNAL_DATA_BYTES
    with atomic_dir(out) as tmp:
        _export(encoder, tokenizer, names, texts, tmp / ONNX_FILE, external)
        tokenizer.save_pretrained(tmp)
        shutil.copy2(model_dir / "config.json", tmp / "config.json")
        fp32 = compare(encoder, tokenizer, tmp, ONNX_FILE, names, texts, threads)
        if not fp32["max_abs_diff"] <= FP32_TOLERANCE:
            raise VerificationError(
                f"{model_dir}: the ONNX model differs from PyTorch by {fp32['max_abs_diff']:.1e} "
                f"(> {FP32_TOLERANCE:.0e}) on real sentences; nothing was written — report it with the "
                "model's config.json")
        if int8:
            quantize_int8(tmp / ONNX_FILE, tmp / INT8_FILE, external)
        report = {
            "source": str(source), "model_dir": str(model_dir), "out": str(out),
            "model_type": loaded.config.model_type, "inputs": names, "output": OUTPUT,
            "opset": _opset(tmp / ONNX_FILE), "sentences": len(texts), "tolerance": FP32_TOLERANCE,
            "bytes": {"torch": _parameter_bytes(encoder), "onnx": _file_bytes(tmp / ONNX_FILE)},
            "fp32": fp32, "versions": _versions(),
        }
        if int8:
            report["bytes"]["int8"] = _file_bytes(tmp / INT8_FILE)
            report["int8"] = compare(encoder, tokenizer, tmp, INT8_FILE, names, texts, threads)
        report["seconds"] = round(time.perf_counter() - started, 1)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The export's files, sizes and agreement with PyTorch, for people (CLI and GUI)."""
    sizes = report["bytes"]
    fp32 = report["fp32"]
    lines = [f"{ONNX_FILE}: {sizes['onnx'] / 1e6:.1f} MB (PyTorch fp32 encoder {sizes['torch'] / 1e6:.1f} MB), "
             f"max abs diff vs PyTorch {fp32['max_abs_diff']:.1e} on {report['sentences']} sentences"]
    if "int8" in report:
        q = report["int8"]
        lines.append(f"{INT8_FILE}: {sizes['int8'] / 1e6:.1f} MB, max abs diff {q['max_abs_diff']:.3f}, "
                     f"cosine {q['cosine_mean']:.4f} (min {q['cosine_min']:.4f})")
    return lines


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


def compare(encoder: Any, tokenizer: Any, folder: Path, file: str, names: list[str], texts: Sequence[str],
            threads: int | None = None) -> dict[str, float]:
    """`folder/file` against PyTorch on `texts` (padded together, then one at a time), real tokens only.

    The ONNX side tokenizes with the tokenizer saved in `folder`, which must give the same ids.
    Returns `max_abs_diff` and the token-level cosine similarity (`cosine_mean`, `cosine_min`).
    """
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    session = onnx_session(folder / file, threads)
    saved = AutoTokenizer.from_pretrained(folder)
    diffs, cosines = [], []
    for batch in [list(texts)] + [[t] for t in texts]:
        enc = tokenizer(batch, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="np")
        again = saved(batch, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="np")
        feed = {name: again[name].astype(np.int64) for name in names}
        if not np.array_equal(feed["input_ids"], enc["input_ids"]):
            raise VerificationError(f"{folder}: the saved tokenizer segments text differently from the model's")
        with torch.inference_mode():
            expected = encoder(*(torch.from_numpy(enc[name]).long() for name in names)).numpy()
        got = session.run([OUTPUT], feed)[0]
        mask = enc["attention_mask"].astype(bool)
        a, b = expected[mask], got[mask]
        diffs.append(float(np.abs(a - b).max()))
        cosines.append((a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12))
    cosine = np.concatenate(cosines)
    return {"max_abs_diff": max(diffs), "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min())}


def _encoder_module(base: Any) -> Any:
    """The exported module: the encoder's `last_hidden_state` from positional inputs."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = base

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state

    return Encoder().eval()


def _export(encoder: Any, tokenizer: Any, names: list[str], texts: Sequence[str], path: Path, external: bool) -> None:
    import torch

    sample = (list(texts) * 2)[:2]  # two rows of different lengths: neither axis is specialised to 0 or 1
    enc = tokenizer(sample, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    args = tuple(enc[name].long() for name in names)
    axes = {0: "batch", 1: "sequence"}
    try:
        with _quiet(), _no_tqdm_monitor(), torch.no_grad():
            program = torch.onnx.export(encoder, args, input_names=names, output_names=[OUTPUT],
                                        dynamic_shapes=tuple(axes for _ in names), dynamo=True, verbose=False)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"torch.onnx could not export this {type(encoder.base).__name__}: {first}") from exc
    graph = program.model.graph
    for value in [*graph.initializers.values(), *graph.inputs]:
        value.metadata_props.clear()
    for node in graph.all_nodes():  # stack traces with this machine's paths: half the file of a small model
        node.metadata_props.clear()
        for value in node.outputs:
            value.metadata_props.clear()
    program.save(str(path), external_data=external)


def _check_out(out: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier export (never the model itself)."""
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out} is a file: give a folder for the export (--out DIR)")
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_FILE).is_file():
        raise ModelError(f"{out} exists and is not an earlier export: choose an empty or new folder (--out DIR)")


def _parameter_bytes(module: Any) -> int:
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in module.parameters()}.values())


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
