"""The run's device, and mixed precision: which autocast dtype a run's `precision` means on it.

Weights, optimizer state and saved models stay fp32; only the forward passes of student and
teacher run in the reduced dtype. `auto` picks bf16 on GPUs that support it (else fp16, with
loss scaling), bf16 on CPUs with native bf16 kernels (AVX512-BF16/AMX, where it is faster), and
fp32 on other CPUs (AVX2 emulates bf16, which is slower than fp32).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from engine.distributed import SINGLE, Distributed
from engine.errors import RecipeError


def pick_device(name: str, dist: Distributed = SINGLE) -> torch.device:
    """The run's device; under torchrun/accelerate each process takes its own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.enabled:
        name = f"cuda:{dist.local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"run.device = {name!r} but no CUDA GPU is available; use auto or cpu")
    return device


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None means plain fp32."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu":
        if precision == "fp16":
            raise RecipeError("run.precision = 'fp16' needs a GPU; use bf16 or fp32 on the CPU")
        if precision == "auto":
            return torch.bfloat16 if cpu_has_fast_bf16() else None
        return torch.bfloat16
    if precision == "auto":
        return None
    return torch.bfloat16 if precision == "bf16" else torch.float16


@dataclass(frozen=True)
class Precision:
    """Autocast for forward passes, and a loss scaler where fp16 needs one."""

    device: torch.device
    dtype: torch.dtype | None

    @classmethod
    def for_run(cls, precision: str, device: torch.device) -> Precision:
        return cls(device, autocast_dtype(precision, device))

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """fp16 gradients underflow without loss scaling; the scaler is a pass-through otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype is torch.float16)
