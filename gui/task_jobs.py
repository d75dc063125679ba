"""Work-thread bodies of the Task model tab: training a task model, reading one's facts, labelling typed text.

Each runs through `gui.worker` (the engine and transformers are imported there, never on the GUI thread).
"""

from __future__ import annotations

import json
import time
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

from engine.configs import TaskModelConfig
from engine.data.tasks import word_spans
from engine.tasks import TASKS


@dataclass(frozen=True)
class TaskJob:
    """What to train: `encoder` (a folder or `packaged:<name>`) fine-tuned as `config` says into `out`,
    task-distilled from the task model `teacher` when given."""

    encoder: str
    config: TaskModelConfig
    out: Path
    teacher: str | None = None


@dataclass(frozen=True)
class TaskModel:
    """A written task model: its folder, its facts (`miniglot_task.json`) and, when distilled, its teacher's."""

    folder: Path
    facts: dict[str, Any]
    teacher: dict[str, Any] | None = None


@dataclass(frozen=True)
class Prediction:
    """A task model's answer for `text`: spans with `entity_group`, `start`, `end`, `score` (token tasks) or
    labels with `score`, best first (text tasks); `milliseconds` the pipeline call, `load_seconds` its loading."""

    text: str
    token_level: bool
    items: tuple[dict[str, Any], ...]
    milliseconds: float
    load_seconds: float = 0.0


def train_task_model(sink: Any, token: Any, job: TaskJob, threads: int) -> TaskModel:
    """Work-thread body: `engine.taskmodel.build_task_model` on the best device, events into `sink`."""
    import torch

    from engine.taskmodel import build_task_model
    from engine.training.precision import pick_device

    torch.set_num_threads(threads)
    facts = build_task_model(job.encoder, job.config, job.out, sink, teacher=job.teacher,
                             device=str(pick_device("auto")), index=1, token=token)
    return TaskModel(job.out, facts, read_facts(Path(job.teacher)) if job.teacher else None)


def read_task_model(folder: Path) -> TaskModel | None:
    """The task model in `folder` with its teacher's facts; None when `folder` holds no task model."""
    facts = read_facts(folder)
    if facts is None:
        return None
    teacher = facts.get("teacher")
    return TaskModel(Path(folder), facts, read_facts(Path(teacher)) if teacher else None)


def read_facts(folder: Path) -> dict[str, Any] | None:
    """`folder`'s `miniglot_task.json`; None when it has none (a packaged or hub teacher, say)."""
    from engine.runfolder import TASK_FILE

    path = Path(folder) / TASK_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


class Labeller:
    """A task model folder's `transformers.pipeline`: loaded on first use, again only once the folder was
    rewritten. Called from one work thread at a time."""

    def __init__(self) -> None:
        self._key: tuple[str, int] | None = None
        self._pipeline: Any = None
        self._token_level = False

    def __call__(self, folder: Path, text: str) -> Prediction:
        from engine.runfolder import TASK_FILE

        facts_file = Path(folder).resolve() / TASK_FILE
        key, load_seconds = (str(facts_file), facts_file.stat().st_mtime_ns), 0.0
        if key != self._key:
            start = time.perf_counter()
            self._load(facts_file)
            self._key, load_seconds = key, time.perf_counter() - start
        start = time.perf_counter()
        if self._token_level:  # tagged word by word, as the training data was: punctuation apart
            spans = word_spans(text)
            items = self._pipeline([[text[s:e] for s, e in spans]], is_split_into_words=True)[0] if spans else []
            items = [in_text(item, text, spans) for item in items]
        else:
            items = self._pipeline([text])[0]  # a batch of one
        milliseconds = 1000 * (time.perf_counter() - start)
        plain = tuple({k: float(v) if k == "score" else v for k, v in item.items()} for item in items)
        return Prediction(text, self._token_level, plain, milliseconds, load_seconds)

    def _load(self, facts_file: Path) -> None:
        from transformers import pipeline

        self._key = self._pipeline = None  # a failed load leaves nothing half-replaced
        kind = TASKS[json.loads(facts_file.read_text(encoding="utf-8"))["task"]]
        options = {"aggregation_strategy": "first"} if kind.token_level else {"top_k": None}
        self._pipeline = pipeline(kind.pipeline_tag, model=str(facts_file.parent), **options)
        self._token_level = kind.token_level


def in_text(item: dict[str, Any], text: str, spans: list[tuple[int, int]]) -> dict[str, Any]:
    """A pipeline span over words joined by single spaces, moved to where those words are in `text`."""
    starts = list(accumulate((end - start + 1 for start, end in spans[:-1]), initial=0))

    def place(offset: int) -> int:
        word = bisect_right(starts, offset) - 1
        return spans[word][0] + offset - starts[word]

    start, end = place(item["start"]), place(item["end"])
    return {**item, "start": start, "end": end, "word": text[start:end]}
