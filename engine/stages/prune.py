"""Structured pruning (paper stage 2): rank FFN neurons by the size of their contribution (or the paper's
first-order importance), cut the FFN and refit each layer's output projection to what the removed neurons
added; attention heads are ranked by first-order importance and reported."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from engine.configs import Stage, check, one_of
from engine.cost import CostInputs, StageCost, activation_bytes, forward_flops
from engine.stages.spec import FieldSpec, StageSpec, integer

if TYPE_CHECKING:
    from engine.models.loading import LoadedModel
    from engine.shapes import Shape
    from engine.stages.base import StageContext, StageOutput


IMPORTANCE = ("activation", "taylor")
IMPORTANCE_WORDS = {"activation": "the size of their contribution", "taylor": "first-order importance"}


@dataclass(frozen=True)
class PruneStage(Stage):
    """Structured pruning (paper stage 2): `importance` ranks the FFN neurons, `refit` repairs the cut."""

    kind: ClassVar[str] = "prune"
    ffn: int | None = None
    heads: int | None = None
    importance: str = "activation"
    refit: bool = True
    importance_batches: int = 32
    batch_size: int = 16

    def __post_init__(self) -> None:
        check(self.ffn is not None or self.heads is not None, "prune needs ffn, heads or both", "ffn")
        check(self.ffn is None or self.ffn >= 1, "prune.ffn must be at least 1", "ffn")
        check(self.heads is None or self.heads >= 1, "prune.heads must be at least 1", "heads")
        one_of("prune.importance", self.importance, IMPORTANCE, "importance")
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
    """A working copy with gradients; forward + backward passes for the Taylor scores (heads always, FFN when
    asked), a forward pass for activation scores, and for the refit two forward passes up to each layer."""
    source = inputs.source
    held = 4 * source.total_params + activation_bytes(source, cfg.batch_size, inputs.max_length)
    passes = 3
    if cfg.ffn is not None:
        passes += 3 if cfg.importance == "taylor" else 1
        passes += source.layers + 1 if cfg.refit else 0
    flops = cfg.importance_batches * passes * forward_flops(source, cfg.batch_size * inputs.length, inputs.length)
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
    from engine.surgery.ffn import prune_ffn, prune_ffn_refit
    from engine.surgery.importance import ffn_activation_importance, ffn_importance, head_importance
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
        before = model.config.intermediate_size
        if cfg.importance == "taylor":
            scores = ffn_importance(model.model, model.adapter, batches, loss_fn)
        else:
            scores = ffn_activation_importance(model.model, model.adapter, batches)
        ctx.token.raise_if_cancelled()
        if cfg.refit:
            reference = source.model.to(ctx.device).eval()  # the unpruned input, where the batches are
            prune_ffn_refit(model.model, reference, model.adapter, scores, cfg.ffn, batches)
        else:
            prune_ffn(model.model, model.adapter, scores, cfg.ffn)
        ctx.log(f"FFN {before} → {cfg.ffn} neurons per layer by {IMPORTANCE_WORDS[cfg.importance]} over "
                f"{len(batches)} validation batches" + (", each layer's output projection refitted to the "
                                                        "unpruned FFN output" if cfg.refit else ""))
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
    remedy="keep more FFN neurons (ffn), raise importance_batches, or use importance = \"activation\", refit = true",
    title="Structured pruning (paper stage 2)",
    tip="Paper stage 2: remove the least important FFN neurons. Here they are ranked by their contribution and each\n"
        "layer's output weights are refitted so the kept neurons take over what the removed ones added.\n"
        "Paper: FFN 3072 → 2048 by first-order importance, all 12 heads kept.",
    fields=(
        FieldSpec("ffn", "FFN neurons", "optional_int",
                  "FFN neurons kept per layer. Paper: 3072 → 2048. 'keep' leaves the FFN as it is.", 0, 65_536),
        FieldSpec("importance", "Neuron importance", "choice",
                  "activation: ‖activations‖ · ‖output weights‖, the size of what a neuron adds to the FFN output "
                  "(default; it kept\nfar more retrieval and fidelity, README \"What keeps quality\").\n"
                  "taylor: the paper's first-order importance |Σ w·∂L/∂w + b·∂L/∂b|.",
                  choices=IMPORTANCE),
        FieldSpec("refit", "Refit output weights", "bool",
                  "Refit each layer's FFN output weights and bias by least squares over the validation batches, "
                  "so the kept\nneurons reproduce the unpruned FFN output (correcting the layers below too)."),
        FieldSpec("heads", "Attention heads", "optional_int",
                  "Attention heads kept. The paper kept all 12; a stock BERT/XLM-R config needs hidden / heads "
                  "fixed,\nso keep the model's head count ('keep' leaves heads alone).", 0, 128),
        integer("importance_batches", "Importance batches",
                "Validation batches over which importance is measured and the output weights are refitted.",
                1, 100_000),
        integer("batch_size", "Batch size", "Sequences per importance batch.", 1, 4096),
    ),
)
