"""Structured FFN pruning: physically remove the least important intermediate neurons."""

from __future__ import annotations

import torch
from torch import nn

from engine.models.adapters import FamilyAdapter


def prune_ffn(
    model: nn.Module, adapter: FamilyAdapter, importance: list[torch.Tensor], width: int
) -> nn.Module:
    """Keep the `width` most important neurons of every layer; returns the same model, modified.

    Slices the FFN input rows and bias and the FFN output columns (kept neurons stay in ascending
    index order) and sets `config.intermediate_size`, so the result saves and reloads as a stock
    model. Every layer keeps the same width because a stock config has one intermediate size.
    """
    layers = [adapter.layer_parts(layer) for layer in adapter.layers(model)]
    if len(importance) != len(layers):
        raise ValueError(f"got importance for {len(importance)} layers, the model has {len(layers)}")
    current = model.config.intermediate_size
    if not 1 <= width <= current:
        raise ValueError(f"FFN width must be between 1 and the current width {current}, got {width}")
    for index, (parts, scores) in enumerate(zip(layers, importance, strict=True)):
        if scores.shape != (parts.ffn_in.out_features,):
            raise ValueError(
                f"layer {index}: importance has shape {tuple(scores.shape)}, "
                f"expected ({parts.ffn_in.out_features},)"
            )
    for parts, scores in zip(layers, importance, strict=True):
        keep = torch.topk(scores, width).indices.sort().values
        keep_rows(parts.ffn_in, keep)
        keep_input_columns(parts.ffn_out, keep)
    model.config.intermediate_size = width
    return model


def keep_rows(linear: nn.Linear, keep: torch.Tensor) -> None:
    """Keep only the output units `keep` of `linear` (weight rows and bias), in place."""
    keep = keep.to(linear.weight.device)
    linear.weight.data = linear.weight.data[keep].contiguous()
    if linear.bias is not None:
        linear.bias.data = linear.bias.data[keep].contiguous()
    linear.out_features = len(keep)


def keep_input_columns(linear: nn.Linear, keep: torch.Tensor) -> None:
    """Keep only the input units `keep` of `linear` (weight columns), in place."""
    linear.weight.data = linear.weight.data[:, keep.to(linear.weight.device)].contiguous()
    linear.in_features = len(keep)
