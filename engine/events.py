"""Events: small immutable records of what a run does, sent through one `EventSink.emit()`.

Sinks are peers: the console, the `events.jsonl` file and the GUI bridge all receive the same
events. Events round-trip through JSON (`to_json` / `event_from_json`) so a GUI can follow a run
that another process writes.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Protocol

from engine.errors import Cancelled

TASK_LOSS = "task/loss"  # a task model's training loss Metric (a "/" name: plotted like the stages' losses)


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"
    time: float = field(default_factory=time.time, kw_only=True)

    def to_json(self) -> str:
        """Strict JSON: non-finite numbers become null."""
        data = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}
        return json.dumps({"event": self.kind, **data}, ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    run_dir: str
    stages: tuple[str, ...]
    resumed: bool = False


@dataclass(frozen=True)
class RunFinished(Event):
    kind: ClassVar[str] = "run_finished"
    status: str  # completed | failed | cancelled
    message: str = ""


@dataclass(frozen=True)
class StageStarted(Event):
    kind: ClassVar[str] = "stage_started"
    index: int
    stage: str
    total_steps: int = 0


@dataclass(frozen=True)
class StageFinished(Event):
    kind: ClassVar[str] = "stage_finished"
    index: int
    stage: str
    status: str  # completed | failed | cancelled | skipped


@dataclass(frozen=True)
class Progress(Event):
    """`step` of `total` done: training steps (with tokens/s), or with `unit` "line" the lines of a pass over
    the corpus (with `per_second` lines/s), such as counting the vocabulary."""

    kind: ClassVar[str] = "progress"
    index: int
    stage: str
    step: int
    total: int
    tokens_per_second: float = 0.0
    eta_seconds: float | None = None
    unit: str = "step"
    per_second: float = 0.0  # units a second, for a unit other than "step"

    @property
    def text(self) -> str:
        """'step 3/10 · 1,234 tokens/s', or 'line 120,000/2,350,000 · 14,000 lines/s'."""
        if self.unit == "step":
            rate = f" · {self.tokens_per_second:,.0f} tokens/s" if self.tokens_per_second else ""
            return f"step {self.step}/{self.total}{rate}"
        rate = f" · {self.per_second:,.0f} {self.unit}s/s" if self.per_second else ""
        return f"{self.unit} {self.step:,}/{self.total:,}{rate}"


@dataclass(frozen=True)
class Metric(Event):
    kind: ClassVar[str] = "metric"
    index: int
    stage: str
    name: str
    value: float
    step: int = 0
    split: str = "train"


@dataclass(frozen=True)
class Artifact(Event):
    kind: ClassVar[str] = "artifact"
    index: int
    stage: str
    path: str
    params: int
    bytes: int


@dataclass(frozen=True)
class EvalResult(Event):
    """One model × task × seed scored on the test split (metrics are fractions in [0, 1])."""

    kind: ClassVar[str] = "eval_result"
    model: str
    task: str
    seed: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class EvalProgress(Event):
    """`done` of `total` evaluation jobs (model × task × seed) finished; the job now running, if any."""

    kind: ClassVar[str] = "eval_progress"
    done: int
    total: int
    task: str = ""  # empty once every job is done
    model: str = ""
    seed: int = 0
    eta_seconds: float | None = None


@dataclass(frozen=True)
class EvalDevScore(Event):
    """A dev-set score within one job: after a fine-tuning epoch, or after a probe's fit of one layer and L2."""

    kind: ClassVar[str] = "eval_dev_score"
    task: str
    model: str
    seed: int
    metric: str
    value: float
    epoch: int = 0  # fine-tuning: the epoch, from 1; probes: 0
    layer: int = 0  # probes: the layer fitted, from 1; fine-tuning: 0
    l2: float = 0.0

    @property
    def text(self) -> str:
        """'dev accuracy 0.812 (epoch 3)', or '… (layer 4, L2 0.001)' for a probe's fit."""
        where = f"epoch {self.epoch}" if self.epoch else f"layer {self.layer}, L2 {self.l2:g}" if self.layer else ""
        return f"dev {self.metric} {self.value:.3f}" + (f" ({where})" if where else "")


@dataclass(frozen=True)
class Log(Event):
    kind: ClassVar[str] = "log"
    message: str
    level: str = "info"  # info | warning


