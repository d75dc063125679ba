"""Structured FFN pruning: physically remove the least important intermediate neurons."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from engine.models.adapters import FamilyAdapter, LayerParts


def prune_ffn(
    model: nn.Module, adapter: FamilyAdapter, importance: list[torch.Tensor], width: int
) -> nn.Module:
    """Keep the `width` most important neurons of every layer; returns the same model, modified.

    Slices the FFN input rows and bias and the FFN output columns (kept neurons stay in ascending
    index order) and sets `config.intermediate_size`, so the result saves and reloads as a stock
    model. Every layer keeps the same width because a stock config has one intermediate size.
    """
    for parts, keep in zip(_layer_parts(model, adapter), kept_neurons(model, adapter, importance, width), strict=True):
        keep_rows(parts.ffn_in, keep)
        keep_input_columns(parts.ffn_out, keep)
    model.config.intermediate_size = width
    return model


def prune_ffn_refit(
    model: nn.Module, reference: nn.Module, adapter: FamilyAdapter, importance: list[torch.Tensor], width: int,
    batches: Sequence[dict], ridge: float = 1e-3,
) -> nn.Module:
    """`prune_ffn`, then each layer's output projection refitted so the kept neurons reproduce the FFN output.

    Layer by layer from the bottom, the new output weights and bias are the ridge-regression solution
    that maps the kept neurons' activations (in `model`, whose lower layers are already pruned) to the
    unpruned `reference`'s FFN output, over the real tokens of `batches`: the kept neurons take over
    what the removed ones contributed, and each layer corrects the error of the layers below.
    `ridge` is relative to the mean activation energy. Returns `model`, modified.
    """
    keeps = kept_neurons(model, adapter, importance, width)
    references = _layer_parts(reference, adapter)
    for index, (parts, keep) in enumerate(zip(_layer_parts(model, adapter), keeps, strict=True)):
        gram = torch.zeros(width + 1, width + 1, dtype=torch.float64)
        cross = torch.zeros(width + 1, parts.ffn_out.out_features, dtype=torch.float64)
        for batch in batches:
            kept = ffn_activations(model, adapter, batch, index)[:, keep.to(parts.ffn_out.weight.device)]
            x = torch.cat([kept.to("cpu", torch.float64), torch.ones(len(kept), 1, dtype=torch.float64)], dim=1)
            with torch.inference_mode():
                y = references[index].ffn_out(ffn_activations(reference, adapter, batch, index))
            gram += x.T @ x
            cross += x.T @ y.to("cpu", torch.float64)
        gram.diagonal()[:width] += ridge * gram.diagonal()[:width].mean()
        solution = torch.linalg.solve(gram, cross).to(parts.ffn_out.weight.device, parts.ffn_out.weight.dtype)
        keep_rows(parts.ffn_in, keep)
        keep_input_columns(parts.ffn_out, keep)
        parts.ffn_out.weight.data = solution[:width].T.contiguous()
        parts.ffn_out.bias.data = solution[width].contiguous()
    model.config.intermediate_size = width
    return model


def kept_neurons(
    model: nn.Module, adapter: FamilyAdapter, importance: list[torch.Tensor], width: int
) -> list[torch.Tensor]:
    """Per layer, the indices of the `width` highest-scoring neurons in ascending order (ValueError on a width
    or score shape that does not fit the model)."""
    layers = _layer_parts(model, adapter)
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
    return [torch.topk(scores, width).indices.sort().values for scores in importance]


class _Reached(Exception):
    """Raised by the capture hook once the wanted activations are in hand: the rest of the forward is skipped."""


def ffn_activations(model: nn.Module, adapter: FamilyAdapter, batch: dict, layer: int) -> torch.Tensor:
    """Layer `layer`'s FFN activations (the output projection's input) at the batch's real tokens,
    [tokens, width]; the forward pass stops there, and the batch's MLM labels, if any, are unmasked first."""
    ffn_out = _layer_parts(model, adapter)[layer].ffn_out
    attention = batch["attention_mask"]
    found: list[torch.Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        found.append(inputs[0][attention.bool()])
        raise _Reached

    handle = ffn_out.register_forward_pre_hook(hook)
    try:
        with torch.inference_mode():
            adapter.base(model)(input_ids=unmasked(batch), attention_mask=attention)
    except _Reached:
        pass
    finally:
        handle.remove()
    return found[0]


def unmasked(batch: dict) -> torch.Tensor:
    """The batch's input ids with any MLM masking undone."""
    labels = batch.get("labels")
    return batch["input_ids"] if labels is None else torch.where(labels != -100, labels, batch["input_ids"])


def _layer_parts(model: nn.Module, adapter: FamilyAdapter) -> list[LayerParts]:
    return [adapter.layer_parts(layer) for layer in adapter.layers(model)]


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
