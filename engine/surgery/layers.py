"""Layer reduction: a student made of a subset of the teacher's layers (paper stage 1)."""

from __future__ import annotations

import copy

from torch import nn

from engine.models.adapters import FamilyAdapter


def select_layers(selection: str, teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer indices the student's layers start from.

    `stride` takes every (L/k)-th layer from 0, `first_k` / `last_k` the first / last k, and
    `first_last_k` the first half and the last half of k.
    """
    n, k = teacher_layers, student_layers
    if not 1 <= k <= n:
        raise ValueError(f"cannot select {k} of {n} layers")
    if selection == "stride":
        return [i * n // k for i in range(k)]
    if selection == "first_k":
        return list(range(k))
    if selection == "last_k":
        return list(range(n - k, n))
    if selection == "first_last_k":
        first = k // 2
        return list(range(first)) + list(range(n - (k - first), n))
    raise ValueError(f"unknown layer selection {selection!r}")


def reduce_layers(model: nn.Module, adapter: FamilyAdapter, indices: list[int], random_init: bool = False):
    """A copy of `model` keeping the layers at `indices` (in order).

    With `random_init` the kept layers are re-initialised with the model's own initialiser;
    embeddings and the MLM head stay the teacher's.
    """
    student = copy.deepcopy(model)
    layers = adapter.layers(student)
    kept = nn.ModuleList([layers[i] for i in indices])
    for new_index, layer in enumerate(kept):
        attention = layer.attention.self
        if hasattr(attention, "layer_idx"):
            attention.layer_idx = new_index
        if random_init:
            layer.apply(student._init_weights)
    adapter.base(student).encoder.layer = kept
    student.config.num_hidden_layers = len(indices)
    return student