@dataclass(frozen=True)
class QualityWarning(Event):
    """A stage lost more label-free quality (`metric`: fidelity, masked_accuracy or retrieval_top1) than its
    kind should, compared with the stage before it (the teacher for the first); `message` says what to change."""

    kind: ClassVar[str] = "quality_warning"
    index: int
    stage: str
    metric: str
    before: float
    after: float
    message: str


@dataclass(frozen=True)
class Failure(Event):
    kind: ClassVar[str] = "failure"
    message: str
    traceback: str = ""
    index: int = -1
    stage: str = ""


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (RunStarted, RunFinished, StageStarted, StageFinished, Progress, Metric, Artifact, EvalResult,
                EvalProgress, EvalDevScore, Log, QualityWarning, Failure)
}


def event_from_json(line: str) -> Event:
    """Parse one `events.jsonl` line back into its event."""
    data = json.loads(line)
    cls = EVENT_TYPES[data.pop("event")]
    names = {f.name for f in fields(cls)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
    return cls(**values)


class EventSink(Protocol):
    def emit(self, event: Event) -> None: ...


class FanOut:
    """Sends each event to several sinks."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks = list(sinks)

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            sink.emit(event)


class Collect:
    """Keeps every event in memory (tests, small tools)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of(self, cls: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]


class JsonlSink:
    """Appends every event to a file as one JSON line, flushed at once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(event.to_json() + "\n")


def read_events(path: Path, offset: int = 0) -> tuple[list[Event], int]:
    """Events in a JSONL file from byte `offset`, and the offset after the last whole line."""
    events: list[Event] = []
    with Path(path).open("rb") as f:
        f.seek(offset)
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # a line still being written
            offset += len(raw)
            events.append(event_from_json(raw.decode("utf-8")))
    return events, offset


class ConsoleSink:
    """Human-readable progress on a terminal, throttled to a few lines per second."""

    def __init__(self, stream=None, interval: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self._last = 0.0

    def emit(self, event: Event) -> None:
        line = self._format(event)
        if line is None:
            return
        if isinstance(event, Progress | EvalProgress):
            now = time.monotonic()
            last = (event.step if isinstance(event, Progress) else event.done) == event.total
            if now - self._last < self.interval and not last:
                return
            self._last = now
        print(line, file=self.stream, flush=True)

    @staticmethod
    def _format(event: Event) -> str | None:
        if isinstance(event, StageStarted):
            return f"[{event.index:02d} {event.stage}] started"
        if isinstance(event, StageFinished):
            return f"[{event.index:02d} {event.stage}] {event.status}"
        if isinstance(event, Progress):
            eta = f" eta {event.eta_seconds:.0f}s" if event.eta_seconds is not None else ""
            if event.unit != "step":
                return f"[{event.index:02d} {event.stage}] {event.text}{eta}"
            rate = f" {event.tokens_per_second:.0f} tok/s" if event.tokens_per_second else ""
            return f"[{event.index:02d} {event.stage}] step {event.step}/{event.total}{rate}{eta}"
        if isinstance(event, Metric) and event.split != "train":
            return f"[{event.index:02d} {event.stage}] {event.split} {event.name} = {event.value:.4g}"
        if isinstance(event, QualityWarning):
            return f"[{event.index:02d} {event.stage}] warning: {event.message}"
        if isinstance(event, Artifact):
            return f"[{event.index:02d} {event.stage}] wrote {event.path} ({event.params:,} params)"
        if isinstance(event, EvalResult):
            scores = ", ".join(f"{k} {v:.3f}" for k, v in event.metrics.items())
            return f"[eval] {event.task} {event.model} seed {event.seed}: {scores}"
        if isinstance(event, EvalProgress):
            eta = f" eta {event.eta_seconds:.0f}s" if event.eta_seconds is not None else ""
            now = f": {event.task} {event.model} seed {event.seed}" if event.task else ""
            return f"[eval] {event.done}/{event.total} done{eta}{now}"
        if isinstance(event, EvalDevScore):
            return f"[eval] {event.task} {event.model} seed {event.seed}: {event.text}"
        if isinstance(event, Log):
            return f"{event.level}: {event.message}"
        if isinstance(event, Failure):
            return f"error: {event.message}"
        if isinstance(event, RunFinished):
            return f"run {event.status}"
        return None


class CancelToken:
    """Cooperative cancellation: the owner calls `cancel()`, workers call `raise_if_cancelled()`."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")
