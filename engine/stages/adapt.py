"""Optional first stage: a language-adapted teacher by continued MLM training on the corpus.

A teacher without an MLM head first gets one (decoder tied to the input embeddings), fitted with
the encoder frozen, so that the paper's logit losses become usable downstream.
"""

from __future__ import annotations

import dataclasses

from transformers import AutoModelForMaskedLM

from engine.models.loading import LoadedModel
from engine.recipe import AdaptStage
from engine.stages.base import StageContext, StageOutput
from engine.training.loop import train
from engine.training.losses import mlm_loss


def run(ctx: StageContext) -> StageOutput:
    cfg: AdaptStage = ctx.config
    source = ctx.model
    model = source if source.has_mlm_head else _with_mlm_head(source)
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
        metrics.update(train(ctx, net, model.tokenizer, mlm_loss(model), head_cfg, phase="head",
                             parameters=head_params))
    net.requires_grad_(True)
    metrics.update(train(ctx, net, model.tokenizer, mlm_loss(model), cfg, phase="adapt"))
    return StageOutput(model, metrics)


def _with_mlm_head(source: LoadedModel) -> LoadedModel:
    """The encoder with a fresh MLM head whose decoder is tied to the word embeddings."""
    config = source.config
    config.tie_word_embeddings = True
    config.architectures = [f"{type(source.model).__name__.removesuffix('Model')}ForMaskedLM"]
    net = AutoModelForMaskedLM.from_config(config)
    source.adapter.base(net).load_state_dict(source.adapter.base(source.model).state_dict(), strict=False)
    net.tie_weights()
    decoder = source.adapter.mlm_head(net).decoder
    decoder.bias.data.zero_()
    return LoadedModel(net, source.tokenizer, source.adapter, source.source)

