"""Proof that a written model folder is what the engine had in memory.

The parent computes outputs on held-out text, then a fresh Python process loads the folder with
stock `AutoModel`/`AutoModelForMaskedLM` + `AutoTokenizer` and compares: same token ids, every id
inside the embedding table, no weight left to random initialisation (the pooler excepted: it is a
task head that only BERT's NSP pre-training uses), and outputs within `tolerance`. The process ends with
the one that started it (on Linux, even when that one is SIGKILLed), and its scratch folder is hidden beside
the checked folder, so a killed run leaves nothing outside its run folder.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import VerificationError
from engine.models.loading import LoadedModel, max_positions

TOLERANCE = 1e-4
SAMPLE = 8
MAX_LENGTH = 128  # or the model's positions, when it has fewer
FROZEN_CHILD_ENV = "MINIGLOT_VERIFY_CHILD"  # packaging/bundle_boot.py dispatches on it
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def verify_folder(folder: Path, loaded: LoadedModel, texts: list[str], tolerance: float = TOLERANCE) -> dict:
    """Reload `folder` in a fresh process and compare with `loaded`; raise VerificationError if not equal."""
    texts = [t for t in texts if t.strip()][:SAMPLE] or ["verification"]
    enc = loaded.tokenizer(texts, padding=True, truncation=True, return_tensors="pt",
                           max_length=min(MAX_LENGTH, max_positions(loaded.config)))
    model = copy.deepcopy(loaded.model).to("cpu").float().eval()
    with torch.no_grad():
        hidden = loaded.adapter.base(model)(input_ids=enc["input_ids"],
                                            attention_mask=enc["attention_mask"]).last_hidden_state
        head = loaded.adapter.mlm_module(model)
        logits = head(hidden) if head is not None else None
    with _scratch(folder) as tmp:
        expected = Path(tmp) / "expected.npz"
        arrays = {"input_ids": enc["input_ids"].numpy(), "attention_mask": enc["attention_mask"].numpy(),
                  "hidden": hidden.numpy()}
        if logits is not None:
            arrays["logits"] = logits.numpy()
        np.savez(expected, **arrays)
        return _reload(folder, tmp, texts, tolerance)


def verify_task_folder(folder: Path, model: Any, tokenizer: Any, texts: list[str],
                       tolerance: float = TOLERANCE) -> dict:
    """Reload a task model `folder` in a fresh process with stock `AutoModelFor…Classification`: the same
    logits as `model` on `texts`, and `transformers.pipeline` labels raw text with the folder's labels."""
    texts = [t for t in texts if t.strip()][:SAMPLE] or ["verification"]
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt",
                    max_length=min(MAX_LENGTH, max_positions(model.config)))
    model = copy.deepcopy(model).to("cpu").float().eval()
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    with _scratch(folder) as tmp:
        np.savez(Path(tmp) / "expected.npz", input_ids=enc["input_ids"].numpy(),
                 attention_mask=enc["attention_mask"].numpy(), task_logits=logits.numpy())
        return _reload(folder, tmp, texts, tolerance)


def _scratch(folder: Path) -> tempfile.TemporaryDirectory:
    """The check's scratch folder, hidden beside `folder`: inside the run folder for a run's models, where a
    resume sweeps it if the run is killed mid-check (`RunFolder.remove_leftovers`)."""
    return tempfile.TemporaryDirectory(prefix=".verify-", suffix=".tmp", dir=Path(folder).parent)


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, what the check's process runs before it starts: the kernel kills it when the thread that
    started it ends, even by SIGKILL, so a killed run leaves no check running. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl, parent = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return preexec


def _reload(folder: Path, tmp: str, texts: list[str], tolerance: float) -> dict:
    """Run `_child` on `folder` in a fresh process with the expectations in `tmp`; raise unless it agrees."""
    (Path(tmp) / "texts.json").write_text(json.dumps(texts), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "engine.verify", str(folder), tmp, str(tolerance)]
    if getattr(sys, "frozen", False):  # a PyInstaller bundle has no `-m`: its executables run child_main
        command, env[FROZEN_CHILD_ENV] = [sys.executable, *command[3:]], "1"
    # its own session: a Ctrl-C or SIGTERM sent to the run's process group cancels the run, not the check
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600,
                          cwd=Path(__file__).resolve().parent.parent, start_new_session=True,
                          preexec_fn=_die_with_parent())
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise VerificationError(f"{folder}: the reload process failed: {proc.stderr.strip()[-2000:]}") from None
    if result["problems"]:
        raise VerificationError(f"{folder} does not reload faithfully: " + "; ".join(result["problems"]))
    return result


