"""The one training loop: every encoder MiniGlot trains (adapt, distill, shrink, fine-tuning) trains here.

AdamW with warmup + linear decay, gradient clipping and accumulation, mixed precision (autocast, with
loss scaling for fp16), data-parallel gradient averaging, periodic validation with best-state selection
and optional early stopping, checkpoints for resume, cooperative cancellation. Everything it needs comes
in explicitly: the batches (`batch(index)`), the objective, the validation, the settings, and an observer
that hears each step and each validation (the stages turn them into events, evaluation into progress).
Batch k and its dropout are derived from the index alone, so a resumed run continues exactly where it
stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from engine.data.batches import derive_seed
from engine.distributed import SINGLE, Distributed
from engine.events import CancelToken
from engine.training.checkpoints import Checkpoints
from engine.training.heap import retained_heap
from engine.training.optim import adamw
from engine.training.precision import Precision

Inputs = dict[str, torch.Tensor]
Losses = Callable[[Inputs], "dict[str, torch.Tensor] | None"]  # named losses with "total"; None: skip


@dataclass(frozen=True)
class LoopSettings:
    """How to optimise. `eval_every` steps between validations (the last step always validates);
    `patience`: stop after that many validations without improvement (0: never); `maximize`: the
    selected validation value is a score (higher is better) rather than a loss; `dropout_seed`: re-seed
    torch before every batch from (seed, batch index), which makes a resumed run exact (None: leave the
    global generator running); `checkpoint_every`: 0 for never."""

    max_steps: int
    learning_rate: float
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accumulation: int = 1
    eval_every: int = 50
    checkpoint_every: int = 0
    patience: int = 0
    select: str = "total"  # the validation value that picks the best state
    maximize: bool = False
    dropout_seed: int | None = None


@dataclass
class TrainState:
    """Where a training stands; saved in every checkpoint."""

    step: int = 0
    best: float = math.nan  # the best validation value so far (NaN before the first validation)
    best_step: int = 0
    stale: int = 0  # validations since the best one
    tokens: int = 0  # real (unpadded) tokens trained on in this process, for the rate
    last_loss: float = math.nan

    def improves(self, value: float, maximize: bool) -> bool:
        if math.isnan(self.best):
            return True
        return value > self.best if maximize else value < self.best


@dataclass(frozen=True)
class TrainBatch:
    """One micro-batch: the objective's inputs (on the device) and its real token count."""

    inputs: Inputs
    tokens: int


class Observer(Protocol):
    """Hears the loop: after every optimiser step, every validation, and a resume."""

    def stepped(self, state: TrainState, losses: dict[str, float], learning_rate: float,
                tokens_per_second: float, eta_seconds: float) -> None: ...

    def validated(self, state: TrainState, values: dict[str, float]) -> None: ...

    def resumed(self, state: TrainState) -> None: ...


