"""Hidden-size reduction (paper stage 3): cut the width by truncation, the most active dimensions or a
shared SVD basis, then distil from the last distilled student (layer for layer) or the input."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from engine.configs import SHRINK_INITS, Distillation, Stage, Training, check, one_of
from engine.stages.distillation import distillation_cost, prepare_teacher, student_of
from engine.stages.spec import FieldSpec, StageSpec, distillation_fields, every_layer, integer, training_fields

if TYPE_CHECKING:
    from engine.models.loading import LoadedModel
    from engine.shapes import Shape
    from engine.stages.base import StageContext, StageOutput


@dataclass(frozen=True)
class ShrinkStage(Stage, Training, Distillation):
    """Hidden-size reduction then a second distillation from the previous student (paper stage 3)."""

    kind: ClassVar[str] = "shrink"
    hidden: int = 312
    init: str = "truncation"
    basis_batches: int = 8

    def __post_init__(self) -> None:
        self.check_training("shrink")
        self.check_distillation("shrink")
        check(self.hidden >= 8, "shrink.hidden must be at least 8", "hidden")
        one_of("shrink.init", self.init, SHRINK_INITS, "init")


def shape(cfg: ShrinkStage, before: Shape) -> Shape:
    check(cfg.hidden <= before.hidden, f"hidden = {cfg.hidden} is wider than the model ({before.hidden})", "hidden")
    lower = cfg.hidden // before.heads * before.heads
    neighbours = [n for n in (lower, lower + before.heads) if 0 < n <= before.hidden]
    check(cfg.hidden % before.heads == 0,
          f"hidden = {cfg.hidden} is not divisible by the {before.heads} attention heads; "
          f"try {' or '.join(map(str, neighbours))}", "hidden")
    return dataclasses.replace(before, hidden=cfg.hidden)


def describe(cfg: ShrinkStage) -> str:
    return f"hidden {cfg.hidden} (init {cfg.init}), {cfg.loss} loss, {cfg.max_steps} steps at lr {cfg.learning_rate}"


def run(ctx: StageContext) -> StageOutput:
    import copy

    from engine.data.batches import BatchStream
    from engine.stages.base import StageOutput, train_stage
    from engine.surgery.hidden import activation_basis, residual_moment, shrink_hidden, svd_basis, truncation_basis
    from engine.training.losses import DistillLoss

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
    student, loss = student_of(ctx, net, teacher, cfg.loss)
    ctx.log(f"hidden size {d} → {cfg.hidden} by {cfg.init}, then distillation with loss {loss}")
    reference = ctx.reference if _same_depth(ctx.reference, teacher) else teacher
    if reference is not teacher:
        reference.model.to(ctx.device).eval().requires_grad_(False)
        ctx.log("distilling from the last distilled student before pruning (layer for layer), "
                "so the cut repairs what pruning removed too")
    layer_map = list(range(1, teacher.config.num_hidden_layers + 1))
    objective = DistillLoss(student, reference, cfg, loss, projection=basis, layer_map=layer_map)
    metrics = train_stage(ctx, net, student.tokenizer, objective, cfg, phase="shrink")
    return StageOutput(student, {**metrics, "loss": loss, "hidden": cfg.hidden, "init": cfg.init})


def _same_depth(a: LoadedModel, b: LoadedModel) -> bool:
    return (a.config.num_hidden_layers == b.config.num_hidden_layers
            and a.config.hidden_size == b.config.hidden_size and a.tokenizer.get_vocab() == b.tokenizer.get_vocab())


SPEC = StageSpec(
    kind="shrink", config=ShrinkStage, shape=shape, cost=distillation_cost, run=run, template=ShrinkStage(),
    describe=describe, tag="knowledge-distillation",
    remedy="raise max_steps, or keep a wider hidden size (hidden)",
    title="Hidden-size reduction + second distillation (paper stage 3)",
    tip="Paper stage 3: cut the hidden width, then distil again from the previous student.\n"
        "Paper: the hidden-size cut costs the most accuracy of all stages.",
    fields=(
        integer("hidden", "Hidden size",
                "Hidden width after the cut; it must divide by the number of attention heads.\n"
                "Paper: 312 / 456 / 564 — the hidden-size cut costs the most accuracy of all stages.", 8, 16_384),
        FieldSpec("init", "Initialisation", "choice",
                  "truncation: keep the first k dimensions (the paper); activation: keep the k most active "
                  "dimensions;\nsvd: project every weight into one shared basis of the top principal "
                  "directions.", choices=SHRINK_INITS),
        *distillation_fields(), *training_fields(),
        every_layer("every layer of the narrower model reproduces the same layer of the last distilled student "
                    "(projected),\nnot only the last."),
    ),
)
