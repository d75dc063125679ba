"""Importance of FFN neurons and attention heads: the size of each neuron's contribution to the FFN output
(`ffn_activation_importance`), and first-order (Taylor) scores measured by autograd.

The Taylor scores estimate how much the loss would change if a unit were removed. Gradients are summed
over all batches before the absolute value is taken, so each score is |d(sum of batch losses)|
along the unit: per-batch signs may cancel, as they do in the true first-order change of the total
loss. The model runs in eval mode (no dropout); its training mode, every parameter's
`requires_grad` and the absence of `.grad` tensors are restored afterwards, even on error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from engine.models.adapters import FamilyAdapter
from engine.surgery.ffn import unmasked

LossFn = Callable[[nn.Module, dict], torch.Tensor]


@contextmanager
def _gradient_scope(model: nn.Module, trainable: Iterable[nn.Parameter]) -> Iterator[None]:
    """Eval mode with gradients only for `trainable`; restores modes and drops all grads on exit."""
    saved_grad = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    for p in saved_grad:
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    try:
        yield
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in saved_grad.items():
            p.requires_grad_(flag)
        model.train(was_training)


def ffn_activation_importance(model: nn.Module, adapter: FamilyAdapter, batches: Iterable[dict]) -> list[torch.Tensor]:
    """Per layer, one score per intermediate neuron: ‖a‖₂ · ‖w_out‖₂, its activations over the batches' real
    tokens times its column of the FFN output matrix, the size of what it adds to the FFN output.

    Needs no loss, only forward passes. Returns float32 CPU tensors of length `intermediate_size`, one per layer.
    """
    layers = [adapter.layer_parts(layer) for layer in adapter.layers(model)]
    squares = [torch.zeros(parts.ffn_out.in_features, dtype=torch.float64) for parts in layers]
    tokens: dict[str, torch.Tensor] = {}

    def make_hook(square: torch.Tensor) -> Callable[[nn.Module, tuple], None]:
        def hook(_module: nn.Module, inputs: tuple) -> None:
            square.add_(inputs[0][tokens["mask"]].to("cpu", torch.float64).square().sum(dim=0))

        return hook

    handles = [parts.ffn_out.register_forward_pre_hook(make_hook(square))
               for parts, square in zip(layers, squares, strict=True)]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                tokens["mask"] = batch["attention_mask"].bool()
                adapter.base(model)(input_ids=unmasked(batch), attention_mask=batch["attention_mask"])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [(square.sqrt() * parts.ffn_out.weight.detach().to("cpu", torch.float64).norm(dim=0)).float()
            for square, parts in zip(squares, layers, strict=True)]


def ffn_importance(
    model: nn.Module, adapter: FamilyAdapter, batches: Iterable[dict], loss_fn: LossFn
) -> list[torch.Tensor]:
    """Per layer, one score per intermediate neuron: |sum over batches of (w . dL/dw + b * dL/db)|.

    `w` is the neuron's row of the FFN input matrix and `b` its bias. Returns float32 CPU tensors
    of length `intermediate_size`, one per layer. `loss_fn(model, batch)` must return a scalar.
    """
    ffn_in = [adapter.layer_parts(layer).ffn_in for layer in adapter.layers(model)]
    scores = [torch.zeros(lin.out_features, dtype=torch.float64) for lin in ffn_in]
    params = [p for lin in ffn_in for p in (lin.weight, lin.bias)]
    with _gradient_scope(model, params):
        for batch in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            for score, lin in zip(scores, ffn_in, strict=True):
                contribution = (lin.weight * lin.weight.grad).sum(dim=1) + lin.bias * lin.bias.grad
                score += contribution.detach().to("cpu", torch.float64)
    return [score.abs().float() for score in scores]


def head_importance(
    model: nn.Module, adapter: FamilyAdapter, batches: Iterable[dict], loss_fn: LossFn
) -> torch.Tensor:
    """|dL/dmask| for a mask of ones multiplied into each head's context, shape [layers, heads].

    Forward hooks on the self-attention modules scale each head's slice of their output (the
    concatenated head contexts, [batch, seq, heads * head_dim]); the hooks are always removed.
    """
    modules = adapter.attention_modules(model)
    heads = model.config.num_attention_heads
    mask = torch.ones(len(modules), heads, requires_grad=True, device=next(model.parameters()).device)
    total = torch.zeros(len(modules), heads, dtype=torch.float64)

    def make_hook(index: int) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            context = output[0] if isinstance(output, tuple) else output
            shape = context.shape
            scaled = (context.view(*shape[:-1], heads, -1) * mask[index].view(heads, 1)).view(shape)
            return (scaled, *output[1:]) if isinstance(output, tuple) else scaled

        return hook

    handles = [module.register_forward_hook(make_hook(i)) for i, module in enumerate(modules)]
    try:
        with _gradient_scope(model, []):
            for batch in batches:
                mask.grad = None
                loss_fn(model, batch).backward()
                total += mask.grad.to("cpu", torch.float64)
    finally:
        for handle in handles:
            handle.remove()
    return total.abs().float()
