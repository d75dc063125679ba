"""The models an evaluation can compare: a run's teacher and completed students, or any model folder.

`plan_models` gives the chosen models their unique names; `run_evaluation` is the work-thread body
that hands them to `engine.evaluate.runner.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.configs import EvaluationConfig
from engine.evaluate import runner
from gui.runs_model import RunSummary

OTHER = "Other models"


@dataclass(frozen=True)
class ModelChoice:
    """A model offered in the tree: `source` is a folder or a teacher source (`packaged:…`, `hub:…`)."""

    run: str  # run folder name, or OTHER
    name: str  # "teacher", "01-distill", or a folder name
    source: str
    teacher: bool = False
    run_dir: str = ""  # the run folder, for the default output folder
    params: int = 0  # as the run's manifest records it; 0 when unknown

    @property
    def size(self) -> str:
        return f"{self.params / 1e6:.1f}M" if self.params else ""


def run_choices(run: RunSummary) -> list[ModelChoice]:
    """The teacher and completed students of a run, from its manifest (no model loading)."""
    name, run_dir, choices = run.path.name, str(run.path), []
    teacher = run.manifest.get("teacher") or {}
    if teacher.get("source"):
        choices.append(ModelChoice(name, "teacher", str(teacher["source"]), teacher=True, run_dir=run_dir,
                                   params=int(teacher.get("params") or 0)))
    for stage in run.stage_models():
        choices.append(ModelChoice(name, stage.name, str(stage.path), run_dir=run_dir, params=stage.params))
    return choices


def plan_models(choices: list[ModelChoice]) -> list[tuple[str, str]]:
    """(unique name, source) per chosen model; the first teacher leads (it is the reference).

    With models from one run the names are the run's own ("teacher", "01-distill"); from several
    runs students are prefixed with their run folder's name and a teacher shared by runs appears once.
    """
    ordered = sorted(choices, key=lambda c: not c.teacher)  # stable: teachers first, then tree order
    runs = {c.run for c in choices if c.run != OTHER}
    out: list[tuple[str, str]] = []
    for choice in ordered:
        if choice.teacher and any(source == choice.source for _, source in out):
            continue
        name = choice.name
        if len(runs) > 1 and choice.run != OTHER and (not choice.teacher or out):
            name = f"{choice.run}-{choice.name}"
        out.append((runner.unique_name(name, [n for n, _ in out]), choice.source))
    return out


def run_evaluation(sink: Any, token: Any, models: list[tuple[str, str]], config: EvaluationConfig,
                   out_dir: Path) -> dict[str, Any]:
    """Work-thread body: resolve the model sources, then `runner.evaluate` into `out_dir`."""
    from engine.models.loading import resolve_source

    refs = tuple(runner.ModelRef(name, resolve_source(source)) for name, source in models)
    return runner.evaluate(runner.EvalPlan(refs, config), out_dir, sink, token)
