"""Stage 1: layer-reduction distillation from the input model into fewer of its own layers."""

from __future__ import annotations

from engine.models.loading import LoadedModel
from engine.recipe import DistillStage
from engine.stages.base import StageContext, StageOutput
from engine.surgery.layers import reduce_layers, select_layers
from engine.training.loop import train
from engine.training.losses import DistillLoss, resolve_loss


def run(ctx: StageContext) -> StageOutput:
    cfg: DistillStage = ctx.config
    teacher = prepare_teacher(ctx)
    n = teacher.config.num_hidden_layers
    indices = select_layers(cfg.layer_selection, n, cfg.layers)
    random_init = cfg.init == "random"
    net = reduce_layers(teacher.model, teacher.adapter, indices, random_init=random_init)
    net.requires_grad_(True)
    student = LoadedModel(net, teacher.tokenizer, teacher.adapter, teacher.source)
    loss = choose_loss(ctx, cfg.loss, student, teacher)
    # each student layer reproduces the output of the teacher layer it starts from (random: stride)
    layer_map = [i + 1 for i in (select_layers("stride", n, cfg.layers) if random_init else indices)]
    if cfg.last_to_last:
        layer_map[-1] = n
    ctx.log(f"student: {cfg.layers} of {n} layers "
            + ("(random init)" if random_init else f"from teacher layers {indices}") + f", loss {loss}")
    metrics: dict = {}
    if cfg.max_steps:
        metrics = train(ctx, net, student.tokenizer, DistillLoss(student, teacher, cfg, loss, layer_map=layer_map),
                        cfg, phase="distill")
    else:
        ctx.log("max_steps = 0: the student is the teacher's layers as they are, without training")
    return StageOutput(student, {**metrics, "loss": loss, "teacher_layers": indices})


def prepare_teacher(ctx: StageContext) -> LoadedModel:
    """The stage's input as a frozen teacher on the run's device."""
    teacher = ctx.model
    teacher.model.to(ctx.device).eval().requires_grad_(False)
    return teacher


def choose_loss(ctx: StageContext, requested: str, student: LoadedModel, teacher: LoadedModel) -> str:
    loss = resolve_loss(requested, student, teacher)
    if loss != requested:
        ctx.log(f"the teacher has no MLM head, so logit loss {requested!r} is impossible: distilling hidden "
                "states instead (loss = \"hidden\"); add an adapt stage first to use logit losses", "warning")
    return loss
