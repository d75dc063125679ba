"""Recipes: what to compress, on which text, into what — a frozen dataclass with a TOML/JSON round trip.

A recipe validates itself when built (ranges, names, unknown keys, stage order) and again against the
teacher's shape before any work starts (`engine.estimate.stage_shapes`). The same objects feed the CLI,
the GUI forms and the saved `recipe.toml` of every run. Its parts are the dataclasses of
`engine.configs` and the stage configs of the registered stages; `[[task_models]]` (one per task) are
trained from the last stage's model after the stages.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import tomli_w

from engine.configs import (
    CorpusConfig,
    EvaluationConfig,
    LanguageConfig,
    PlanCandidate,
    PlanRecord,
    RunConfig,
    Stage,
    TaskModelConfig,
    TeacherConfig,
    check,
)
from engine.errors import RecipeError
from engine.runfolder import atomic_write_text
from engine.stages.registry import spec_for, specs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

@dataclass(frozen=True)
class Recipe:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    corpus: CorpusConfig = field(default_factory=lambda: CorpusConfig(train=("corpus.txt",)))
    stages: tuple[Stage, ...] = ()
    run: RunConfig = field(default_factory=RunConfig)
    evaluation: EvaluationConfig | None = None
    task_models: tuple[TaskModelConfig, ...] = ()
    plan: PlanRecord | None = None  # how `miniglot-cli plan` chose the stages
    base_dir: str = field(default=".", compare=False)  # where relative corpus paths resolve

    def __post_init__(self) -> None:
        check(len(self.stages) > 0, "the recipe has no [[stages]]: add at least one", "stages")
        chosen = [spec_for(s.kind, f"stages[{i}].kind") for i, s in enumerate(self.stages, start=1)]
        for i, spec in enumerate(chosen, start=1):
            if spec.teacher_first:
                allowed = [other.kind for other in specs() if other.keeps_teacher and other is not spec]
                check(all(other.keeps_teacher and other is not spec for other in chosen[: i - 1]),
                      f"the {spec.kind} stage works on the teacher itself: it must come first (after "
                      f"{' or '.join(allowed) or 'nothing'} at most), once", f"stages[{i}]")
        tasks = [config.task for config in self.task_models]
        for i, task in enumerate(tasks, start=1):
            check(task not in tasks[: i - 1], f"two [[task_models]] train task {task} (its folder is tasks/{task}): "
                                              "keep one", f"task_models[{i}].task")

    # ---- dict / TOML / JSON ----
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("teacher", "language", "corpus"):
            out[name] = _plain(getattr(self, name))
        out["run"] = _plain(self.run)
        out["stages"] = [{"kind": s.kind, **_plain(s)} for s in self.stages]
        if self.evaluation is not None:
            out["evaluation"] = _plain(self.evaluation)
        if self.task_models:
            out["task_models"] = [_plain(config) for config in self.task_models]
        if self.plan is not None:
            out["plan"] = _plain(self.plan)
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
        task_models = tuple(dataclasses.replace(config, data=absolute(config.data),
                                                unlabelled=tuple(map(absolute, config.unlabelled)))
                            for config in self.task_models)
        return dataclasses.replace(
            self, base_dir=str(base), evaluation=evaluation, task_models=task_models,
            teacher=dataclasses.replace(self.teacher, source=absolute(self.teacher.source)),
            run=dataclasses.replace(self.run, runs_dir=absolute(self.run.runs_dir)),
            corpus=dataclasses.replace(corpus, train=tuple(map(absolute, corpus.train)), validation=validation,
                                       parallel=absolute(corpus.parallel) if corpus.parallel else ""))

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: str | Path = ".") -> Recipe:
        check(isinstance(data, dict), "a recipe must be a table of tables (teacher, corpus, stages...)")
        data = dict(data)
        sections = {"teacher": TeacherConfig, "language": LanguageConfig, "corpus": CorpusConfig,
                    "run": RunConfig}
        lists = ("stages", "evaluation", "task_models", "plan")
        unknown = set(data) - set(sections) - set(lists)
        if unknown:
            name = sorted(unknown)[0]
            raise RecipeError(f"unknown table or key {name!r} at the top of the recipe; "
                              f"known: {', '.join([*sections, *lists])}", name)
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
        check(isinstance(data.get("task_models", []), list), "task_models must be a list of [[task_models]] tables",
              "task_models")
        task_models = tuple(_build(TaskModelConfig, raw, f"task_models[{i}]", f"task_models[{i}]")
                            for i, raw in enumerate(data.get("task_models", []), start=1))
        if "plan" in data:
            built["plan"] = _plan(data["plan"])
        return cls(**built, stages=tuple(stages), task_models=task_models, base_dir=str(base_dir))

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
        if path.is_dir():
            raise RecipeError(f"{path} is a folder: give the recipe file in it (.toml or .json)")
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
        path = Path(path)
        atomic_write_text(path, self.to_json() if path.suffix == ".json" else self.to_toml())


def _plan(raw: Any) -> PlanRecord:
    check(isinstance(raw, dict), "[plan] must be a table", "plan")
    raw = dict(raw)
    rows = raw.pop("candidates", [])
    check(isinstance(rows, list), "plan.candidates must be a list of [[plan.candidates]] tables", "plan.candidates")
    candidates = tuple(_build(PlanCandidate, row, f"plan.candidates[{i}]", f"plan.candidates[{i}]")
                       for i, row in enumerate(rows, start=1))
    return _build(PlanRecord, raw, "plan", "plan", candidates=candidates)


def _plain(obj: Any) -> dict[str, Any]:
    """A dataclass as TOML-friendly values (tuples as lists, dataclasses in them as tables, None omitted)."""
    out = {}
    for f in fields(obj):
        if f.name == "base_dir":
            continue
        value = getattr(obj, f.name)
        if value is None:
            continue
        out[f.name] = [_plain(v) if dataclasses.is_dataclass(v) else v for v in value] \
            if isinstance(value, tuple) else value
    return out


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested tables and lists of tables as one level of `a.b[1].c` keys (stages count from 1)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items()
                for k, v in _flat(item, f"{prefix}.{key}" if prefix else key).items()}
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return {k: v for i, item in enumerate(value, start=1) for k, v in _flat(item, f"{prefix}[{i}]").items()}
    return {prefix: value}


def _build(cls: type, raw: Any, where: str, path: str, **built: Any) -> Any:
    """Instantiate `cls` from a table (and fields `built` already), naming any unknown key and coercing simple
    types; errors carry their setting's path below `path`."""
    check(isinstance(raw, dict), f"[{where}] must be a table", path)
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.init} - set(built)
    for key in raw:
        check(key in known, f"unknown key {key!r} in [{where}]; known keys: {', '.join(sorted(known))}",
              f"{path}.{key}")
    missing = [f.name for f in fields(cls) if f.init and f.name not in raw and f.name not in built
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise RecipeError(f"[{where}] needs {' and '.join(missing)}", f"{path}.{missing[0]}")
    values = {key: _coerce(value, hints[key], f"{where}.{key}", f"{path}.{key}") for key, value in raw.items()}
    values.update(built)
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
        expected = "true or false" if text == "bool" else "a number"
        check(text == "str" or "tuple" in text, f"{where} must be {expected}, got {value!r}", path)
        return (value,) if "tuple" in text else value
    raise RecipeError(f"{where} has an unsupported value {value!r}", path)
