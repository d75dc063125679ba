"""Stage 2: rank FFN neurons and attention heads by first-order importance; cut the FFN."""

from __future__ import annotations

import copy

from engine.data.batches import BatchStream
from engine.models.loading import LoadedModel
from engine.recipe import PruneStage
from engine.stages.base import StageContext, StageOutput
from engine.surgery.ffn import prune_ffn
from engine.surgery.importance import ffn_importance, head_importance
from engine.training.loop import batch_inputs
from engine.training.losses import clean_hidden_loss, mlm_loss


def run(ctx: StageContext) -> StageOutput:
    cfg: PruneStage = ctx.config
    source = ctx.model
    model = LoadedModel(copy.deepcopy(source.model).to(ctx.device), source.tokenizer, source.adapter, source.source)
    stream = BatchStream(model.tokenizer, ctx.validation_texts, ctx.recipe.corpus.max_length, cfg.batch_size,
                         ctx.seed, mlm_probability=0.15)
    batches = [batch_inputs(stream.batch(i), ctx.device)
               for i in range(min(cfg.importance_batches, stream.batches_per_epoch))]
    objective = _importance_objective(ctx, model)

    def loss_fn(_net, batch):
        ctx.token.raise_if_cancelled()
        return objective(batch)["total"]

    metrics: dict = {"importance_batches": len(batches)}
    heads = head_importance(model.model, model.adapter, batches, loss_fn)
    metrics["head_importance"] = heads.tolist()
    if cfg.ffn is not None:
        scores = ffn_importance(model.model, model.adapter, batches, loss_fn)
        before = model.config.intermediate_size
        prune_ffn(model.model, model.adapter, scores, cfg.ffn)
        ctx.log(f"FFN {before} → {cfg.ffn} neurons per layer by first-order importance "
                f"over {len(batches)} validation batches")
        metrics["ffn"] = {"before": before, "after": cfg.ffn}
    model.model.eval()
    return StageOutput(model, metrics)


def _importance_objective(ctx: StageContext, model: LoadedModel):
    """MLM loss with a head; without one, how far the states on masked input drift from the unpruned
    input model's states on clean input (so the ranking follows what this model computes)."""
    if model.has_mlm_head:
        return mlm_loss(model)
    reference = ctx.model
    reference.model.to(ctx.device).eval()
    return clean_hidden_loss(model, reference)
