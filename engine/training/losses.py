"""Distillation and MLM objectives.

Logit losses are computed at masked positions only by default: the vocabulary projection is the
expensive part (DESIGN.md §6), so neither student nor teacher projects unmasked positions.
The teacher runs under `torch.inference_mode`; its side of a loss (`DistillLoss.targets`) can be
computed once and reused, which the training loop does for the fixed validation batches.
Losses are computed in fp32 whatever dtype the forward passes ran in (mixed precision).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.configs import Distillation
from engine.models.loading import LoadedModel

Objective = Callable[[dict[str, Tensor]], dict[str, Tensor]]


def mlm_loss(model: LoadedModel) -> Objective:
    """Masked-language-model cross-entropy, projecting only the masked positions."""
    base, head = model.adapter.base(model.model), model.adapter.mlm_module(model.model)

    def objective(batch: dict[str, Tensor]) -> dict[str, Tensor]:
        hidden = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        masked = batch["labels"] != -100
        loss = F.cross_entropy(head(hidden[masked]).float(), batch["labels"][masked])
        return {"total": loss, "mlm": loss}

    return objective


@dataclass
class DistillLoss:
    """`alpha · MLM + (1 − alpha) · D` between a student and its teacher.

    D is `mse`, `kl` (softened by T, scaled by T²) or `kl_unsoft` over MLM logits, or `hidden`:
    MSE + (1 − cosine) between student states and teacher states projected by `projection`
    (the shared basis a hidden-size cut used; identity when widths match), over real tokens.
    `layer_map[i]` is the teacher layer (1-based output, as in `hidden_states`) whose states student
    layer i + 1 reproduces: the last student layer is always matched (to the teacher's last layer
    when there is no map), the others too when `intermediate` is set. With `sentence` > 0 the hidden
    loss adds `sentence` × the same distance between the mean-pooled states of the last student layer
    and of its teacher layer (sentence embeddings: for the teacher's last layer, what E5 was trained
    to produce).
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
        self._all_states = self.loss == "hidden" and self.layer_map is not None

    def targets(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        """The teacher's side of the loss for `batch` (no autograd; the validation set caches it).

        `states`: teacher states at real tokens (the last student layer's target first, then the
        mapped intermediate layers'), already projected to the student's width; `logit_hidden`: the
        teacher's last states at the logit positions, which its MLM head projects in `__call__`.
        """
        ids, attention = batch["input_ids"], batch["attention_mask"]
        with torch.inference_mode():
            teacher = self._t_base(input_ids=ids, attention_mask=attention, output_hidden_states=self._all_states)
            if self.loss != "hidden":
                return {"logit_hidden": teacher.last_hidden_state[self._logit_positions(batch)]}
            if self.layer_map is None:
                states = [teacher.last_hidden_state]
            else:
                states = [teacher.hidden_states[self.layer_map[-1]]]
            if self._intermediate:
                states += [teacher.hidden_states[t] for t in self.layer_map[:-1]]
            tokens = attention.bool()
            out = {"states": [s[tokens] if self.projection is None else s[tokens] @ self.projection
                              for s in states]}
            if self.config.sentence > 0:
                pooled = mean_pool(states[0], attention)
                out["sentence"] = pooled if self.projection is None else pooled @ self.projection
            return out

    def __call__(self, batch: dict[str, Tensor], targets: dict[str, Any] | None = None) -> dict[str, Tensor]:
        ids, attention, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        targets = self.targets(batch) if targets is None else targets
        masked = labels != -100
        student = self._s_base(input_ids=ids, attention_mask=attention, output_hidden_states=self._intermediate)
        parts: dict[str, Tensor] = {}
        s_hidden = student.last_hidden_state
        if self.loss == "hidden":
            parts["hidden"] = self._hidden_loss(student, targets["states"], attention.bool())
            distill = parts["hidden"]
            if self.config.sentence > 0:
                parts["sentence"] = state_loss(mean_pool(s_hidden, attention), targets["sentence"])
                distill = distill + self.config.sentence * parts["sentence"]
        else:
            with torch.inference_mode():
                t_logits = self._t_head(targets["logit_hidden"])
            s_logits = self._s_head(s_hidden[self._logit_positions(batch)])
            distill = self._logit_loss(s_logits.float(), t_logits.clone().float())
            parts["distill"] = distill
        if self._s_head is not None and self.config.alpha > 0:
            if self.loss != "hidden" and not self.config.all_positions:
                mlm_logits = s_logits
            else:
                mlm_logits = self._s_head(s_hidden[masked])
            parts["mlm"] = F.cross_entropy(mlm_logits.float(), labels[masked])
            parts["total"] = self.config.alpha * parts["mlm"] + (1 - self.config.alpha) * distill
        else:
            parts["total"] = distill
        return parts

    def _logit_positions(self, batch: dict[str, Tensor]) -> Tensor:
        return batch["attention_mask"].bool() if self.config.all_positions else batch["labels"] != -100

    def _logit_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        if self.loss == "mse":
            return F.mse_loss(student, teacher)
        t = self.config.temperature if self.loss == "kl" else 1.0
        kl = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                      log_target=True, reduction="batchmean")
        return kl * t * t

    def _hidden_loss(self, student, teacher_states: list[Tensor], tokens: Tensor) -> Tensor:
        students = [student.last_hidden_state]
        students += [student.hidden_states[i + 1] for i in range(len(teacher_states) - 1)]
        return sum(state_loss(s[tokens], t) for s, t in zip(students, teacher_states, strict=True)) / len(students)


def mean_pool(states: Tensor, attention: Tensor) -> Tensor:
    """Each sequence's mean state over its real tokens (the sentence embedding of E5-style encoders)."""
    weights = attention.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1)


def state_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """MSE + (1 − cosine) between matching rows of states, in fp32 (the teacher's may be inference tensors)."""
    s, t = student.float(), teacher.clone().float()
    return F.mse_loss(s, t) + (1 - F.cosine_similarity(s, t, dim=-1)).mean()


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
        loss = state_loss(s, t)
        return {"total": loss, "hidden": loss}

    return objective
