"""Structured pruning (paper stage 2): rank FFN neurons and attention heads by first-order importance;
cut the FFN."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from engine.configs import Stage, check
from engine.cost import CostInputs, StageCost, activation_bytes, forward_flops
from engine.stages.spec import FieldSpec, StageSpec, integer

if TYPE_CHECKING:
    from engine.models.loading import LoadedModel
    from engine.shapes import Shape
    from engine.stages.base import StageContext, StageOutput


@dataclass(frozen=True)
class PruneStage(Stage):
    """Structured pruning by first-order importance (paper stage 2)."""

    kind: ClassVar[str] = "prune"
    ffn: int | None = None
    heads: int | None = None
    importance_batches: int = 8
    batch_size: int = 16

    def __post_init__(self) -> None:
        check(self.ffn is not None or self.heads is not None, "prune needs ffn, heads or both", "ffn")
        check(self.ffn is None or self.ffn >= 1, "prune.ffn must be at least 1", "ffn")
        check(self.heads is None or self.heads >= 1, "prune.heads must be at least 1", "heads")
        check(self.importance_batches >= 1, "prune.importance_batches must be at least 1", "importance_batches")


def shape(cfg: PruneStage, before: Shape) -> Shape:
    if cfg.ffn is not None:
        check(cfg.ffn <= before.ffn, f"ffn = {cfg.ffn} is wider than the model's FFN ({before.ffn})", "ffn")
    if cfg.heads is not None:
        check(cfg.heads == before.heads,
              f"heads = {cfg.heads}: a stock BERT/XLM-R config derives the head size as hidden / heads, "
              f"so removing heads while keeping hidden {before.hidden} cannot be saved in a form "
              f"transformers reloads; keep heads = {before.heads} (head importance is still reported)", "heads")
    return dataclasses.replace(before, ffn=cfg.ffn or before.ffn)


def cost(cfg: PruneStage, inputs: CostInputs) -> StageCost:
    """A working copy with gradients, and forward + backward passes over the importance batches."""
    source = inputs.source
    held = 4 * source.total_params + activation_bytes(source, cfg.batch_size, inputs.max_length)
    passes = cfg.importance_batches * (2 if cfg.ffn is not None else 1)
    flops = passes * 3 * forward_flops(source, cfg.batch_size * inputs.length, inputs.length)
    return StageCost(held, inputs.device.seconds(flops))


def describe(cfg: PruneStage) -> str:
    """The FFN width and head count, whichever the stage sets."""
    kept = {"FFN {}": cfg.ffn, "{} heads": cfg.heads}
    return ", ".join(text.format(value) for text, value in kept.items() if value)


def run(ctx: StageContext) -> StageOutput:
    import copy

    from engine.data.batches import BatchStream
    from engine.models.loading import LoadedModel
    from engine.stages.base import StageOutput
    from engine.surgery.ffn import prune_ffn
    from engine.surgery.importance import ffn_importance, head_importance
    from engine.training.loop import on_device

    cfg: PruneStage = ctx.config
    source = ctx.model
    model = LoadedModel(copy.deepcopy(source.model).to(ctx.device), source.tokenizer, source.adapter, source.source)
    stream = BatchStream(model.tokenizer, ctx.validation_texts, ctx.recipe.corpus.max_length, cfg.batch_size,
                         ctx.seed, mlm_probability=0.15)
    batches = [on_device(stream.batch(i), ctx.device)
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
    from engine.training.losses import clean_hidden_loss, mlm_loss

    if model.has_mlm_head:
        return mlm_loss(model)
    reference = ctx.model
    reference.model.to(ctx.device).eval()
    return clean_hidden_loss(model, reference)


SPEC = StageSpec(
    kind="prune", config=PruneStage, shape=shape, cost=cost, run=run, template=PruneStage(ffn=1024),
    describe=describe, tag="pruning",
    title="Structured pruning (paper stage 2)",
    tip="Paper stage 2: remove the least important FFN neurons (first-order importance over validation\n"
        "batches). Paper: FFN 3072 → 2048, all 12 heads kept.",
    fields=(
        FieldSpec("ffn", "FFN neurons", "optional_int",
                  "FFN neurons kept per layer, ranked by first-order importance |Σ w·∂L/∂w + b·∂L/∂b|.\n"
                  "Paper: 3072 → 2048. 'keep' leaves the FFN as it is.", 0, 65_536),
        FieldSpec("heads", "Attention heads", "optional_int",
                  "Attention heads kept. The paper kept all 12; a stock BERT/XLM-R config needs hidden / heads "
                  "fixed,\nso keep the model's head count ('keep' leaves heads alone).", 0, 128),
        integer("importance_batches", "Importance batches",
                "Validation batches over which neuron and head importance is accumulated.", 1, 100_000),
        integer("batch_size", "Batch size", "Sequences per importance batch.", 1, 4096),
    ),
)
