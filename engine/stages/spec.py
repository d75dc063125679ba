"""What a kind of stage declares (`StageSpec`) and the form fields of its settings (`FieldSpec`).

Plain data, no torch: the registry, recipes, estimates, the CLI and the Setup tab read these; the
Setup tab builds its widgets from the fields, and `miniglot-cli stages` prints them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.configs import DISTILL_LOSSES, Stage, Training

if TYPE_CHECKING:
    from engine.cost import CostInputs, StageCost
    from engine.shapes import Shape
    from engine.stages.base import StageContext, StageOutput


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


@dataclass(frozen=True)
class StageSpec:
    """One kind of stage.

    `shape(config, shape)` returns the shape after the stage or raises RecipeError with the field's
    name as its path; `cost(config, inputs)` says what the stage holds and how long it takes;
    `run(ctx)` does the work. `keeps_teacher`: the output is still the run's teacher (same depth and
    width), so later stages distil from it. `reference`: the output reproduces the teacher as
    faithfully as the run can, so a later repair (shrink) distils from it. `teacher_first`: the stage
    works on the teacher itself and so may follow only `keeps_teacher` stages, once. `describe(config)`
    says the stage's settings in a few words and `tag` names what it does, for the model card.
    `allowed_drop`: the label-free quality (fidelity, masked-token and retrieval accuracy, absolute) the
    stage may lose against the stage before it before the run warns, with `remedy` as the advice (None:
    no gate, for a stage that changes the model on purpose).
    """

    kind: str
    config: type[Stage]
    title: str
    tip: str
    fields: tuple[FieldSpec, ...]
    shape: Callable[[Any, Shape], Shape]
    cost: Callable[[Any, CostInputs], StageCost]
    run: Callable[[StageContext], StageOutput]
    template: Stage  # the settings a stage starts from when a user switches it on
    describe: Callable[[Any], str] = lambda config: ""  # the settings in a few words (none by default)
    tag: str = ""  # the model card's tag for what the stage does (default: its kind)
    keeps_teacher: bool = False
    reference: bool = False
    teacher_first: bool = False
    allowed_drop: float | None = 0.03
    remedy: str = ""

    @property
    def trains(self) -> bool:
        """Whether the stage trains with an optimiser (its config has `configs.Training`'s settings)."""
        return issubclass(self.config, Training)


def integer(name: str, label: str, tip: str, low: int, high: int) -> FieldSpec:
    return FieldSpec(name, label, "int", tip, low, high)


def training_fields(min_steps: int = 1) -> tuple[FieldSpec, ...]:
    """Fields of `configs.Training`."""
    return (
        integer("max_steps", "Steps", "Optimiser steps. The paper presets use GPU-scale counts (20,000); on a "
                "CPU start with a few hundred.", min_steps, 10_000_000),
        integer("batch_size", "Batch size", "Sequences per step (batches are padded only to their longest line).",
                1, 4096),
        FieldSpec("learning_rate", "Learning rate", "lr",
                  "Peak learning rate (warm-up, then linear decay). The paper presets use 5e-5."),
    )


def distillation_fields() -> tuple[FieldSpec, ...]:
    """Fields of `configs.Distillation` (without `intermediate`, whose meaning each stage words)."""
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