def _child(folder: str, tmp: str, tolerance: float) -> dict[str, Any]:
    """Runs in the fresh process: reload with stock transformers and compare."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

    problems: list[str] = []
    expected = np.load(Path(tmp) / "expected.npz")
    texts = json.loads((Path(tmp) / "texts.json").read_text(encoding="utf-8"))
    if "task_logits" in expected.files:
        return _task_child(folder, expected, texts, tolerance)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    has_head = "logits" in expected.files
    cls = AutoModelForMaskedLM if has_head else AutoModel
    kwargs = {} if has_head else {"add_pooling_layer": False}
    model, info = cls.from_pretrained(folder, output_loading_info=True, **kwargs)
    model.eval()
    missing = [k for k in info["missing_keys"] if ".pooler." not in f".{k}"]
    if missing:
        problems.append(f"weights missing on reload (would be random): {missing[:5]}")
    if info.get("mismatched_keys"):
        problems.append(f"weights with mismatched shapes: {info['mismatched_keys'][:5]}")
    enc = tokenizer(texts, padding=True, truncation=True, max_length=min(MAX_LENGTH, max_positions(config)),
                    return_tensors="pt")
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows or config.vocab_size != rows:
        problems.append(f"tokenizer has {len(tokenizer)} entries, config {config.vocab_size}, embeddings {rows}")
    if int(enc["input_ids"].max()) >= rows:
        problems.append(f"the tokenizer emits id {int(enc['input_ids'].max())} but the model has {rows} rows")
    if enc["input_ids"].shape != expected["input_ids"].shape or not np.array_equal(
            enc["input_ids"].numpy(), expected["input_ids"]):
        problems.append("the saved tokenizer segments the validation text differently from the in-memory one")
    diff = {}
    if not problems:
        with torch.no_grad():
            base = getattr(model, model.base_model_prefix, model)
            hidden = base(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].numpy().astype(bool)
            diff["hidden"] = float(np.abs(hidden.numpy() - expected["hidden"])[mask].max())
            if has_head:
                logits = model(**enc).logits.numpy()
                diff["logits"] = float(np.abs(logits - expected["logits"])[mask].max())
        for name, value in diff.items():
            if not value <= tolerance:
                problems.append(f"{name} differ by {value:.2e} (> {tolerance:.0e})")
    return {"problems": problems, "max_abs_diff": diff, "vocab_rows": rows, "tokenizer_size": len(tokenizer)}


def _task_child(folder: str, expected: Any, texts: list[str], tolerance: float) -> dict[str, Any]:
    """The fresh process's check of a task model: stock auto class, same logits, a working pipeline."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification, pipeline

    config = AutoConfig.from_pretrained(folder)
    token_level = any(a.endswith("ForTokenClassification") for a in config.architectures or ())
    auto = AutoModelForTokenClassification if token_level else AutoModelForSequenceClassification
    model, info = auto.from_pretrained(folder, output_loading_info=True)
    model.eval()
    problems = [f"weights missing on reload (would be random): {info['missing_keys'][:5]}"] \
        if info["missing_keys"] else []
    ids, mask = (torch.as_tensor(expected[k]) for k in ("input_ids", "attention_mask"))
    diff = {}
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.numpy()
    rows = mask.numpy().astype(bool) if token_level else slice(None)
    diff["logits"] = float(np.abs(logits - expected["task_logits"])[rows].max())
    if not diff["logits"] <= tolerance:
        problems.append(f"logits differ by {diff['logits']:.2e} (> {tolerance:.0e})")
    labels = {label[2:] if label[:2] in ("B-", "I-") else label for label in config.id2label.values()}
    if token_level:  # spans are named by their tag without its B-/I- prefix
        found = pipeline("token-classification", model=folder, aggregation_strategy="first")(texts[0])
        shown = {span["entity_group"] for span in found}
    else:
        shown = {pipeline("text-classification", model=folder)(texts[0])[0]["label"]}
    if not shown <= labels:
        problems.append(f"the pipeline labels text with {sorted(shown - labels)}, not the model's labels")
    return {"problems": problems, "max_abs_diff": diff, "pipeline_labels": sorted(shown)}


def child_main(argv: list[str]) -> int:
    """The fresh process's entry: `FOLDER TMP TOLERANCE` -> one JSON line on stdout."""
    print(json.dumps(_child(argv[0], argv[1], float(argv[2]))))
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
