"""The one stage interface: `run(ctx: StageContext) -> StageOutput`, and how a stage trains.

The pipeline owns order, saving, verification, checkpoints and resume; a stage only transforms
its input model (and trains, through `train_stage` and so `engine.training.loop`) and reports
through `ctx`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from engine.configs import Stage, Training
from engine.data.batches import BatchStream, derive_seed
from engine.distributed import SINGLE, Distributed
from engine.events import CancelToken, EventSink, Log, Metric, Progress
from engine.models.loading import LoadedModel
from engine.training.checkpoints import Checkpoints
from engine.training.loop import LoopSettings, TrainBatch, TrainState, on_device, train
from engine.training.precision import Precision

if TYPE_CHECKING:
    from engine.recipe import Recipe
    from engine.training.losses import Objective


@dataclass
class StageContext:
    index: int
    config: Stage
    recipe: Recipe
    model: LoadedModel  # this stage's input: the teacher or the previous stage's output
    teacher: LoadedModel  # the run's (possibly adapted or vocabulary-trimmed) teacher
    train_texts: Sequence[str]  # the corpus's lines (engine.data.corpus.Lines: read from disk on demand)
    validation_texts: Sequence[str]
    device: torch.device
    precision: Precision
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


def train_stage(ctx: StageContext, net: nn.Module, tokenizer: Any, objective: Objective, cfg: Training,
                phase: str, parameters: Iterable[tuple[str, nn.Parameter]] | None = None) -> dict[str, float]:
    """Train `net` on the stage's corpus through the training loop; summary metrics, best state loaded.

    Batches are length-grouped (and masked for MLM) from the run's seed; the validation loss is the
    objective's on the first `eval_batches` validation batches, with the teacher's side computed once
    when `cache_teacher` is set (the teacher is frozen and those batches fixed).
    """
    max_length = ctx.recipe.corpus.max_length
    stream = BatchStream(tokenizer, ctx.train_texts, max_length, cfg.batch_size, ctx.seed,
                         mlm_probability=cfg.mlm_probability)
    val_stream = BatchStream(tokenizer, ctx.validation_texts, max_length, cfg.batch_size,
                             derive_seed(ctx.seed, "validation", 0), mlm_probability=cfg.mlm_probability)
    val_inputs = [on_device(val_stream.batch(i), ctx.device)
                  for i in range(min(cfg.eval_batches, val_stream.batches_per_epoch))]
    cached: list | None = None
    precision = ctx.precision

    def validate() -> dict[str, float]:
        nonlocal cached
        totals: dict[str, float] = {}
        with precision.autocast():
            if getattr(cfg, "cache_teacher", False) and hasattr(objective, "targets") and cached is None:
                cached = [objective.targets(inputs) for inputs in val_inputs]
            for i, inputs in enumerate(val_inputs):
                parts = objective(inputs) if cached is None else objective(inputs, cached[i])
                for name, value in parts.items():
                    totals[name] = totals.get(name, 0.0) + float(value) / len(val_inputs)
        return totals

    def batch(index: int) -> TrainBatch:
        data = stream.batch(index)
        return TrainBatch(on_device(data, ctx.device), data.real_tokens)

    settings = LoopSettings(
        max_steps=cfg.max_steps, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio, grad_clip=cfg.grad_clip, grad_accumulation=cfg.grad_accumulation,
        eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every, dropout_seed=ctx.seed)
    state = train(net, objective, batch, validate, settings, _StageObserver(ctx, phase), precision=precision,
                  token=ctx.token, checkpoints=ctx.checkpoints, phase=phase, distributed=ctx.distributed,
                  parameters=parameters)
    return {f"{phase}_best_validation_loss": state.best, f"{phase}_best_step": state.best_step,
            f"{phase}_final_train_loss": state.last_loss}


@dataclass
class _StageObserver:
    """The loop's steps and validations as the stage's metric and progress events."""

    ctx: StageContext
    phase: str

    def stepped(self, state: TrainState, losses: dict[str, float], learning_rate: float,
                tokens_per_second: float, eta_seconds: float) -> None:
        for name, value in losses.items():
            self.ctx.metric(f"{self.phase}/{name}", value, state.step)
        self.ctx.metric(f"{self.phase}/learning_rate", learning_rate, state.step)
        self.ctx.sink.emit(Progress(index=self.ctx.index, stage=self.ctx.kind, step=state.step,
                                    total=self.ctx.config.max_steps, tokens_per_second=tokens_per_second,
                                    eta_seconds=eta_seconds))

    def validated(self, state: TrainState, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.ctx.metric(f"{self.phase}/{name}", value, state.step, "validation")

    def resumed(self, state: TrainState) -> None:
        self.ctx.log(f"{self.phase}: resumed from step {state.step}")
