"""Peak memory and time each stage of a recipe will need on a device, before any weights are loaded.

Memory counts what a stage holds at its peak: the weights of every model alive (the run's teacher,
the stage's input and its student, fp32), the student's gradients and AdamW state, the best-state
copy, the saved activations of a batch of `corpus.max_length` tokens per sentence (the worst case
of length-grouped batches), and the vocabulary logits at the positions the loss projects. Time
multiplies the FLOPs of a step (forward = 2 × non-embedding parameters × tokens plus attention;
training = 3 × forward) by the device's dense matmul rate measured here, at an efficiency of
`EFFICIENCY`, and adds the AdamW update, which is memory-bound, at a rate measured here too.
Expect agreement within a factor of about two: real batches are shorter than the worst case,
and kernel efficiency varies with shapes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from engine.recipe import AdaptStage, DistillStage, PruneStage, Recipe, ShrinkStage, TrimVocabStage
from engine.shapes import Shape, stage_shapes
from engine.training.precision import autocast_dtype

EFFICIENCY = 0.5  # of the measured matmul rate reached by whole training steps (attention, layer norms, copies)
MASKED = 0.15  # fraction of tokens the MLM losses project to the vocabulary
PROCESS_BYTES = 700 * 2**20  # Python + torch + transformers, or a CUDA context
SENTENCE_TOKENS = 40  # typical tokens per sentence, for time (memory assumes corpus.max_length)
TRIM_SECONDS = 10.0  # vocabulary trimming: tokenising the corpus and copying rows (bench/trim_vocab.py)


@dataclass(frozen=True)
class Device:
    """What a device offers, measured now."""

    name: str
    free_bytes: int  # RAM available to a new process, or free GPU memory
    matmul_flops: float  # dense matmul FLOP/s at the run's precision
    adamw_params_per_second: float  # AdamW update (with zeroing the gradient) throughput

    @classmethod
    def probe(cls, name: str = "auto", precision: str = "auto") -> Device:
        from engine.pipeline import pick_device

        device = pick_device(name)
        dtype = autocast_dtype(precision, device) or torch.float32
        label = (f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                 else f"cpu ({torch.get_num_threads()} threads)")
        return cls(f"{label}, {str(dtype).removeprefix('torch.')}", _free_bytes(device),
                   _matmul_rate(device, dtype), _adamw_rate(device))


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info["MemAvailable"]
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _timed(device: torch.device, fn, repeats: int) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def _matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _timed(device, lambda: a @ b, 10)


def _adamw_rate(device: torch.device) -> float:
    p = torch.nn.Parameter(torch.zeros(16_000_000, device=device))  # large enough to amortise per-call costs
    p.grad = torch.ones_like(p)
    optimizer = torch.optim.AdamW([p], lr=1e-5)

    def step() -> None:
        optimizer.step()
        p.grad.zero_()
        p.grad += 1

    return p.numel() / _timed(device, step, 3)


def _encoder_params(shape: Shape) -> int:
    return shape.params()["encoder"]


def _activation_bytes(shape: Shape, batch: int, length: int) -> int:
    """fp32 tensors a BERT layer saves for backward, per layer (Korthikanti et al. 2022, fp32, no recompute)."""
    tokens = batch * length
    return 4 * tokens * (10 * shape.hidden + 2 * shape.ffn + 2 * shape.heads * length) * shape.layers


def _forward_flops(shape: Shape, tokens: int, length: int) -> float:
    return 2 * _encoder_params(shape) * tokens + 4 * shape.layers * tokens * length * shape.hidden


def _weights(*shapes: Shape) -> int:
    return 4 * sum(s.total_params for s in shapes)


def stage_costs(recipe: Recipe, teacher: Shape, device: Device,
                sentence_tokens: int = SENTENCE_TOKENS) -> list[dict[str, Any]]:
    """One row per stage: `peak_bytes`, `fits`, `seconds`, and what they assume."""
    shapes = stage_shapes(recipe, teacher)
    max_length = recipe.corpus.max_length
    length = min(sentence_tokens, max_length)
    rows = []
    for i, stage in enumerate(recipe.stages, start=1):
        source, target = shapes[i - 1], shapes[i]
        alive = (teacher, source, target) if i > 1 else (teacher, target)
        peak, seconds = _weights(*alive), 0.0
        if isinstance(stage, (AdaptStage, DistillStage, ShrinkStage)):
            batch = stage.batch_size
            student, trainable = target, target.total_params
            # gradients, AdamW moments, the best-state copy
            peak += 4 * trainable * 4
            peak += _activation_bytes(student, batch, max_length)
            peak_rows = _logit_rows(stage, source, target, batch * max_length)
            peak += 4 * peak_rows * target.vocab * 4  # student logits, log-softmax, gradient, teacher logits
            tokens = batch * length
            logit_rows = _logit_rows(stage, source, target, tokens)
            step = 3 * _forward_flops(student, tokens, length) + 6 * logit_rows * target.hidden * target.vocab
            if not isinstance(stage, AdaptStage):
                step += _forward_flops(source, tokens, length) + 2 * logit_rows * source.hidden * source.vocab
            per_step = step / (device.matmul_flops * EFFICIENCY) + trainable / device.adamw_params_per_second
            steps = stage.max_steps * stage.grad_accumulation
            if isinstance(stage, AdaptStage) and not teacher.mlm_head:
                steps += stage.head_steps
            seconds = steps * per_step
        elif isinstance(stage, PruneStage):
            batch, tokens = stage.batch_size, stage.batch_size * length
            peak += 4 * source.total_params + _activation_bytes(source, batch, max_length)
            passes = stage.importance_batches * (2 if stage.ffn is not None else 1)
            seconds = passes * 3 * _forward_flops(source, tokens, length) / (device.matmul_flops * EFFICIENCY)
        elif isinstance(stage, TrimVocabStage):
            peak += _weights(source)
            seconds = TRIM_SECONDS
        if recipe.run.verify:
            peak += _weights(target)  # the reload process holds one more copy
        peak += PROCESS_BYTES
        rows.append({"name": f"{i:02d}-{stage.kind}", "peak_bytes": int(peak), "fits": peak <= device.free_bytes,
                     "seconds": seconds})
    return rows


def _logit_rows(stage, source: Shape, target: Shape, tokens: int) -> int:
    """Rows projected to the vocabulary per batch by the stage's loss."""
    if not target.mlm_head:
        return 0
    if isinstance(stage, AdaptStage):
        return int(MASKED * tokens)
    logit_loss = stage.loss != "hidden" and source.mlm_head
    if logit_loss and stage.all_positions:
        return tokens
    return int(MASKED * tokens) if logit_loss or stage.alpha > 0 else 0
