"""The run's device, and mixed precision: which autocast dtype a run's `precision` means on it.

Weights, optimizer state and saved models stay fp32; only the forward passes of student and
teacher run in the reduced dtype. `auto` picks bf16 on GPUs that support it (else fp16, with
loss scaling). On a CPU it picks bf16 only where a short measurement says bf16 matrix products are
faster than fp32 ones (`cpu_prefers_bf16`): a CPU flag is not enough (oneDNN may report bf16 support
that runs slower than fp32, and AVX2 emulates bf16 at a fraction of fp32's speed). The measurement
takes well under a second and is kept per machine (CPU model and flags) and torch version in
`precision.json` in the user cache, so it runs once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine.distributed import SINGLE, Distributed
from engine.errors import RecipeError
from engine.runfolder import atomic_write_text

# The linear layers of a small encoder layer at 128 tokens (tokens, in, out): attention projection, FFN in, FFN out.
PROBE_SHAPES = ((128, 384, 384), (128, 384, 1536), (128, 1536, 384))
PROBE_BUDGET_SECONDS = 0.25  # per dtype: a dtype slower than this on one round is measured on that round alone
BF16_MARGIN = 1.2  # bf16 must beat fp32 by this factor: autocast also casts weights and activations
CACHE_FILE = "precision.json"


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
    """True when oneDNN reports native bf16 kernels on this CPU (a claim; `cpu_prefers_bf16` measures)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Bf16Probe:
    """fp32 and bf16 throughput of the same linear layers on this CPU, and what `auto` makes of it."""

    fp32_gflops: float
    bf16_gflops: float
    onednn_bf16: bool  # what the CPU flag alone said

    @property
    def bf16(self) -> bool:
        return self.bf16_gflops > BF16_MARGIN * self.fp32_gflops


def matmul_rate(device: torch.device, dtype: torch.dtype, shapes=None, budget: float = 1.0) -> float:
    """Matrix-multiply FLOP/s of `dtype` on `device`: x[m, k] @ w[k, n] over `shapes` ((m, k, n), default one
    square 1024 product, 4096 on a GPU), after one untimed round, for about `budget` seconds. A round slower
    than half the budget is its own measurement (so a slow dtype costs one round, not a second of repeats)."""
    if shapes is None:
        n = 4096 if device.type == "cuda" else 1024
        shapes = ((n, n, n),)
    pairs = [(torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype))
             for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)

    def one_round() -> float:
        start = time.perf_counter()
        for a, b in pairs:
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    first = one_round()  # warm-up: kernel selection, JIT, first-touch pages
    if first > budget / 2:
        return flops / first
    rounds, spent = 0, 0.0
    while rounds < 2 or spent < budget / 2:
        spent += one_round()
        rounds += 1
    return rounds * flops / spent


def measure_bf16(measure: Callable[[torch.dtype], float] | None = None) -> Bf16Probe:
    """fp32 against bf16 on `PROBE_SHAPES` in this process (well under a second; about 0.4 s where bf16 is
    emulated)."""
    cpu = torch.device("cpu")
    measure = measure or (lambda dtype: matmul_rate(cpu, dtype, PROBE_SHAPES, PROBE_BUDGET_SECONDS))
    with torch.no_grad():
        fp32, bf16 = measure(torch.float32), measure(torch.bfloat16)
    return Bf16Probe(fp32 / 1e9, bf16 / 1e9, cpu_has_fast_bf16())


def machine_key() -> str:
    """This machine for the cache: CPU model and flags (Linux: /proc/cpuinfo), torch version and build."""
    cpu = ""
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
        fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in lines if ":" in line)}
        cpu = f"{fields.get('model name', '')}|{fields.get('flags', '')}"  # (the last processor's)
    if not cpu:
        import platform

        cpu = f"{platform.machine()}|{platform.processor()}"
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    text = f"{cpu}|torch {torch.__version__}|{capability}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path() -> Path:
    """`$MINIGLOT_CACHE/precision.json`, else `~/.cache/miniglot/precision.json`."""
    root = os.environ.get("MINIGLOT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "miniglot") / CACHE_FILE


_decided: dict[str, Bf16Probe] = {}  # this process's answers, by machine key


def cpu_prefers_bf16(measure: Callable[[], Bf16Probe] = measure_bf16, path: Path | None = None) -> Bf16Probe:
    """Whether `auto` runs bf16 on this CPU: the cached measurement for this machine and torch version, else a
    new one (`measure`), written to the cache (a cache that cannot be read or written is only a slower start)."""
    key = machine_key()
    if key in _decided and path is None:
        return _decided[key]
    path = path or cache_path()
    cached: dict = {}
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(path.read_text(encoding="utf-8"))
    entry = cached.get(key) if isinstance(cached, dict) else None
    try:
        probe = Bf16Probe(float(entry["fp32_gflops"]), float(entry["bf16_gflops"]), bool(entry["onednn_bf16"]))
    except (TypeError, KeyError, ValueError):
        probe = measure()
        cached = cached if isinstance(cached, dict) else {}
        cached[key] = {**asdict(probe), "bf16": probe.bf16, "torch": torch.__version__,
                       "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with contextlib.suppress(OSError):
            atomic_write_text(path, json.dumps(cached, indent=2))
    _decided[key] = probe
    return probe


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
            return torch.bfloat16 if cpu_prefers_bf16().bf16 else None
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
