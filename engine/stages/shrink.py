"""Stage 3: hidden-size cut (truncation, the most active dimensions, or a shared SVD basis), then
distillation from the last distilled student (layer for layer) or the input."""

from __future__ import annotations

import copy

from engine.data.batches import BatchStream
from engine.models.loading import LoadedModel
from engine.recipe import ShrinkStage
from engine.stages.base import StageContext, StageOutput
from engine.stages.distill import choose_loss, prepare_teacher
from engine.surgery.hidden import activation_basis, residual_moment, shrink_hidden, svd_basis, truncation_basis
from engine.training.loop import train
from engine.training.losses import DistillLoss


def run(ctx: StageContext) -> StageOutput:
    cfg: ShrinkStage = ctx.config
    teacher = prepare_teacher(ctx)
    d = teacher.config.hidden_size
    if cfg.init == "truncation":
        basis = truncation_basis(d, cfg.hidden)
    else:
        stream = BatchStream(teacher.tokenizer, ctx.validation_texts, ctx.recipe.corpus.max_length,
                             cfg.batch_size, ctx.seed)
        batches = [stream.batch(i).to(ctx.device).inputs
                   for i in range(min(cfg.basis_batches, stream.batches_per_epoch))]
        moment = residual_moment(teacher.model, teacher.adapter, batches)
        basis = (svd_basis if cfg.init == "svd" else activation_basis)(moment, cfg.hidden)
    basis = basis.to(ctx.device)
    net = shrink_hidden(copy.deepcopy(teacher.model), teacher.adapter, basis)
    net.requires_grad_(True)
    student = LoadedModel(net, teacher.tokenizer, teacher.adapter, teacher.source)
    loss = choose_loss(ctx, cfg.loss, student, teacher)
    ctx.log(f"hidden size {d} → {cfg.hidden} by {cfg.init}, then distillation with loss {loss}")
    reference = ctx.reference if _same_depth(ctx.reference, teacher) else teacher
    if reference is not teacher:
        reference.model.to(ctx.device).eval().requires_grad_(False)
        ctx.log("distilling from the last distilled student before pruning (layer for layer), "
                "so the cut repairs what pruning removed too")
    layer_map = list(range(1, teacher.config.num_hidden_layers + 1))
    objective = DistillLoss(student, reference, cfg, loss, projection=basis, layer_map=layer_map)
    metrics = train(ctx, net, student.tokenizer, objective, cfg, phase="shrink")
    return StageOutput(student, {**metrics, "loss": loss, "hidden": cfg.hidden, "init": cfg.init})


def _same_depth(a: LoadedModel, b: LoadedModel) -> bool:
    return (a.config.num_hidden_layers == b.config.num_hidden_layers
            and a.config.hidden_size == b.config.hidden_size and a.tokenizer.get_vocab() == b.tokenizer.get_vocab())
