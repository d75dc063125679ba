"""What the two distilling stages (distill, shrink) share: their cost model, the frozen teacher, and
the student they train with the loss the teacher allows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.configs import Distillation, Training
from engine.cost import MASKED, CostInputs, StageCost, training_cost

if TYPE_CHECKING:
    from torch import nn

    from engine.models.loading import LoadedModel
    from engine.stages.base import StageContext


def logit_rows(cfg: Distillation, inputs: CostInputs, tokens: int) -> int:
    """Rows a distillation projects to the vocabulary per batch of `tokens` (0 without an MLM head)."""
    if not inputs.target.mlm_head:
        return 0
    logit_loss = cfg.loss != "hidden" and inputs.source.mlm_head
    if logit_loss and cfg.all_positions:
        return tokens
    return int(MASKED * tokens) if logit_loss or cfg.alpha > 0 else 0


def distillation_cost(cfg: Training | Distillation, inputs: CostInputs) -> StageCost:
    """A stage that distils its output from its input (distill, shrink)."""
    return training_cost(cfg, inputs, lambda tokens: logit_rows(cfg, inputs, tokens), teacher_forward=True)


def prepare_teacher(ctx: StageContext) -> LoadedModel:
    """The stage's input as a frozen teacher on the run's device."""
    teacher = ctx.model
    teacher.model.to(ctx.device).eval().requires_grad_(False)
    return teacher


def student_of(ctx: StageContext, net: nn.Module, teacher: LoadedModel, requested: str) -> tuple[LoadedModel, str]:
    """`net` as a trainable student sharing the teacher's tokenizer, and the loss it will be trained with:
    `requested`, or hidden states when a logit loss is impossible (the teacher has no MLM head)."""
    from engine.models.loading import LoadedModel
    from engine.training.losses import resolve_loss

    net.requires_grad_(True)
    student = LoadedModel(net, teacher.tokenizer, teacher.adapter, teacher.source)
    loss = resolve_loss(requested, student, teacher)
    if loss != requested:
        ctx.log(f"the teacher has no MLM head, so logit loss {requested!r} is impossible: distilling hidden "
                "states instead (loss = \"hidden\"); add an adapt stage first to use logit losses", "warning")
    return student, loss
