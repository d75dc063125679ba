"""The settings a recipe is made of: plain frozen dataclasses that validate themselves when built.

Each raises `RecipeError` with the path of the setting at fault (`max_steps`, prefixed with its table
by the recipe parser). Nothing here knows the stage registry: `engine.recipe` assembles these into a
`Recipe` and parses TOML/JSON; each stage module defines its own config on `Stage`, `Training` and
`Distillation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from engine.errors import RecipeError
from engine.tasks import TASKS, TRAINABLE

LAYER_SELECTIONS = ("stride", "first_k", "last_k", "first_last_k")
DISTILL_LOSSES = ("mse", "kl", "kl_unsoft", "hidden")
SHRINK_INITS = ("truncation", "activation", "svd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RUN_NAME_CHARS = 100  # the run folder is <date>-<time>-<name>; file systems allow 255 bytes


def check(condition: bool, message: str, path: str = "") -> None:
    """Raise RecipeError(message, path) unless `condition`."""
    if not condition:
        raise RecipeError(message, path)


def one_of(where: str, value: str, allowed: tuple[str, ...], path: str) -> None:
    check(value in allowed, f"{where} = {value!r}: choose one of {', '.join(allowed)}", path)


@dataclass(frozen=True)
class TeacherConfig:
    """The model to compress: `packaged:<name>`, `hub:<id>[@revision]` or a local folder."""

    source: str = "packaged:multilingual-e5-small"
    allow_pickle: bool = False  # load legacy pytorch_model.bin (unsafe pickle) only when opted in

    def __post_init__(self) -> None:
        check(bool(self.source.strip()), "teacher.source is empty: give packaged:<name>, hub:<id> or a folder",
              "source")


@dataclass(frozen=True)
class LanguageConfig:
    """The target language as a FLORES-200 code, e.g. mlt_Latn."""

    code: str = "mlt_Latn"

    def __post_init__(self) -> None:
        parts = self.code.split("_")
        check(
            len(parts) == 2 and len(parts[0]) == 3 and len(parts[1]) == 4 and parts[0].islower(),
            f"language.code = {self.code!r}: use a FLORES-200 code such as mlt_Latn or swh_Latn", "code",
        )


@dataclass(frozen=True)
class CorpusConfig:
    """Unlabelled text in the language: files, globs, folders, .jsonl, hub:<dataset>[:<config>]; `parallel`:
    each stage's label-free retrieval score (the validation file's lines finding their translations)."""

    train: tuple[str, ...] = ()
    validation: float | tuple[str, ...] = 0.05
    max_length: int = 128
    parallel: str = ""  # a file line-aligned with the (one) validation file, in another language: a retrieval score

    def __post_init__(self) -> None:
        check(len(self.train) > 0, "corpus.train is empty: list at least one file, folder or glob", "train")
        if isinstance(self.validation, float):
            check(0 < self.validation <= 0.5, "corpus.validation must be a fraction in (0, 0.5] or files",
                  "validation")
        else:
            check(len(self.validation) > 0, "corpus.validation is an empty list: give files or a fraction",
                  "validation")
        check(8 <= self.max_length <= 512, "corpus.max_length must be between 8 and 512 tokens", "max_length")
        check(not self.parallel or (not isinstance(self.validation, float) and len(self.validation) == 1),
              "corpus.parallel translates the validation text line by line: give corpus.validation as one file",
              "parallel")


@dataclass(frozen=True)
class RunConfig:
    seed: int = 42
    runs_dir: str = "runs"
    name: str = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16: autocast for training (weights stay fp32)
    verify: bool = True  # reload every stage's model in a fresh process and compare outputs
    sentence_layout: bool = True  # a sentence embedder's students are sentence-transformers models too (each
    # stage then encodes MAP_TEXTS training lines to fit its map onto the teacher's space)

    def __post_init__(self) -> None:
        check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
               f"run.device = {self.device!r}: use auto, cpu, cuda or cuda:N", "device")
        one_of("run.precision", self.precision, PRECISIONS, "precision")
        check(len(self.name) <= RUN_NAME_CHARS, f"run.name is {len(self.name)} characters long; use at most "
              f"{RUN_NAME_CHARS} (it becomes part of the run folder's name)", "name")
        check(self.name.strip(".") != "" or not self.name, f"run.name = {self.name!r} is not a folder name", "name")
        bad = sorted({c for c in self.name if c in '/\\' or not c.isprintable()})
        check(not bad, f"run.name = {self.name!r} contains {' '.join(map(repr, bad))}: the run folder is named after "
              "it, so use letters, digits, '-', '_' or '.'", "name")


@dataclass(frozen=True)
class Training:
    """Optimisation settings shared by every stage that trains."""

    max_steps: int = 200
    batch_size: int = 16
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    grad_accumulation: int = 1
    mlm_probability: float = 0.15
    eval_every: int = 50
    eval_batches: int = 8
    checkpoint_every: int = 50

    def check_training(self, where: str, min_steps: int = 1) -> None:
        check(self.max_steps >= min_steps, f"{where}.max_steps must be at least {min_steps}", "max_steps")
        check(self.batch_size >= 1, f"{where}.batch_size must be at least 1", "batch_size")
        check(0 < self.learning_rate < 1, f"{where}.learning_rate must be in (0, 1)", "learning_rate")
        check(0 <= self.warmup_ratio < 1, f"{where}.warmup_ratio must be in [0, 1)", "warmup_ratio")
        check(self.grad_accumulation >= 1, f"{where}.grad_accumulation must be at least 1", "grad_accumulation")
        check(0 < self.mlm_probability < 1, f"{where}.mlm_probability must be in (0, 1)", "mlm_probability")
        check(self.eval_every >= 1, f"{where}.eval_every must be at least 1", "eval_every")
        check(self.checkpoint_every >= 1, f"{where}.checkpoint_every must be at least 1", "checkpoint_every")


@dataclass(frozen=True)
class Distillation:
    """Loss settings shared by `distill` and `shrink`."""

    loss: str = "mse"
    alpha: float = 0.5
    temperature: float = 2.0
    all_positions: bool = False  # logit loss at every position (the paper) instead of masked ones
    intermediate: bool = False  # with loss = "hidden": also match mapped intermediate layers
    sentence: float = 0.0  # with loss = "hidden": weight of matching mean-pooled sentence embeddings
    cache_teacher: bool = True  # compute the teacher's outputs on the validation batches once, not at every check

    def check_distillation(self, where: str) -> None:
        one_of(f"{where}.loss", self.loss, DISTILL_LOSSES, "loss")
        check(0 <= self.alpha <= 1, f"{where}.alpha must be in [0, 1]", "alpha")
        check(self.temperature > 0, f"{where}.temperature must be positive", "temperature")
        check(self.sentence >= 0, f"{where}.sentence must be 0 or more", "sentence")


@dataclass(frozen=True)
class Stage:
    """Base of every stage's config; each stage module defines one (see `engine.stages.registry`)."""

    kind: ClassVar[str] = ""


