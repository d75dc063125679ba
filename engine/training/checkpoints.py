"""Stage checkpoints: weights (safetensors), optimizer/scheduler state and step, written atomically.

The pipeline owns the folder; a training loop asks it to save and, on resume, to load.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.errors import RunFolderError
from engine.runfolder import atomic_dir, saving

STATE = "state.pt"


class Checkpoints:
    """Named checkpoints (one per training phase) under one stage's `checkpoint/` folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def save(self, name: str, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> None:
        with atomic_dir(self.folder / name) as tmp, saving(self.folder, _bytes(tensors) + _bytes(state)):
            for group, values in tensors.items():
                save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in values.items()},
                          str(tmp / f"{group}.safetensors"))
            torch.save(state, tmp / STATE)

    def load(self, name: str) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]] | None:
        """The checkpoint `name` (tensors by group, state), None when there is none; a RunFolderError naming
        the file when it is damaged (a truncated copy, a disk error)."""
        path = self.folder / name
        if not (path / STATE).is_file():
            return None
        tensors, file = {}, path / STATE
        try:
            for file in sorted(path.glob("*.safetensors")):
                tensors[file.stem] = load_file(str(file))
            file = path / STATE
            return tensors, torch.load(file, weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]  # torch's goes on
            raise RunFolderError(f"the checkpoint {file} is damaged ({reason}); delete {self.folder} to restart "
                                 "this stage from its first step, then resume") from None

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _bytes(value: Any) -> int:
    """The bytes of the tensors in `value` (nested dicts, lists and tuples)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_bytes(v) for v in value)
    return 0
