"""Data parallelism on torch.distributed, for runs started by `torchrun` or `accelerate launch`.

Each process trains on its own whole batches: at optimizer step k, process r of W takes stream
batches `(k·A + a)·W + r` for a < A (A = grad_accumulation), and gradients are averaged over
processes. That is exactly a single-process run with grad_accumulation W·A over the same batches,
so loss curves agree up to floating-point summation order. Only rank 0 writes the run folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """Join the process group that `torchrun` / `accelerate launch` describe in the environment."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def batch_index(self, step: int, micro: int, accumulation: int) -> int:
        """The stream batch this process trains on at optimizer `step`, micro-batch `micro`."""
        return (step * accumulation + micro) * self.world + self.rank

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        if not self.enabled:
            return
        import torch.distributed as dist

        grads = [p.grad for p in parameters if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    @property
    def device(self) -> torch.device:
        """Where collective tensors live: the process's GPU under NCCL, else the CPU (gloo)."""
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The average of each value over processes (for logged losses)."""
        if not self.enabled:
            return values
        import torch.distributed as dist

        names = sorted(values)
        tensor = torch.tensor([values[n] for n in names], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return {n: v / self.world for n, v in zip(names, tensor.tolist(), strict=True)}

    def total(self, value: int) -> int:
        if not self.enabled:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor)
        return int(tensor.item())

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every process."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


SINGLE = Distributed()
