"""Task models that ship: an encoder fine-tuned (and, given a fine-tuned teacher, task-distilled) into a
stock Hugging Face token- or text-classification folder with its tokenizer, model card and scores.

`build_task_model` reads the task data, checks a teacher task model against it (its kind and labels),
has the teacher label the train texts and the unlabelled in-language texts once (cached on disk when a
cache folder is given: the teacher, data and text set fingerprint it), fine-tunes the encoder through the
one training loop (`engine.evaluate.finetune.fit`), writes the folder atomically and proves it in a fresh
process: the same logits with stock `AutoModelFor…Classification`, and `transformers.pipeline` labelling
raw text. `miniglot_task.json` in the folder holds the facts (scores, data fingerprint, lineage).

Unlabelled texts: one per line, duplicates and every line equal to a dev or test text dropped, at most
`UNLABELLED_LIMIT` (a fixed seeded sample, the same for every seed, so teacher predictions are reused; a
corpus of any size is streamed, only the sample is held);
token tasks split them into words and punctuation (`WORDS`), as CoNLL data are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.configs import TaskModelConfig
from engine.data.corpus import HUB_PREFIX, derive_seed, open_corpus
from engine.data.tasks import Columns, TaskData, TokenExample, load_task
from engine.errors import ModelError, TaskDataError
from engine.evaluate.encoding import most_frequent_tag
from engine.evaluate.finetune import DevScore, FitStep, fit, score
from engine.evaluate.report import headline
from engine.evaluate.teacher_targets import Distillation, teacher_logits
from engine.events import (
    TASK_LOSS,
    Artifact,
    CancelToken,
    EventSink,
    Log,
    Metric,
    Progress,
    StageFinished,
    StageStarted,
)
from engine.modelcard import render_task_card
from engine.models.loading import resolve_source, strip_remote_code, weight_bytes
from engine.runfolder import MODEL_CARD, TASK_FILE, atomic_write_text, folder_bytes, folder_fingerprint, saving
from engine.tasks import HEAD_SUFFIX
from engine.tasks import task as task_kind
from engine.verify import verify_task_folder

UNLABELLED_LIMIT = 20_000
WORDS = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")
MAX_LENGTH = 128


def build_task_model(encoder: str, config: TaskModelConfig, out: Path, sink: EventSink, *,
                     teacher: str | None = None, corpus: Sequence[str] = (), cache: Path | None = None,
                     device: str = "cpu", index: int = 0, name: str = "", token: CancelToken | None = None) -> dict:
    """Fine-tune `encoder` (a folder, `packaged:…` or `hub:…`) into the task model `config` asks for at `out`.

    With `teacher` (a task model folder or source) and `config.distill`, the student also learns the
    teacher's predictions on the train texts and the unlabelled texts (`config.unlabelled`, else
    `corpus`, else the corpus of the run `encoder` is a stage model of). Events go to `sink` as stage
    `index` named `name`. Returns the facts written to `out/miniglot_task.json`.
    """
    token = token or CancelToken()
    kind = task_kind(config.task)
    name = name or f"{config.task} model"
    encoder_dir = resolve_source(encoder)
    _check_kind(encoder_dir, encoder, kind.token_level, config.task, "MODEL")
    _check_out(out)
    data = load_task(config.task, config.data, seed=config.seed,
                     columns=Columns(config.text_column, config.label_column))
    sink.emit(StageStarted(index=index, stage=name))
    distillation, teacher_test = None, None
    if teacher is not None and config.distill:
        sink.emit(Log(message=f"{name}: the teacher {teacher} labels the training texts"))
        unlabelled = unlabelled_inputs(config.unlabelled or tuple(corpus) or run_corpus(encoder_dir), data)
        distillation, teacher_test = teacher_predictions(teacher, data, unlabelled, cache, device, token)
        distillation = dataclasses.replace(distillation, temperature=config.temperature, alpha=config.alpha,
                                           unlabelled_ratio=config.unlabelled_ratio)
        sink.emit(Log(message=f"{name}: learning from the teacher on {len(data.train)} train and "
                              f"{len(unlabelled)} unlabelled texts"))
    fitted = fit(encoder_dir, data, config.seed, epochs=config.epochs or None,
                 learning_rate=config.learning_rate or None, device=device, distillation=distillation,
                 progress=_reporter(sink, index, name), token=token)
    result = fitted.result
    facts = {
        "out": str(out), "task": config.task, "headline": headline(config.task), "labels": list(data.labels),
        "dev": result.dev_metrics, "test": result.metrics, "data": _where(config.data),
        "columns": {"text": config.text_column, "label": config.label_column},
        "data_fingerprint": data.fingerprint(), "sizes": {"train": result.train_size, "dev": result.dev_size,
                                                          "test": result.test_size},
        "encoder": encoder, "lineage": lineage(encoder_dir), "seed": config.seed, "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch, "learning_rate": result.learning_rate, "seconds": round(result.seconds, 1),
        "params": sum(p.numel() for p in fitted.model.parameters()),
        "distilled": distillation is not None,
    }
    if distillation is not None:
        facts |= {"teacher": teacher, "teacher_test": teacher_test, "temperature": config.temperature,
                  "alpha": config.alpha, "unlabelled": len(distillation.unlabelled),
                  "unlabelled_ratio": config.unlabelled_ratio}
    facts["verification"] = write_task_model(fitted.model, fitted.tokenizer, facts, data, out)
    sink.emit(Artifact(index=index, stage=name, path=str(out), params=facts["params"], bytes=folder_bytes(out)))
    for split in ("dev", "test"):
        sink.emit(Metric(index=index, stage=name, name=facts["headline"], value=facts[split][facts["headline"]],
                         split=split))
    sink.emit(StageFinished(index=index, stage=name, status="completed"))
    return facts


def write_task_model(model: Any, tokenizer: Any, facts: dict, data: TaskData, out: Path) -> dict:
    """Save the model, tokenizer, card and facts to `out` (replacing an earlier task model there only once
    the new one is complete) and verify the folder in a fresh process; the verification's result."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        with saving(out, weight_bytes(model)):
            model.save_pretrained(partial, safe_serialization=True)
            tokenizer.save_pretrained(partial)
        strip_remote_code(partial)
        texts = [_text(example) for example in data.test[:8]]
        verification = verify_task_folder(partial, model, tokenizer, texts)
        facts = {**facts, "verification": verification}
        atomic_write_text(partial / TASK_FILE, json.dumps(facts, indent=2, ensure_ascii=False))
        atomic_write_text(partial / MODEL_CARD, render_task_card(facts))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return verification