EVAL_TASKS = tuple(TASKS)
EVAL_MODES = ("probe", "full")


@dataclass(frozen=True)
class EvaluationConfig:
    """Downstream evaluation after the last stage: `tasks[i]` is scored on the data at `data[i]`."""

    tasks: tuple[str, ...] = ()
    data: tuple[str, ...] = ()
    seeds: int = 3
    epochs: int = 0  # 0: the task's default
    mode: str = "full"  # full (fine-tuning) | probe (linear probe on frozen features, minutes on a CPU)
    learning_rate: float = 0.0  # 0: the task's default
    intrinsic: bool = True  # representation fidelity (and MLM metrics when there is a head)
    speed: bool = True  # CPU latency and throughput, as ratios to the teacher
    text_column: str = ""  # classification tables: the text column's name ("" = by name or inferred)
    label_column: str = ""  # and the label column's

    def __post_init__(self) -> None:
        check(len(self.tasks) > 0, "evaluation.tasks is empty: list tasks such as [\"pos\", \"topic\"]", "tasks")
        check(len(self.tasks) == len(self.data),
              f"evaluation.tasks has {len(self.tasks)} entries but evaluation.data has {len(self.data)}: "
              "give one data folder, file or hub id per task", "data")
        for task in self.tasks:
            one_of("evaluation.tasks", task, EVAL_TASKS, "tasks")
        check(self.seeds >= 1, "evaluation.seeds must be at least 1", "seeds")
        check(self.epochs >= 0, "evaluation.epochs must be 0 (task default) or more", "epochs")
        check(self.mode != "head_only", "evaluation.mode = 'head_only' was replaced by 'probe': a linear "
              "classifier fitted to convergence on the frozen encoder's features", "mode")
        one_of("evaluation.mode", self.mode, EVAL_MODES, "mode")
        check(0 <= self.learning_rate < 1, "evaluation.learning_rate must be 0 (task default) or in (0, 1)",
              "learning_rate")


