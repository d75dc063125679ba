"""Form fields of stage settings: label, range and a tooltip with what the paper found.

Plain data: the Setup tab builds its widgets from these, and `miniglot-cli stages` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.recipe import DISTILL_LOSSES


@dataclass(frozen=True)
class FieldSpec:
    """One setting of a stage's config. `kind`: int | optional_int (0 shown as "keep" = None) | float |
    lr | choice | bool. `enabled_when = (field, values)`: the field matters only for those values."""

    name: str
    label: str
    kind: str
    tip: str
    low: float = 0
    high: float = 0
    choices: tuple[str, ...] = ()
    enabled_when: tuple[str, tuple[str, ...]] | None = None


def integer(name: str, label: str, tip: str, low: int, high: int) -> FieldSpec:
    return FieldSpec(name, label, "int", tip, low, high)


def training_fields(min_steps: int = 1) -> tuple[FieldSpec, ...]:
    """Fields of `recipe.Training`."""
    return (
        integer("max_steps", "Steps", "Optimiser steps. The paper presets use GPU-scale counts (20,000); on a "
                "CPU start with a few hundred.", min_steps, 10_000_000),
        integer("batch_size", "Batch size", "Sequences per step (batches are padded only to their longest line).",
                1, 4096),
        FieldSpec("learning_rate", "Learning rate", "lr",
                  "Peak learning rate (warm-up, then linear decay). The paper presets use 5e-5."),
    )


def distillation_fields() -> tuple[FieldSpec, ...]:
    """Fields of `recipe.Distillation` (without `intermediate`, whose meaning each stage words)."""
    return (
        FieldSpec("loss", "Loss", "choice",
                  "mse: MSE between student and teacher MLM logits — the paper's default.\n"
                  "kl: KL divergence at temperature T (scaled by T²).  kl_unsoft: KL without softening.\n"
                  "hidden: match hidden states — for teachers without an MLM head (the packaged E5 and MiniLM).",
                  choices=DISTILL_LOSSES),
        FieldSpec("alpha", "Alpha (MLM weight)", "float",
                  "Loss = alpha·MLM + (1 − alpha)·distillation. Paper: alpha 0.5 with MSE was the default.",
                  0.0, 1.0),
        FieldSpec("temperature", "Temperature", "float",
                  "Softening temperature T for the kl loss (scaled by T²); unused by the other losses.", 0.05, 100.0,
                  enabled_when=("loss", ("kl",))),
        FieldSpec("sentence", "Sentence weight", "float",
                  "loss = hidden: weight of matching mean-pooled sentence embeddings of the last layer as well as "
                  "its tokens\n(what E5-style teachers were trained to produce; topic and sentiment depend on it).",
                  0.0, 100.0, enabled_when=("loss", ("hidden",))),
    )


def every_layer(what: str) -> FieldSpec:
    return FieldSpec("intermediate", "Match every layer", "bool", f"loss = hidden: {what}",
                     enabled_when=("loss", ("hidden",)))