@retained_heap()
def train(net: nn.Module, objective: Losses, batch: Callable[[int], TrainBatch],
          validate: Callable[[], dict[str, float]], settings: LoopSettings, observer: Observer, *,
          precision: Precision, token: CancelToken | None = None, checkpoints: Checkpoints | None = None,
          phase: str = "train", distributed: Distributed = SINGLE,
          parameters: Iterable[tuple[str, nn.Parameter]] | None = None) -> TrainState:
    """Train `net` for `settings.max_steps` optimiser steps (fewer when early stopping ends it); leaves the
    best validated state loaded and `net` in eval mode.

    `objective(inputs)` returns named losses with "total" (None when the batch has nothing to learn: the
    step is skipped but the schedule advances); `validate()` runs with `net` in eval mode and returns named
    values including `settings.select`. `parameters` limits training to those (default: all that require
    gradients). `checkpoints` saves the weights, the best state, the optimiser and the `TrainState` under
    `phase` every `checkpoint_every` steps and resumes from them. Freed memory stays with the process while it
    trains (`engine.training.heap.retained_heap`: no page faults for each step's large tensors).
    """
    cfg, dist = settings, distributed
    named = [(n, p) for n, p in (parameters if parameters is not None else net.named_parameters())
             if p.requires_grad]
    trainable = [p for _, p in named]
    optimizer = adamw(named, cfg.learning_rate, cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * cfg.max_steps), cfg.max_steps)
    scaler = precision.scaler()
    state, best_state = TrainState(), None
    saved = checkpoints.load(phase) if checkpoints is not None else None
    if saved is not None:
        tensors, stored = saved
        net.load_state_dict(tensors["model"], strict=False)
        optimizer.load_state_dict(stored["optimizer"])
        scheduler.load_state_dict(stored["scheduler"])
        if scaler.is_enabled() and stored.get("scaler"):
            scaler.load_state_dict(stored["scaler"])
        state = TrainState(**stored["train_state"]) if "train_state" in stored else TrainState(  # an older checkpoint
            step=stored["step"], best=stored["best_loss"], best_step=stored["best_step"])
        state.tokens = 0
        best_state = tensors.get("best")
        observer.resumed(state)

    def checkpoint() -> None:
        if dist.is_main:
            tensors = {"model": net.state_dict()}
            if best_state is not None:
                tensors["best"] = best_state
            checkpoints.save(phase, tensors, {
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "train_state": asdict(state)})
        dist.barrier()

    net.train()
    start, began = state.step, time.monotonic()
    while state.step < cfg.max_steps:
        if token is not None:
            token.raise_if_cancelled()
        losses = _accumulate(objective, batch, state, cfg, precision, scaler, dist)
        if losses is not None:
            dist.average_gradients(trainable)
            losses = dist.mean(losses)
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            state.last_loss = losses["total"]
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        if losses is not None and not math.isfinite(state.last_loss):
            raise FloatingPointError(f"{phase}: the loss became {state.last_loss} at step {state.step}; "
                                     "lower the learning rate")
        elapsed = time.monotonic() - began
        observer.stepped(state, losses or {}, scheduler.get_last_lr()[0],
                         state.tokens / elapsed if elapsed > 0 else 0.0,
                         elapsed / (state.step - start) * (cfg.max_steps - state.step))
        stop = False
        if state.step % cfg.eval_every == 0 or state.step == cfg.max_steps:
            net.eval()
            with torch.no_grad():
                values = validate()
            net.train()
            if state.improves(values[cfg.select], cfg.maximize):
                state.best, state.best_step, state.stale = values[cfg.select], state.step, 0
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
            else:
                state.stale += 1
            observer.validated(state, values)
            stop = 0 < cfg.patience <= state.stale
        if checkpoints is not None and cfg.checkpoint_every and (
                state.step % cfg.checkpoint_every == 0 or state.step == cfg.max_steps):
            checkpoint()
        if stop:
            break
    if best_state is not None:
        net.load_state_dict(best_state, strict=False)
    net.eval()
    return state


def _accumulate(objective: Losses, batch: Callable[[int], TrainBatch], state: TrainState,
                cfg: LoopSettings, precision: Precision, scaler: torch.amp.GradScaler,
                dist: Distributed) -> dict[str, float] | None:
    """Forward and backward over one step's micro-batches; their mean losses (None: nothing learnt)."""
    sums: dict[str, float] = {}
    learnt = False
    for micro in range(cfg.grad_accumulation):
        index = dist.batch_index(state.step, micro, cfg.grad_accumulation)
        if cfg.dropout_seed is not None:
            torch.manual_seed(derive_seed(cfg.dropout_seed, "dropout", index))
        micro_batch = batch(index)
        with precision.autocast():
            parts = objective(micro_batch.inputs)
        state.tokens += dist.total(micro_batch.tokens)
        if parts is None:
            continue
        learnt = True
        scaler.scale(parts["total"] / cfg.grad_accumulation).backward()
        for name, value in parts.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach()) / cfg.grad_accumulation
    return sums if learnt else None


def on_device(inputs: Any, device: torch.device) -> Inputs:
    """A data batch's tensors as the objective's inputs on `device`."""
    moved = inputs.to(device)
    return {"input_ids": moved.input_ids, "attention_mask": moved.attention_mask, "labels": moved.labels}
