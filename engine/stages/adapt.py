"""Optional first stage: a language-adapted teacher by continued MLM training on the corpus.

A teacher without an MLM head first gets one (decoder tied to the input embeddings), fitted with
the encoder frozen, so that the paper's logit losses become usable downstream.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from engine.configs import Stage, Training, check
from engine.cost import MASKED, CostInputs, StageCost, training_cost
from engine.stages.spec import StageSpec, integer, training_fields

if TYPE_CHECKING:
    from engine.models.loading import LoadedModel
    from engine.shapes import Shape
    from engine.stages.base import StageContext, StageOutput


@dataclass(frozen=True)
class AdaptStage(Stage, Training):
    """Continued MLM training of the teacher on the language's text (a language-adapted teacher).

    A teacher without an MLM head first gets one fitted for `head_steps` with the encoder frozen
    (decoder tied to the input embeddings).
    """

    kind: ClassVar[str] = "adapt"
    head_steps: int = 100

    def __post_init__(self) -> None:
        self.check_training("adapt")
        check(self.head_steps >= 0, "adapt.head_steps must be 0 or more", "head_steps")


def shape(cfg: AdaptStage, before: Shape) -> Shape:
    return dataclasses.replace(before, mlm_head=True)


def cost(cfg: AdaptStage, inputs: CostInputs) -> StageCost:
    head_steps = 0 if inputs.source.mlm_head else cfg.head_steps
    return training_cost(cfg, inputs, lambda tokens: int(MASKED * tokens), teacher_forward=False,
                         extra_steps=head_steps)


def describe(cfg: AdaptStage) -> str:
    return f"MLM, {cfg.max_steps} steps at lr {cfg.learning_rate}"


def run(ctx: StageContext) -> StageOutput:
    from engine.stages.base import StageOutput, train_stage
    from engine.training.losses import mlm_loss

    cfg: AdaptStage = ctx.config
    source = ctx.model
    model = source if source.has_mlm_head else with_mlm_head(source)
    net = model.model.to(ctx.device)
    metrics: dict = {}
    if not source.has_mlm_head and cfg.head_steps > 0:
        ctx.log(f"the teacher has no MLM head: fitting one for {cfg.head_steps} steps with the encoder frozen")
        head = model.adapter.mlm_module(net)
        embeddings = model.adapter.embeddings(net).word_embeddings.weight
        head_params = [(n, p) for n, p in head.named_parameters() if p is not embeddings]
        net.requires_grad_(False)
        for _, p in head_params:
            p.requires_grad_(True)
        head_cfg = dataclasses.replace(cfg, max_steps=cfg.head_steps, learning_rate=1e-3)
        metrics.update(train_stage(ctx, net, model.tokenizer, mlm_loss(model), head_cfg, phase="head",
                             parameters=head_params))
    net.requires_grad_(True)
    metrics.update(train_stage(ctx, net, model.tokenizer, mlm_loss(model), cfg, phase="adapt"))
    return StageOutput(model, metrics)


def with_mlm_head(source: LoadedModel) -> LoadedModel:
    """The encoder with a fresh MLM head whose decoder is tied to the word embeddings."""
    from transformers import AutoModelForMaskedLM

    from engine.models.loading import LoadedModel

    config = source.config
    config.tie_word_embeddings = True
    config.architectures = [f"{type(source.model).__name__.removesuffix('Model')}ForMaskedLM"]
    net = AutoModelForMaskedLM.from_config(config)
    source.adapter.base(net).load_state_dict(source.adapter.base(source.model).state_dict(), strict=False)
    net.tie_weights()
    decoder = source.adapter.mlm_head(net).decoder
    decoder.bias.data.zero_()
    return LoadedModel(net, source.tokenizer, source.adapter, source.source)


SPEC = StageSpec(
    kind="adapt", config=AdaptStage, shape=shape, cost=cost, run=run, template=AdaptStage(),
    describe=describe, tag="language-adaptation",
    keeps_teacher=True, reference=True, teacher_first=True, allowed_drop=None,
    title="Adapt the teacher (continued MLM on your language)",
    tip="Train the teacher further with MLM on your language before compressing it.\n"
        "Paper: a language-adapted teacher beats the plain multilingual one.",
    fields=(*training_fields(),
            integer("head_steps", "MLM-head steps",
                    "Steps to fit an MLM head with the encoder frozen when the teacher has none "
                    "(the packaged E5 and MiniLM have none).", 0, 1_000_000)),
)