@dataclass(frozen=True)
class TaskModelConfig:
    """A task model to train and ship (`[[task_models]]`, `miniglot-cli finetune`): fine-tune on `data`, and
    with `distill` learn from the fine-tuned teacher's predictions too (on the train texts and the
    `unlabelled` texts: files, globs or hub ids; empty = the run's corpus). 0 = the task's default."""

    task: str
    data: str
    distill: bool = True
    unlabelled: tuple[str, ...] = ()
    epochs: int = 0
    learning_rate: float = 0.0
    seed: int = 0
    temperature: float = 2.0  # softens the teacher's predictions
    alpha: float = 0.5  # weight of the gold labels; 1 - alpha on the teacher's predictions
    unlabelled_ratio: float = 3.0  # unlabelled texts per train text in each epoch
    text_column: str = ""
    label_column: str = ""

    def __post_init__(self) -> None:
        one_of("task_models.task", self.task, TRAINABLE, "task")
        check(bool(str(self.data).strip()), "task_models.data is empty: give a data folder, file or hub id", "data")
        check(self.epochs >= 0, "task_models.epochs must be 0 (task default) or more", "epochs")
        check(0 <= self.learning_rate < 1, "task_models.learning_rate must be 0 (task default) or in (0, 1)",
              "learning_rate")
        check(self.temperature > 0, "task_models.temperature must be positive", "temperature")
        check(0 <= self.alpha <= 1, "task_models.alpha must be in [0, 1]", "alpha")
        check(self.unlabelled_ratio >= 0, "task_models.unlabelled_ratio must be 0 or more", "unlabelled_ratio")


@dataclass(frozen=True)
class PlanCandidate:
    """One allocation the planner considered (`[[plan.candidates]]`) and, if tried, its trial's scores."""

    name: str
    params: int
    vocab: int
    layers: int
    selection: str
    ffn: int
    hidden: int
    status: str  # "tried", or why not
    fidelity: float | None = None
    probe: float | None = None
    retrieval_top1: float | None = None
    minutes: float = 0.0


@dataclass(frozen=True)
class PlanRecord:
    """How a planned recipe was chosen (`[plan]`, written by `miniglot-cli plan`); kept in the run's manifest."""

    target_params: int
    ranked_by: str
    winner: str
    rank_correlation: float | None = None  # Spearman, fidelity against the probe
    candidates: tuple[PlanCandidate, ...] = ()

    def __post_init__(self) -> None:
        one_of("plan.ranked_by", self.ranked_by, ("fidelity", "probe"), "ranked_by")
        check(any(c.name == self.winner for c in self.candidates),
              f"plan.winner = {self.winner!r} is none of its [[plan.candidates]]", "winner")
