"""The one stage interface: `run(ctx: StageContext) -> StageOutput`.

The pipeline owns order, saving, verification, checkpoints and resume; a stage only transforms
its input model (and trains, through `engine.training.loop`) and reports through `ctx`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.distributed import SINGLE, Distributed
from engine.events import CancelToken, EventSink, Log, Metric
from engine.models.loading import LoadedModel
from engine.recipe import Recipe, Stage
from engine.training.checkpoints import Checkpoints


@dataclass
class StageContext:
    index: int
    config: Stage
    recipe: Recipe
    model: LoadedModel  # this stage's input: the teacher or the previous stage's output
    teacher: LoadedModel  # the run's (possibly adapted or vocabulary-trimmed) teacher
    train_texts: list[str]
    validation_texts: list[str]
    device: torch.device
    sink: EventSink
    token: CancelToken
    checkpoints: Checkpoints
    distributed: Distributed = SINGLE
    reference: LoadedModel | None = None  # the last model trained to reproduce the teacher (no pruning/cut since)

    def __post_init__(self) -> None:
        if self.reference is None:
            self.reference = self.teacher

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def seed(self) -> int:
        return self.recipe.run.seed

    def log(self, message: str, level: str = "info") -> None:
        self.sink.emit(Log(message=f"[{self.index:02d} {self.kind}] {message}", level=level))

    def metric(self, name: str, value: float, step: int = 0, split: str = "train") -> None:
        self.sink.emit(Metric(index=self.index, stage=self.kind, name=name, value=float(value),
                              step=step, split=split))


@dataclass
class StageOutput:
    model: LoadedModel
    metrics: dict[str, Any] = field(default_factory=dict)


StageRun = Callable[[StageContext], StageOutput]
