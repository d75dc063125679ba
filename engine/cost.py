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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from engine.configs import Training
    from engine.shapes import Shape

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
        import torch

        from engine.training.precision import autocast_dtype, matmul_rate, pick_device

        device = pick_device(name)
        dtype = autocast_dtype(precision, device) or torch.float32
        label = (f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                 else f"cpu ({torch.get_num_threads()} threads)")
        return cls(f"{label}, {str(dtype).removeprefix('torch.')}", _free_bytes(device),
                   matmul_rate(device, dtype, budget=0.4), _adamw_rate(device))

    def seconds(self, flops: float) -> float:
        """Time of `flops` of whole-model work (at `EFFICIENCY` of the matmul rate)."""
        return flops / (self.matmul_flops * EFFICIENCY)


@dataclass(frozen=True)
class CostInputs:
    """What a stage's cost model may use: the run's teacher, the stage's input and output shapes, sentence
    lengths (memory: `max_length`, the worst case; time: `length`, typical) and the device."""

    teacher: Shape
    source: Shape
    target: Shape
    max_length: int
    length: int
    device: Device


@dataclass(frozen=True)
class StageCost:
    """What a stage holds at its peak besides the models' weights, and how long it takes."""

    bytes: int
    seconds: float


def _free_bytes(device: torch.device) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info["MemAvailable"]
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _timed(device: torch.device, fn, repeats: int) -> float:
    import torch

    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def _adamw_rate(device: torch.device) -> float:
    import torch

    p = torch.nn.Parameter(torch.zeros(16_000_000, device=device))  # large enough to amortise per-call costs
    p.grad = torch.ones_like(p)
    optimizer = torch.optim.AdamW([p], lr=1e-5, fused=True)  # as the training loop builds it (engine.training.optim)

    def step() -> None:
        optimizer.step()
        p.grad.zero_()
        p.grad += 1

    return p.numel() / _timed(device, step, 3)


def activation_bytes(shape: Shape, batch: int, length: int) -> int:
    """fp32 tensors a BERT layer saves for backward, per layer (Korthikanti et al. 2022, fp32, no recompute)."""
    tokens = batch * length
    return 4 * tokens * (10 * shape.hidden + 2 * shape.ffn + 2 * shape.heads * length) * shape.layers


def forward_flops(shape: Shape, tokens: int, length: int) -> float:
    return 2 * shape.params()["encoder"] * tokens + 4 * shape.layers * tokens * length * shape.hidden


def step_flops(student: Shape, tokens: int, length: int, logit_rows: int, teacher: Shape | None = None) -> float:
    """FLOPs of one training step on `tokens` tokens in sequences of `length`: the student's forward and backward
    (3 forward passes), its vocabulary projection of `logit_rows` rows, and the forward (with the same rows'
    projection) of `teacher` when one teaches. Embedding lookups, normalisation, the loss and the optimiser
    count nothing: this is the matrix-multiply work a step cannot avoid."""
    flops = 3 * forward_flops(student, tokens, length) + 6 * logit_rows * student.hidden * student.vocab
    if teacher is not None:
        flops += forward_flops(teacher, tokens, length) + 2 * logit_rows * teacher.hidden * teacher.vocab
    return flops


def weights_bytes(*shapes: Shape) -> int:
    return 4 * sum(s.total_params for s in shapes)


def training_cost(cfg: Training, inputs: CostInputs, logit_rows: Callable[[int], int], teacher_forward: bool,
                  extra_steps: int = 0) -> StageCost:
    """A stage that trains its output model with AdamW: gradients, moments and the best-state copy, a
    batch's activations and vocabulary logits (`logit_rows(tokens)` rows), and per step 3 forward passes
    of the student (+ one of the input model when it teaches)."""
    student, trainable, batch = inputs.target, inputs.target.total_params, cfg.batch_size
    held = 4 * trainable * 4 + activation_bytes(student, batch, inputs.max_length)
    held += 4 * logit_rows(batch * inputs.max_length) * student.vocab * 4  # logits, log-softmax, grad, teacher's
    tokens = batch * inputs.length
    flops = step_flops(student, tokens, inputs.length, logit_rows(tokens), inputs.source if teacher_forward else None)
    per_step = inputs.device.seconds(flops) + trainable / inputs.device.adamw_params_per_second
    return StageCost(held, (cfg.max_steps * cfg.grad_accumulation + extra_steps) * per_step)
