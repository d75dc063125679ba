"""Stage 3: hidden-size cut (truncation or a shared SVD basis), then distillation from the input."""

from __future__ import annotations

import copy

from engine.data.batches import BatchStream
from engine.models.loading import LoadedModel
from engine.recipe import ShrinkStage
from engine.stages.base import StageContext, StageOutput
from engine.stages.distill import choose_loss, prepare_teacher
from engine.surgery.hidden import shrink_hidden, svd_basis, truncation_basis
from engine.training.loop import train
from engine.training.losses import DistillLoss


def run(ctx: StageContext) -> StageOutput:
    cfg: ShrinkStage = ctx.config
    teacher = prepare_teacher(ctx)
    d = teacher.config.hidden_size
    if cfg.init == "svd":
        stream = BatchStream(teacher.tokenizer, ctx.validation_texts, ctx.recipe.corpus.max_length,
                             cfg.batch_size, ctx.seed)
        batches = [stream.batch(i).to(ctx.device).inputs
                   for i in range(min(cfg.basis_batches, stream.batches_per_epoch))]
        basis = svd_basis(teacher.model, teacher.adapter, batches, cfg.hidden)
    else:
        basis = truncation_basis(d, cfg.hidden)
    basis = basis.to(ctx.device)
    net = shrink_hidden(copy.deepcopy(teacher.model), teacher.adapter, basis)
    net.requires_grad_(True)
    student = LoadedModel(net, teacher.tokenizer, teacher.adapter, teacher.source)
    loss = choose_loss(ctx, cfg.loss, student, teacher)
    ctx.log(f"hidden size {d} → {cfg.hidden} by {cfg.init}, then distillation with loss {loss}")
    layer_map = list(range(teacher.config.num_hidden_layers))
    objective = DistillLoss(student, teacher, cfg, loss, projection=basis, layer_map=layer_map)
    metrics = train(ctx, net, student.tokenizer, objective, cfg, phase="shrink")
    return StageOutput(student, {**metrics, "loss": loss, "hidden": cfg.hidden, "init": cfg.init})
