"""Hidden-size reduction d -> k by projecting the residual stream onto one shared basis.

The residual stream is a single d-dimensional space: the embeddings write into it, every layer
reads it and adds its output back into it, and the heads read it at the end. A narrower model
is therefore defined by one orthonormal basis P [d, k] (h' = h @ P) applied to every reader
(W @ P) and writer (P^T @ W, bias P^T b). Slicing a separate low-rank copy of each matrix (the
reference scripts' "SVD" init) gives every matrix its own coordinates, so the residual additions
of the narrow model add vectors expressed in different bases. The same P projects the wider
teacher's hidden states (teacher_h @ P) for the distillation that follows, so callers keep it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from engine.models.adapters import FamilyAdapter
from engine.surgery.ffn import keep_input_columns, keep_rows

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def truncation_basis(d: int, k: int) -> torch.Tensor:
    """The first k coordinates of a d-dimensional space, as a [d, k] basis."""
    _check_width(d, k)
    return torch.eye(d)[:, :k].clone()


@torch.no_grad()
def residual_moment(model: nn.Module, adapter: FamilyAdapter, batches: Iterable[dict]) -> torch.Tensor:
    """The uncentered second moment [d, d] of the residual-stream states, collected at every layer
    boundary (the embeddings output and each layer's output) over the non-padding tokens of `batches`.
    The model runs in eval mode; its training mode is restored."""
    d = model.config.hidden_size
    base = adapter.base(model)
    device = next(model.parameters()).device
    moment = torch.zeros(d, d, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            inputs = {name: batch[name].to(device) for name in _MODEL_INPUTS if name in batch}
            states = base(**inputs, output_hidden_states=True).hidden_states
            mask = inputs.get("attention_mask")
            for state in states:
                flat = state.reshape(-1, d) if mask is None else state[mask.bool()]
                flat = flat.double()
                moment += flat.T @ flat
    finally:
        model.train(was_training)
    return moment.cpu()


def svd_basis(moment: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k principal directions of the residual stream, [d, k] with orthonormal columns.

    The top-k eigenvectors of `residual_moment` (equivalently the top right singular vectors of the
    stacked states), ordered by captured energy, each signed so its largest-magnitude entry is positive.
    """
    _check_width(moment.shape[0], k)
    _, vectors = torch.linalg.eigh(moment)
    basis = vectors[:, -k:].flip(1)
    peak = basis.gather(0, basis.abs().argmax(dim=0, keepdim=True))
    return (basis * torch.sign(peak)).float()


def activation_basis(moment: torch.Tensor, k: int) -> torch.Tensor:
    """The k coordinates with the largest mean squared activation, in their original order, as a
    [d, k] selection: like truncation it slices every weight and LayerNorm exactly (no rotation,
    which LayerNorm does not commute with), but it keeps the dimensions the model actually uses,
    its large "outlier" dimensions among them."""
    _check_width(moment.shape[0], k)
    kept = torch.diagonal(moment).argsort(descending=True)[:k].sort().values
    return torch.eye(moment.shape[0])[:, kept].clone()


@torch.no_grad()
def shrink_hidden(model: nn.Module, adapter: FamilyAdapter, basis: torch.Tensor) -> nn.Module:
    """Project the model's hidden size onto `basis` [d, k]; returns the same model, modified.

    Readers of the residual stream become W @ P, writers P^T @ W (bias P^T b); the embeddings
    become E @ P, the pooler and MLM-head transform P^T W P; the decoder bias is unchanged, and
    tied embeddings stay tied (parameters are rewritten in place). Each head keeps its first
    k/heads dimensions in query/key/value and the matching attention-output columns (the score
    scale becomes 1/sqrt(k/heads), as the new config implies). LayerNorm:
    gamma' = (P*P)^T gamma, beta' = P^T beta -- exact slicing for a truncation basis, an
    approximation for a general P (LayerNorm is not rotation-invariant); the distillation that
    follows repairs it. Only the identity basis (k = d) preserves outputs exactly.
    """
    config = model.config
    d, heads = config.hidden_size, config.num_attention_heads
    if basis.ndim != 2 or basis.shape[0] != d:
        raise ValueError(f"basis must have shape [{d}, k] for hidden size {d}, got {tuple(basis.shape)}")
    k = basis.shape[1]
    _check_width(d, k)
    if k % heads:
        raise ValueError(f"new hidden size {k} must be a multiple of the {heads} attention heads")
    projection = _Projection(basis)

    for module in adapter.embeddings(model).modules():
        if isinstance(module, nn.Embedding):
            projection.read(module.weight)
            module.embedding_dim = k
        elif isinstance(module, nn.LayerNorm):
            projection.norm(module)

    head_dim, new_head_dim = d // heads, k // heads
    kept = (torch.arange(heads)[:, None] * head_dim + torch.arange(new_head_dim)).flatten()
    for layer in adapter.layers(model):
        parts = adapter.layer_parts(layer)
        for linear in (parts.query, parts.key, parts.value):
            keep_rows(linear, kept)
            projection.read_linear(linear)
        keep_input_columns(parts.attention_out, kept)
        projection.write_linear(parts.attention_out)
        projection.read_linear(parts.ffn_in)
        projection.write_linear(parts.ffn_out)
        projection.norm(parts.attention_norm)
        projection.norm(parts.output_norm)
    for module in adapter.attention_modules(model):
        module.attention_head_size = new_head_dim
        module.all_head_size = k
        module.scaling = new_head_dim**-0.5

    pooler = adapter.pooler(model)
    if pooler is not None:
        projection.write_linear(pooler)
        projection.read_linear(pooler)
    head = adapter.mlm_head(model)
    if head is not None:
        projection.write_linear(head.dense)
        projection.read_linear(head.dense)
        projection.norm(head.layer_norm)
        projection.read_linear(head.decoder)
    config.hidden_size = k
    return model


class _Projection:
    """Rewrites parameters in place through P, each side once per parameter (tied ones are shared)."""

    def __init__(self, basis: torch.Tensor) -> None:
        self.basis = basis.double()
        self.done: set[tuple[int, str]] = set()

    def _apply(self, param: nn.Parameter, side: str) -> None:
        if (id(param), side) in self.done:
            return
        self.done.add((id(param), side))
        basis = self.basis.to(param.device)
        value = param.data.double()
        if side == "read":
            value = value @ basis
        elif side == "write":
            value = basis.T @ value
        else:  # LayerNorm gain
            value = (basis * basis).T @ value
        param.data = value.to(param.dtype).contiguous()

    def read(self, weight: nn.Parameter) -> None:
        self._apply(weight, "read")

    def read_linear(self, linear: nn.Linear) -> None:
        self._apply(linear.weight, "read")
        linear.in_features = self.basis.shape[1]

    def write_linear(self, linear: nn.Linear) -> None:
        self._apply(linear.weight, "write")
        if linear.bias is not None:
            self._apply(linear.bias, "write")
        linear.out_features = self.basis.shape[1]

    def norm(self, layer_norm: nn.LayerNorm) -> None:
        if layer_norm.weight is not None:
            self._apply(layer_norm.weight, "gain")
        if layer_norm.bias is not None:
            self._apply(layer_norm.bias, "write")
        layer_norm.normalized_shape = (self.basis.shape[1],)


def _check_width(d: int, k: int) -> None:
    if not 1 <= k <= d:
        raise ValueError(f"new hidden size must be between 1 and the current {d}, got {k}")
