"""Distillation and MLM objectives.

Logit losses are computed at masked positions only by default: the vocabulary projection is the
expensive part (DESIGN.md §6), so neither student nor teacher projects unmasked positions.
The teacher runs under `torch.inference_mode`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.models.loading import LoadedModel
from engine.recipe import Distillation

Objective = Callable[[dict[str, Tensor]], dict[str, Tensor]]


def mlm_loss(model: LoadedModel) -> Objective:
    """Masked-language-model cross-entropy, projecting only the masked positions."""
    base, head = model.adapter.base(model.model), model.adapter.mlm_module(model.model)

    def objective(batch: dict[str, Tensor]) -> dict[str, Tensor]:
        hidden = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        masked = batch["labels"] != -100
        loss = F.cross_entropy(head(hidden[masked]), batch["labels"][masked])
        return {"total": loss, "mlm": loss}

    return objective


@dataclass
class DistillLoss:
    """`alpha · MLM + (1 − alpha) · D` between a student and its teacher.

    D is `mse`, `kl` (softened by T, scaled by T²) or `kl_unsoft` over MLM logits, or `hidden`:
    MSE + (1 − cosine) between student states and teacher states projected by `projection`
    (the shared basis a hidden-size cut used; identity when widths match), over real tokens.
    `layer_map[i]` is the teacher layer matched to student layer i when `intermediate` is set.
    """

    student: LoadedModel
    teacher: LoadedModel
    config: Distillation
    loss: str
    projection: Tensor | None = None
    layer_map: list[int] | None = None

    def __post_init__(self) -> None:
        self._s_base = self.student.adapter.base(self.student.model)
        self._t_base = self.teacher.adapter.base(self.teacher.model)
        self._s_head = self.student.adapter.mlm_module(self.student.model)
        self._t_head = self.teacher.adapter.mlm_module(self.teacher.model)
        self._intermediate = self.loss == "hidden" and self.config.intermediate and self.layer_map is not None

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        ids, attention, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        masked = labels != -100
        logit_positions = attention.bool() if self.config.all_positions else masked
        student = self._s_base(input_ids=ids, attention_mask=attention, output_hidden_states=self._intermediate)
        with torch.inference_mode():
            teacher = self._t_base(input_ids=ids, attention_mask=attention, output_hidden_states=self._intermediate)
            t_logits = self._t_head(teacher.last_hidden_state[logit_positions]) if self.loss != "hidden" else None
        parts: dict[str, Tensor] = {}
        s_hidden = student.last_hidden_state
        if self.loss == "hidden":
            parts["hidden"] = self._hidden_loss(student, teacher, attention.bool())
            distill = parts["hidden"]
        else:
            s_logits = self._s_head(s_hidden[logit_positions])
            distill = self._logit_loss(s_logits, t_logits.clone())
            parts["distill"] = distill
        if self._s_head is not None and self.config.alpha > 0:
            if self.loss != "hidden" and not self.config.all_positions:
                mlm_logits = s_logits
            else:
                mlm_logits = self._s_head(s_hidden[masked])
            parts["mlm"] = F.cross_entropy(mlm_logits, labels[masked])
            parts["total"] = self.config.alpha * parts["mlm"] + (1 - self.config.alpha) * distill
        else:
            parts["total"] = distill
        return parts

    def _logit_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        if self.loss == "mse":
            return F.mse_loss(student, teacher)
        t = self.config.temperature if self.loss == "kl" else 1.0
        kl = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                      log_target=True, reduction="batchmean")
        return kl * t * t

    def _hidden_loss(self, student, teacher, tokens: Tensor) -> Tensor:
        pairs = [(student.last_hidden_state, teacher.last_hidden_state)]
        if self._intermediate:
            pairs += [(student.hidden_states[i + 1], teacher.hidden_states[t + 1])
                      for i, t in enumerate(self.layer_map[:-1])]
        total = 0.0
        for s, t in pairs:
            s, t = s[tokens], t[tokens].clone()
            if self.projection is not None:
                t = t @ self.projection
            total = total + F.mse_loss(s, t) + (1 - F.cosine_similarity(s, t, dim=-1)).mean()
        return total / len(pairs)


def resolve_loss(requested: str, student: LoadedModel, teacher: LoadedModel) -> str:
    """The loss actually used: logit losses need MLM heads on both sides, else `hidden`."""
    if requested != "hidden" and not (student.has_mlm_head and teacher.has_mlm_head):
        return "hidden"
    return requested


def clean_hidden_loss(student: LoadedModel, teacher: LoadedModel) -> Objective:
    """MSE + (1 − cosine) between the student's states on masked input and the teacher's on the
    original input: a signal even when student and teacher are the same model (pruning a teacher
    without an MLM head)."""
    s_base, t_base = student.adapter.base(student.model), teacher.adapter.base(teacher.model)

    def objective(batch: dict[str, Tensor]) -> dict[str, Tensor]:
        labels, attention = batch["labels"], batch["attention_mask"]
        original = torch.where(labels != -100, labels, batch["input_ids"])
        tokens = attention.bool()
        s = s_base(input_ids=batch["input_ids"], attention_mask=attention).last_hidden_state[tokens]
        with torch.inference_mode():
            t = t_base(input_ids=original, attention_mask=attention).last_hidden_state[tokens]
        t = t.clone()
        loss = F.mse_loss(s, t) + (1 - F.cosine_similarity(s, t, dim=-1)).mean()
        return {"total": loss, "hidden": loss}

    return objective
