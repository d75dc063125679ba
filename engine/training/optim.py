"""The optimiser every training loop uses: AdamW without weight decay on biases and LayerNorm weights."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight")


def adamw(named: Iterable[tuple[str, nn.Parameter]], learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over `named` parameters, fused: one pass over each tensor, where the default (foreach) makes about
    ten with full-size temporaries (on a CPU, 0.1 s against 1.2-1.7 s to update e5's 107M parameters)."""
    named = list(named)
    return torch.optim.AdamW([
        {"params": [p for n, p in named if not n.endswith(NO_DECAY)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n.endswith(NO_DECAY)], "weight_decay": 0.0},
    ], lr=learning_rate, fused=True)