def teacher_predictions(teacher: str, data: TaskData, unlabelled: Sequence[str | tuple[str, ...]],
                        cache: Path | None, device: str, token: CancelToken) -> tuple[Distillation, dict]:
    """The teacher task model's logits (columns in `data.labels` order) on the train and unlabelled inputs,
    and its test scores; from `cache` when the same teacher, data and texts were labelled before (then the
    teacher's weights are not loaded)."""
    path, config = task_model_config(teacher, data.task)
    missing = [label for label in data.labels if label not in config.label2id]
    if missing:
        raise TaskDataError(f"the teacher {teacher} does not know the labels {missing} of {data.source}; "
                            f"it predicts {sorted(config.label2id)}: give a teacher fine-tuned on this data")
    columns = [config.label2id[label] for label in data.labels]
    groups = {"train": [_inputs(ex) for ex in data.train], "unlabelled": list(unlabelled),
              "test": [_inputs(ex) for ex in data.test]}
    key = hashlib.sha256(json.dumps([folder_fingerprint(path), data.fingerprint(),
                                     list(map(list, unlabelled)) if data.is_token_task else list(unlabelled),
                                     MAX_LENGTH]).encode()).hexdigest()[:16]
    cached = cache / f"teacher-logits-{key}.npz" if cache is not None else None
    if cached is not None and cached.is_file():
        logits = _load_ragged(cached)
    else:
        tokenizer, model = load_task_model(path, data.is_token_task)
        logits = {group: [row[..., columns] for row in teacher_logits(model, tokenizer, inputs, data.is_token_task,
                                                                       MAX_LENGTH, device=device, token=token)]
                  for group, inputs in groups.items()}
        if cached is not None:
            _save_ragged(cached, logits)
    predictions = _labels_of(logits["test"], data)
    return (Distillation(logits["train"], tuple(unlabelled), logits["unlabelled"]),
            score(data.task, data.test, predictions))


def task_model_config(source: str, task: str) -> tuple[Path, Any]:
    """A task model's folder and config, refused with a one-line error when it is not a model of `task`'s kind."""
    from transformers import AutoConfig

    path = resolve_source(source)
    token_level = task_kind(task).token_level
    architectures = _check_kind(path, source, token_level, task, "the teacher")
    if not any(a.endswith(HEAD_SUFFIX[token_level]) for a in architectures):
        raise ModelError(f"the teacher {source} is not a task model (architectures {architectures or 'unknown'}); "
                         f"fine-tune it first: miniglot-cli finetune {source} --task {task} --data … --out …")
    return path, AutoConfig.from_pretrained(path, trust_remote_code=False)


