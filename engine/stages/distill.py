"""Layer-reduction distillation (paper stage 1): a student of fewer of the input model's own layers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from engine.configs import LAYER_SELECTIONS, Distillation, Stage, Training, check, one_of
from engine.stages.distillation import distillation_cost, prepare_teacher, student_of
from engine.stages.spec import FieldSpec, StageSpec, distillation_fields, every_layer, integer, training_fields

if TYPE_CHECKING:
    from engine.shapes import Shape
    from engine.stages.base import StageContext, StageOutput


@dataclass(frozen=True)
class DistillStage(Stage, Training, Distillation):
    """Layer-reduction distillation (paper stage 1). With init = teacher, `max_steps = 0` keeps the
    selected teacher layers as they are (for first_k: exactly the teacher's lower layers)."""

    kind: ClassVar[str] = "distill"
    layers: int = 6
    layer_selection: str = "last_k"
    init: str = "teacher"  # teacher | random
    last_to_last: bool = False  # loss = "hidden": the last layer reproduces the teacher's last, not its own origin

    def __post_init__(self) -> None:
        self.check_training("distill", min_steps=0 if self.init == "teacher" else 1)
        self.check_distillation("distill")
        check(self.layers >= 1, "distill.layers must be at least 1", "layers")
        one_of("distill.layer_selection", self.layer_selection, LAYER_SELECTIONS, "layer_selection")
        one_of("distill.init", self.init, ("teacher", "random"), "init")


def shape(cfg: DistillStage, before: Shape) -> Shape:
    check(cfg.layers <= before.layers, f"layers = {cfg.layers} but the teacher has only {before.layers}", "layers")
    return dataclasses.replace(before, layers=cfg.layers)


def describe(cfg: DistillStage) -> str:
    return (f"{cfg.layers} layers ({cfg.layer_selection}, init {cfg.init}), {cfg.loss} loss, {cfg.max_steps} steps "
            f"at lr {cfg.learning_rate}")


def run(ctx: StageContext) -> StageOutput:
    from engine.stages.base import StageOutput, train_stage
    from engine.surgery.layers import reduce_layers, select_layers
    from engine.training.losses import DistillLoss

    cfg: DistillStage = ctx.config
    teacher = prepare_teacher(ctx)
    n = teacher.config.num_hidden_layers
    indices = select_layers(cfg.layer_selection, n, cfg.layers)
    random_init = cfg.init == "random"
    net = reduce_layers(teacher.model, teacher.adapter, indices, random_init=random_init)
    student, loss = student_of(ctx, net, teacher, cfg.loss)
    # each student layer reproduces the output of the teacher layer it starts from (random: stride)
    layer_map = [i + 1 for i in (select_layers("stride", n, cfg.layers) if random_init else indices)]
    if cfg.last_to_last:
        layer_map[-1] = n
    ctx.log(f"student: {cfg.layers} of {n} layers "
            + ("(random init)" if random_init else f"from teacher layers {indices}") + f", loss {loss}")
    metrics: dict = {}
    if cfg.max_steps:
        objective = DistillLoss(student, teacher, cfg, loss, layer_map=layer_map)
        metrics = train_stage(ctx, net, student.tokenizer, objective, cfg, phase="distill")
    else:
        ctx.log("max_steps = 0: the student is the teacher's layers as they are, without training")
    return StageOutput(student, {**metrics, "loss": loss, "teacher_layers": indices})


SPEC = StageSpec(
    kind="distill", config=DistillStage, shape=shape, cost=distillation_cost, run=run, template=DistillStage(),
    describe=describe, tag="knowledge-distillation", reference=True, allowed_drop=0.10,
    remedy="raise max_steps, keep more layers, or try layer_selection = \"stride\" (README, What keeps quality)",
    title="Layer-reduction distillation (paper stage 1)",
    tip="Paper stage 1: a student with fewer layers, initialised from the teacher's layers and trained on\n"
        "alpha·MLM + (1−alpha)·distillation. mBERT 177.9M → 6 layers 135.3M.",
    fields=(
        integer("layers", "Layers", "Student layers, copied from the teacher's. Paper: 12 → 6.", 1, 64),
        FieldSpec("layer_selection", "Layer selection", "choice",
                  "Which teacher layers initialise the student: stride (0, 2, 4, …), first_k, last_k or "
                  "first_last_k.\nPaper: last_k works best for mBERT, stride for XLM-R.", choices=LAYER_SELECTIONS),
        FieldSpec("init", "Initialisation", "choice",
                  "teacher: copy the selected teacher layers (the paper's setting); random: fresh weights.",
                  choices=("teacher", "random")),
        *distillation_fields(), *training_fields(min_steps=0),
        every_layer("every student layer reproduces the teacher layer it was copied from, not only the last.\n"
                    "With first_k the student starts as an exact copy of the teacher's lower layers."),
        FieldSpec("last_to_last", "Last layer → teacher's last", "bool",
                  "loss = hidden: the student's last layer learns the teacher's last layer (its sentence-level "
                  "knowledge)\ninstead of the layer it was copied from; with first_k it keeps token knowledge in "
                  "the lower layers and topic knowledge on top.", enabled_when=("loss", ("hidden",))),
    ),
)
