"""Recipes: what to compress, on which text, into what — frozen dataclasses with a TOML round trip.

A recipe validates itself when built (ranges, names, unknown keys) and again against the teacher's
shape before any work starts (`engine.shapes.check_recipe`). The same objects feed the CLI, the
GUI forms and the saved `recipe.toml` of every run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

import tomli_w

from engine.errors import RecipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LAYER_SELECTIONS = ("stride", "first_k", "last_k", "first_last_k")
DISTILL_LOSSES = ("mse", "kl", "kl_unsoft", "hidden")
SHRINK_INITS = ("truncation", "activation", "svd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
    """Unlabelled text in the language: files, globs, folders, .jsonl, hub:<dataset>[:<config>]."""

    train: tuple[str, ...] = ()
    validation: float | tuple[str, ...] = 0.05
    max_length: int = 128

    def __post_init__(self) -> None:
        check(len(self.train) > 0, "corpus.train is empty: list at least one file, folder or glob", "train")
        if isinstance(self.validation, float):
            check(0 < self.validation <= 0.5, "corpus.validation must be a fraction in (0, 0.5] or files",
                  "validation")
        else:
            check(len(self.validation) > 0, "corpus.validation is an empty list: give files or a fraction",
                  "validation")
        check(8 <= self.max_length <= 512, "corpus.max_length must be between 8 and 512 tokens", "max_length")


@dataclass(frozen=True)
class RunConfig:
    seed: int = 42
    runs_dir: str = "runs"
    name: str = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16: autocast for training (weights stay fp32)
    verify: bool = True  # reload every stage's model in a fresh process and compare outputs

    def __post_init__(self) -> None:
        check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
               f"run.device = {self.device!r}: use auto, cpu, cuda or cuda:N", "device")
        one_of("run.precision", self.precision, PRECISIONS, "precision")


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


EVAL_TASKS = ("pos", "ner", "sentiment", "topic")
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
class Recipe:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    corpus: CorpusConfig = field(default_factory=lambda: CorpusConfig(train=("corpus.txt",)))
    stages: tuple[Stage, ...] = ()
    run: RunConfig = field(default_factory=RunConfig)
    evaluation: EvaluationConfig | None = None
    base_dir: str = field(default=".", compare=False)  # where relative corpus paths resolve

    def __post_init__(self) -> None:
        from engine.stages.registry import spec_for, specs

        check(len(self.stages) > 0, "the recipe has no [[stages]]: add at least one", "stages")
        chosen = [spec_for(s.kind, f"stages[{i}].kind") for i, s in enumerate(self.stages, start=1)]
        for i, spec in enumerate(chosen, start=1):
            if spec.teacher_first:
                allowed = [other.kind for other in specs() if other.keeps_teacher and other is not spec]
                check(all(other.keeps_teacher and other is not spec for other in chosen[: i - 1]),
                      f"the {spec.kind} stage works on the teacher itself: it must come first (after "
                      f"{' or '.join(allowed) or 'nothing'} at most), once", f"stages[{i}]")

    # ---- dict / TOML / JSON ----
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("teacher", "language", "corpus"):
            out[name] = _plain(getattr(self, name))
        out["run"] = _plain(self.run)
        out["stages"] = [{"kind": s.kind, **_plain(s)} for s in self.stages]
        if self.evaluation is not None:
            out["evaluation"] = _plain(self.evaluation)
        return out

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    def differences(self, other: Recipe) -> list[str]:
        """`key: this -> other` for every setting that differs (`stages[2].max_steps: 600 -> 1200`)."""
        mine, theirs = _flat(self.resolved().to_dict()), _flat(other.resolved().to_dict())
        return [f"{key}: {mine.get(key, '(unset)')!r} -> {theirs.get(key, '(unset)')!r}"
                for key in sorted(mine.keys() | theirs.keys()) if mine.get(key) != theirs.get(key)]

    def resolved(self) -> Recipe:
        """The recipe with local paths made absolute, so its saved copy runs from any folder."""
        base = Path(self.base_dir).resolve()

        def absolute(source: str) -> str:
            if source.startswith(("hub:", "packaged:")):
                return source
            return str((base / Path(source).expanduser()).resolve())

        corpus = self.corpus
        validation = (corpus.validation if isinstance(corpus.validation, float)
                      else tuple(map(absolute, corpus.validation)))
        evaluation = self.evaluation
        if evaluation is not None:
            evaluation = dataclasses.replace(evaluation, data=tuple(map(absolute, evaluation.data)))
        return dataclasses.replace(
            self, base_dir=str(base), evaluation=evaluation,
            teacher=dataclasses.replace(self.teacher, source=absolute(self.teacher.source)),
            run=dataclasses.replace(self.run, runs_dir=absolute(self.run.runs_dir)),
            corpus=dataclasses.replace(corpus, train=tuple(map(absolute, corpus.train)), validation=validation))

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: str | Path = ".") -> Recipe:
        from engine.stages.registry import spec_for

        check(isinstance(data, dict), "a recipe must be a table of tables (teacher, corpus, stages...)")
        data = dict(data)
        sections = {"teacher": TeacherConfig, "language": LanguageConfig, "corpus": CorpusConfig,
                    "run": RunConfig}
        unknown = set(data) - set(sections) - {"stages", "evaluation"}
        if unknown:
            name = sorted(unknown)[0]
            raise RecipeError(f"unknown table or key {name!r} at the top of the recipe; "
                              f"known: {', '.join([*sections, 'stages', 'evaluation'])}", name)
        built: dict[str, Any] = {name: _build(kind, data.get(name, {}), name, name)
                                 for name, kind in sections.items()}
        if "evaluation" in data:
            built["evaluation"] = _build(EvaluationConfig, data["evaluation"], "evaluation", "evaluation")
        stages = []
        check(isinstance(data.get("stages", []), list), "stages must be a list of [[stages]] tables", "stages")
        for i, raw in enumerate(data.get("stages", []), start=1):
            path = f"stages[{i}]"
            check(isinstance(raw, dict), f"{path} must be a table", path)
            raw = dict(raw)
            kind = raw.pop("kind", None)
            config = spec_for(kind, f"{path}.kind").config
            stages.append(_build(config, raw, f"{path} ({kind})", path))
        return cls(**built, stages=tuple(stages), base_dir=str(base_dir))

    @classmethod
    def from_toml(cls, text: str, base_dir: str | Path = ".") -> Recipe:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RecipeError(f"the recipe is not valid TOML: {exc}") from None
        return cls.from_dict(data, base_dir)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".json":
                return cls.from_dict(json.loads(text), path.parent.resolve())
        except UnicodeDecodeError as exc:
            raise RecipeError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except json.JSONDecodeError as exc:
            raise RecipeError(f"the recipe is not valid JSON: {exc}") from None
        return cls.from_toml(text, path.parent.resolve())

    def save(self, path: str | Path) -> None:
        from engine.runfolder import atomic_write_text

        path = Path(path)
        atomic_write_text(path, self.to_json() if path.suffix == ".json" else self.to_toml())


def _plain(obj: Any) -> dict[str, Any]:
    """A dataclass as TOML-friendly values (tuples as lists, None omitted)."""
    out = {}
    for f in fields(obj):
        if f.name == "base_dir":
            continue
        value = getattr(obj, f.name)
        if value is None:
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested tables and lists of tables as one level of `a.b[1].c` keys (stages count from 1)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items()
                for k, v in _flat(item, f"{prefix}.{key}" if prefix else key).items()}
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return {k: v for i, item in enumerate(value, start=1) for k, v in _flat(item, f"{prefix}[{i}]").items()}
    return {prefix: value}


def _build(cls: type, raw: Any, where: str, path: str) -> Any:
    """Instantiate `cls` from a table, naming any unknown key and coercing simple types; errors carry
    their setting's path below `path`."""
    check(isinstance(raw, dict), f"[{where}] must be a table", path)
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.init}
    for key in raw:
        check(key in known, f"unknown key {key!r} in [{where}]; known keys: {', '.join(sorted(known))}",
              f"{path}.{key}")
    values = {key: _coerce(value, hints[key], f"{where}.{key}", f"{path}.{key}") for key, value in raw.items()}
    try:
        return cls(**values)
    except RecipeError as exc:
        raise exc.under(path) from None
    except TypeError as exc:
        raise RecipeError(f"[{where}]: {exc}", path) from None


def _coerce(value: Any, hint: Any, where: str, path: str) -> Any:
    text = hint.__name__ if isinstance(hint, type) else str(hint)
    if isinstance(value, list):
        check("tuple" in text, f"{where} must not be a list", path)
        check(all(isinstance(v, str) for v in value), f"{where} must be a list of strings", path)
        return tuple(value)
    if isinstance(value, bool):
        check(text == "bool", f"{where} must not be true/false", path)
        return value
    if isinstance(value, int) and "float" in text and "int" not in text:
        return float(value)
    if isinstance(value, int):
        check("int" in text, f"{where} must not be a number here, got {value!r}", path)
        return value
    if isinstance(value, float):
        check("float" in text, f"{where} must be a whole number, got {value!r}", path)
        return value
    if isinstance(value, str):
        check(text == "str" or "tuple" in text, f"{where} must be a number or list, got {value!r}", path)
        return (value,) if "tuple" in text else value
    raise RecipeError(f"{where} has an unsupported value {value!r}", path)
