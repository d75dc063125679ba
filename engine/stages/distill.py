"""Layer-reduction distillation (paper stage 1): a student of fewer of the input model's own layers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from engine.cost import MASKED, CostInputs, StageCost, training_cost
from engine.recipe import LAYER_SELECTIONS, Distillation, Stage, Training, check, one_of
from engine.stages.fields import FieldSpec, distillation_fields, every_layer, integer, training_fields
from engine.stages.registry import StageSpec

if TYPE_CHECKING:
    from engine.models.loading import LoadedModel
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


def logit_rows(cfg: Distillation, inputs: CostInputs, tokens: int) -> int:
    """Rows a distillation projects to the vocabulary per batch of `tokens` (0 without an MLM head)."""
    if not inputs.target.mlm_head:
        return 0
    logit_loss = cfg.loss != "hidden" and inputs.source.mlm_head
    if logit_loss and cfg.all_positions:
        return tokens
    return int(MASKED * tokens) if logit_loss or cfg.alpha > 0 else 0


def distillation_cost(cfg: Training | Distillation, inputs: CostInputs) -> StageCost:
    """A stage that distils its output from its input (distill, shrink)."""
    return training_cost(cfg, inputs, lambda tokens: logit_rows(cfg, inputs, tokens), teacher_forward=True)


def describe(cfg: DistillStage) -> str:
    return (f"{cfg.layers} layers ({cfg.layer_selection}, init {cfg.init}), {cfg.loss} loss, {cfg.max_steps} steps "
            f"at lr {cfg.learning_rate}")


def run(ctx: StageContext) -> StageOutput:
    from engine.models.loading import LoadedModel
    from engine.stages.base import StageOutput
    from engine.surgery.layers import reduce_layers, select_layers
    from engine.training.loop import train
    from engine.training.losses import DistillLoss

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
    from engine.training.losses import resolve_loss

    loss = resolve_loss(requested, student, teacher)
    if loss != requested:
        ctx.log(f"the teacher has no MLM head, so logit loss {requested!r} is impossible: distilling hidden "
                "states instead (loss = \"hidden\"); add an adapt stage first to use logit losses", "warning")
    return loss


SPEC = StageSpec(
    kind="distill", config=DistillStage, shape=shape, cost=distillation_cost, run=run, template=DistillStage(),
    describe=describe, tag="knowledge-distillation", reference=True,
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