def load_task_model(path: Path, token_level: bool) -> tuple[Any, Any]:
    """The tokenizer and model of the task model folder `path` (checked by `task_model_config`)."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from engine.evaluate.finetune import load_tokenizer

    auto = AutoModelForTokenClassification if token_level else AutoModelForSequenceClassification
    return load_tokenizer(path), auto.from_pretrained(path, use_safetensors=True, trust_remote_code=False)


def unlabelled_inputs(sources: Sequence[str], data: TaskData) -> list[str | tuple[str, ...]]:
    """The unlabelled texts of `sources` (see the module docstring): texts, or word tuples for token tasks."""
    if not sources:
        return []
    held_out = {_text(example) for example in (*data.dev, *data.test)}
    corpus = open_corpus(list(sources))  # streamed from disk: only the sample is read into memory
    kept = np.fromiter((i for i, line in enumerate(corpus) if line not in held_out), dtype=np.int64)
    if len(kept) > UNLABELLED_LIMIT:
        kept = kept[random.Random(derive_seed(0, "unlabelled")).sample(range(len(kept)), UNLABELLED_LIMIT)]
    lines = corpus.take(kept)
    if not data.is_token_task:
        return lines
    return [words for words in (tuple(WORDS.findall(line)) for line in lines) if words]


def run_corpus(encoder_dir: Path) -> tuple[str, ...]:
    """The training corpus of the MiniGlot run whose stage model `encoder_dir` is (else none)."""
    from engine.recipe import Recipe

    for parent in list(encoder_dir.parents)[:3]:
        if (parent / "manifest.json").is_file() and (parent / "recipe.toml").is_file():
            return Recipe.load(parent / "recipe.toml").corpus.train
    return ()


def lineage(encoder_dir: Path) -> dict:
    """Where the encoder came from: its run (teacher, stage) when it is a stage model of a MiniGlot run."""
    for parent in list(encoder_dir.parents)[:3]:
        manifest = parent / "manifest.json"
        if manifest.is_file():
            data = json.loads(manifest.read_text(encoding="utf-8"))
            return {"run": parent.name, "stage": encoder_dir.parent.name,
                    "teacher": (data.get("teacher") or {}).get("source"),
                    "teacher_params": (data.get("teacher") or {}).get("params")}
    facts = encoder_dir / TASK_FILE
    if facts.is_file():
        return {"task_model": json.loads(facts.read_text(encoding="utf-8")).get("lineage")}
    return {}


def _check_kind(path: Path, source: str, token_level: bool, task: str, role: str) -> list[str]:
    """`path`'s architectures; a task model of the other kind (token vs text) is refused in one line."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []  # inspect_folder, when the folder is loaded, says what is wrong
    architectures = list(config.get("architectures") or ())
    other = HEAD_SUFFIX[not token_level]
    if any(a.endswith(other) for a in architectures):
        kinds = "text-classification" if token_level else "token-classification"
        raise ModelError(f"{role} {source} is a {kinds} model ({architectures[0]}); task {task} needs "
                         f"{'a token' if token_level else 'a text'}-classification model or a plain encoder")
    return architectures


def _check_out(out: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier task model, and a mount point."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / TASK_FILE).is_file())):
        raise TaskDataError(f"{out} exists and is not a MiniGlot task model; choose another --out")
    if os.path.ismount(out):
        raise TaskDataError(f"{out} is a mount point, which a task model cannot replace: write it into a new "
                            f"folder inside it (--out {out / 'task-model'})")


def _reporter(sink: EventSink, index: int, name: str):
    def report(event: FitStep | DevScore) -> None:
        if isinstance(event, FitStep):
            sink.emit(Progress(index=index, stage=name, step=event.step, total=event.steps,
                               eta_seconds=event.eta_seconds))
            sink.emit(Metric(index=index, stage=name, name=TASK_LOSS, value=event.loss, step=event.step))
        else:
            sink.emit(Metric(index=index, stage=name, name=event.metric, value=event.value, step=event.epoch,
                             split="dev"))
    return report


def _where(data: str) -> str:
    """A data source as recorded: local paths absolute, so the facts stay true from any folder."""
    return data if data.startswith(HUB_PREFIX) else str(Path(data).expanduser().resolve())


def _inputs(example: Any) -> str | tuple[str, ...]:
    return tuple(example.words) if isinstance(example, TokenExample) else example.text


def _text(example: Any) -> str:
    return " ".join(example.words) if isinstance(example, TokenExample) else example.text


def _labels_of(logits: Sequence[np.ndarray], data: TaskData) -> list[Any]:
    """Predicted labels from logits in `data.labels` order (words the model cut: the most frequent tag)."""
    if not data.is_token_task:
        return [data.labels[int(np.argmax(row))] for row in logits]
    fallback = most_frequent_tag(data)
    return [[fallback if np.isnan(word).any() else data.labels[int(np.argmax(word))] for word in rows]
            for rows in logits]


def _save_ragged(path: Path, groups: dict[str, list[np.ndarray]]) -> None:
    arrays = {}
    for group, rows in groups.items():
        flat = [np.atleast_2d(row) for row in rows]
        arrays[f"{group}.rows"] = np.array([len(row) for row in flat], dtype=np.int64)
        arrays[f"{group}.ndim"] = np.array([rows[0].ndim if rows else 1])
        arrays[f"{group}.flat"] = np.concatenate(flat) if flat else np.zeros((0, 0), np.float32)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, **arrays)
    partial.replace(path)


def _load_ragged(path: Path) -> dict[str, list[np.ndarray]]:
    with np.load(path, allow_pickle=False) as arrays:
        groups = {}
        for group in {name.split(".")[0] for name in arrays.files}:
            flat, counts = arrays[f"{group}.flat"], arrays[f"{group}.rows"]
            rows = np.split(flat, np.cumsum(counts)[:-1]) if len(counts) else []
            groups[group] = [row[0] if int(arrays[f"{group}.ndim"][0]) == 1 else row for row in rows]
    return groups
