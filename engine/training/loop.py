"""The optimisation loop shared by adapt, distill and shrink.

AdamW with warmup + linear decay, gradient clipping and accumulation, mixed precision (autocast,
with loss scaling for fp16), periodic validation with best-state selection (the teacher's outputs
on the validation batches computed once), checkpoints through the pipeline, cooperative cancellation. Batch k and its
dropout are derived from (seed, k), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from engine.data.batches import BatchStream, derive_seed
from engine.events import Progress
from engine.recipe import Training
from engine.stages.base import StageContext
from engine.training.losses import Objective
from engine.training.optim import adamw
from engine.training.precision import Precision


def train(ctx: StageContext, net: nn.Module, tokenizer, objective: Objective, cfg: Training,
          phase: str = "train", parameters: Iterable[tuple[str, nn.Parameter]] | None = None) -> dict[str, float]:
    """Train `net` on the stage's corpus; returns summary metrics and leaves the best state loaded."""
    max_length = ctx.recipe.corpus.max_length
    stream = BatchStream(tokenizer, ctx.train_texts, max_length, cfg.batch_size, ctx.seed,
                         mlm_probability=cfg.mlm_probability)
    val_stream = BatchStream(tokenizer, ctx.validation_texts, max_length, cfg.batch_size,
                             derive_seed(ctx.seed, "validation", 0), mlm_probability=cfg.mlm_probability)
    val_inputs = [batch_inputs(val_stream.batch(i), ctx.device)
                  for i in range(min(cfg.eval_batches, val_stream.batches_per_epoch))]
    # the teacher is frozen and the validation batches fixed: its outputs on them can be kept
    teacher_targets = getattr(objective, "targets", None) if getattr(cfg, "cache_teacher", False) else None
    val_targets: list | None = None
    precision = Precision.for_run(ctx.recipe.run.precision, ctx.device)
    scaler = precision.scaler()

    dist = ctx.distributed
    named = [(n, p) for n, p in (parameters if parameters is not None else net.named_parameters())
             if p.requires_grad]
    trainable = [p for _, p in named]
    optimizer = adamw(named, cfg.learning_rate, cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * cfg.max_steps), cfg.max_steps)

    start, best_loss, best_step, best_state = 0, math.inf, 0, None
    saved = ctx.checkpoints.load(phase)
    if saved is not None:
        tensors, state = saved
        net.load_state_dict(tensors["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler.is_enabled() and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start, best_loss, best_step = state["step"], state["best_loss"], state["best_step"]
        best_state = tensors.get("best")
        ctx.log(f"{phase}: resumed from step {start}")

    def validate(step: int) -> float:
        nonlocal val_targets
        net.eval()
        totals: dict[str, float] = {}
        with torch.no_grad(), precision.autocast():
            if teacher_targets is not None and val_targets is None:
                val_targets = [teacher_targets(batch) for batch in val_inputs]
            for i, batch in enumerate(val_inputs):
                parts = objective(batch) if val_targets is None else objective(batch, val_targets[i])
                for name, value in parts.items():
                    totals[name] = totals.get(name, 0.0) + float(value) / len(val_inputs)
        for name, value in totals.items():
            ctx.metric(f"{phase}/{name}", value, step, "validation")
        net.train()
        return totals["total"]

    def checkpoint(step: int) -> None:
        if not dist.is_main:
            return
        tensors = {"model": net.state_dict()}
        if best_state is not None:
            tensors["best"] = best_state
        ctx.checkpoints.save(phase, tensors, {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "step": step, "best_loss": best_loss, "best_step": best_step,
        })

    net.train()
    began, tokens, last_loss = time.monotonic(), 0, math.nan
    for step in range(start, cfg.max_steps):
        ctx.token.raise_if_cancelled()
        parts_sum: dict[str, float] = {}
        for micro in range(cfg.grad_accumulation):
            index = dist.batch_index(step, micro, cfg.grad_accumulation)
            torch.manual_seed(derive_seed(ctx.seed, "dropout", index))
            batch = stream.batch(index)
            with precision.autocast():
                parts = objective(batch_inputs(batch, ctx.device))
            scaler.scale(parts["total"] / cfg.grad_accumulation).backward()
            tokens += dist.total(batch.real_tokens)
            for name, value in parts.items():
                parts_sum[name] = parts_sum.get(name, 0.0) + float(value.detach()) / cfg.grad_accumulation
        dist.average_gradients(trainable)
        parts_sum = dist.mean(parts_sum)
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        last_loss = parts_sum["total"]
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"{phase}: the loss became {last_loss} at step {done}; "
                                     "lower the learning rate")
        for name, value in parts_sum.items():
            ctx.metric(f"{phase}/{name}", value, done)
        ctx.metric(f"{phase}/learning_rate", scheduler.get_last_lr()[0], done)
        elapsed = time.monotonic() - began
        rate = tokens / elapsed if elapsed > 0 else 0.0
        eta = elapsed / (done - start) * (cfg.max_steps - done)
        ctx.sink.emit(Progress(index=ctx.index, stage=ctx.kind, step=done, total=cfg.max_steps,
                               tokens_per_second=rate, eta_seconds=eta))
        if done % cfg.eval_every == 0 or done == cfg.max_steps:
            loss = validate(done)
            if loss < best_loss:
                best_loss, best_step = loss, done
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
        if done % cfg.checkpoint_every == 0 or done == cfg.max_steps:
            checkpoint(done)
            dist.barrier()
    if best_state is not None:
        net.load_state_dict(best_state, strict=False)
    net.eval()
    return {f"{phase}_best_validation_loss": best_loss, f"{phase}_best_step": best_step,
            f"{phase}_final_train_loss": last_loss}


def batch_inputs(batch, device: torch.device) -> dict[str, torch.Tensor]:
    batch = batch.to(device)
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "labels": batch.labels}
