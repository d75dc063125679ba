"""The planner (`miniglot-cli plan`): fit a recipe to a size target on the user's own corpus.

Candidate allocations of the parameter budget (vocabulary, depth and which teacher layers, FFN width, hidden
width; the vocabulary is always trimmed first) are each tried with a short run of the recipe's stages, ranked
by the final student's label-free fidelity (or by a linear probe where labelled data is given), and the winner
is written as a recipe with the recipe's full step counts. Finished trials are recorded in `plan.json` in the
plan's folder, so a killed plan continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine import pipeline
from engine.configs import EvaluationConfig, PlanCandidate, PlanRecord, RunConfig, Stage
from engine.errors import RecipeError
from engine.estimate import stage_shapes
from engine.events import CancelToken, EventSink, FanOut, Log, Progress
from engine.models.loading import source_shape
from engine.recipe import Recipe
from engine.resources import DEFAULT_RECIPE
from engine.runfolder import Manifest
from engine.shapes import Shape

VOCABULARIES = (8000, 16000, 32000)
DEPTHS = (1 / 3, 1 / 2, 2 / 3)  # of the teacher's layers: 4, 6 and 8 of 12
SELECTIONS = ("stride", "first_k")
TRIAL_FRACTION = 0.25  # of each training stage's max_steps that a trial trains
PLAN_FILE = "plan.json"
FFN_STEP = 32


@dataclasses.dataclass(frozen=True)
class Allocation:
    """One way to spend the budget: the student's vocabulary, depth (and which teacher layers), FFN and hidden."""

    vocab: int
    layers: int
    selection: str
    ffn: int
    hidden: int

    @property
    def name(self) -> str:
        return f"v{self.vocab}-l{self.layers}-{self.selection}-f{self.ffn}-h{self.hidden}"


@dataclasses.dataclass(frozen=True)
class Probe:
    """A labelled task the candidates are ranked by (`--probe TASK=DATA`)."""

    task: str
    data: str


def stages_for(recipe: Recipe, allocation: Allocation, teacher: Shape, fraction: float = 1.0) -> tuple[Stage, ...]:
    """The allocation as stages, each taking its other settings from the recipe's stage of that kind (else the
    embedded default recipe's), training `fraction` of its steps."""
    template = _templates(recipe)

    def trained(stage, **sizes):
        steps = min(stage.max_steps, max(10, round(stage.max_steps * fraction)))
        return dataclasses.replace(stage, **sizes, max_steps=steps, eval_every=min(stage.eval_every, steps),
                                   checkpoint_every=min(stage.checkpoint_every, steps))

    stages: list[Stage] = []
    if allocation.vocab < teacher.vocab:
        stages.append(dataclasses.replace(template["trim_vocab"], size=allocation.vocab))
    if allocation.layers < teacher.layers:
        stages.append(trained(template["distill"], layers=allocation.layers, layer_selection=allocation.selection))
    if allocation.ffn < teacher.ffn:
        stages.append(dataclasses.replace(template["prune"], ffn=allocation.ffn))
    if allocation.hidden < teacher.hidden:
        stages.append(trained(template["shrink"], hidden=allocation.hidden))
    return tuple(stages)


def _templates(recipe: Recipe) -> dict[str, Stage]:
    """Per stage kind, the recipe's first stage of that kind, else the embedded default recipe's."""
    own: dict[str, Stage] = {}
    for stage in recipe.stages:
        own.setdefault(stage.kind, stage)
    return _default_stages() | own


@functools.cache
def _default_stages() -> dict[str, Stage]:
    """The embedded default recipe's stages by kind (read once: the candidate search asks for them often)."""
    return {stage.kind: stage for stage in Recipe.load(DEFAULT_RECIPE).stages}


def params_of(recipe: Recipe, allocation: Allocation, teacher: Shape) -> int:
    return stage_shapes(recipe.replace(stages=stages_for(recipe, allocation, teacher)), teacher)[-1].total_params


def candidates(recipe: Recipe, teacher: Shape, target: int,
               vocabularies: tuple[int, ...] = VOCABULARIES) -> list[Allocation]:
    """The allocations that meet `target` parameters: the recipe's own first where it does, then by closeness
    to its vocabulary, depth and layer selection: per vocabulary, depth and layer selection, the widest hidden
    size (a multiple of the head count, at least a quarter of the teacher's) whose FFN can stay at least twice
    as wide, and the widest such FFN. A RecipeError names the smallest size the planner can reach when none does."""
    if target >= teacher.total_params:
        raise RecipeError(f"the teacher ({teacher.total_params:,} parameters) already meets the target of "
                          f"{target:,}: nothing to plan", "target")
    own = own_allocation(recipe, teacher)
    found = []
    for vocab in sorted({min(v, teacher.vocab) for v in vocabularies}):
        for layers in _depths(teacher):
            for hidden in range(teacher.hidden, _min_hidden(teacher) - 1, -teacher.heads):
                # the layer selection does not change the size: one width serves both
                ffn = _widest_ffn(recipe, Allocation(vocab, layers, SELECTIONS[0], 0, hidden), teacher, target)
                if ffn >= 2 * hidden:
                    found += [Allocation(vocab, layers, selection, ffn, hidden)
                              for selection in dict.fromkeys((*SELECTIONS, own.selection))]
                    break
    if own not in found and params_of(recipe, own, teacher) <= target:
        found.append(own)
    if not found:
        smallest = smallest_allocation(teacher, vocabularies)
        raise RecipeError(
            f"no allocation reaches {target:,} parameters: the smallest the planner tries (vocabulary "
            f"{smallest.vocab:,}, {smallest.layers} layers, hidden {smallest.hidden}, FFN {smallest.ffn}) has "
            f"{params_of(recipe, smallest, teacher):,}; raise the target to at least that", "target")

    def distance(a: Allocation) -> tuple:
        return (a != own, abs(np.log2(a.vocab / own.vocab)) + abs(a.layers - own.layers) / teacher.layers * 3,
                a.selection != own.selection)

    return sorted(found, key=distance)


def label_free(order: list[Allocation], own: Allocation) -> list[Allocation]:
    """The candidates fidelity can rank: those of the recipe's own depth and layer selection where any meets the
    target, else all. Mean best-layer CKA rewards covering the teacher's whole depth, so it prefers deeper and
    `stride` students, which the probes rank lowest (README, What keeps quality); only a probe compares those."""
    same = [a for a in order if (a.layers, a.selection) == (own.layers, own.selection)]
    return same or order


def own_allocation(recipe: Recipe, teacher: Shape) -> Allocation:
    """The sizes the recipe's own stages reach (the teacher's where a stage is missing) and its layer selection
    (else the embedded default's)."""
    shape = stage_shapes(recipe, teacher)[-1]
    return Allocation(shape.vocab, shape.layers, _templates(recipe)["distill"].layer_selection, shape.ffn,
                      shape.hidden)


def smallest_allocation(teacher: Shape, vocabularies: tuple[int, ...] = VOCABULARIES) -> Allocation:
    hidden = _min_hidden(teacher)
    return Allocation(min(*vocabularies, teacher.vocab), _depths(teacher)[0], SELECTIONS[0], 2 * hidden, hidden)


def _depths(teacher: Shape) -> list[int]:
    return sorted({max(1, round(fraction * teacher.layers)) for fraction in DEPTHS})


def _min_hidden(teacher: Shape) -> int:
    return -(-teacher.hidden // 4 // teacher.heads) * teacher.heads


def _widest_ffn(recipe: Recipe, allocation: Allocation, teacher: Shape, target: int) -> int:
    """The widest FFN (a multiple of 32, at most the teacher's) that keeps the allocation within `target`; 0: none."""
    base = params_of(recipe, dataclasses.replace(allocation, ffn=FFN_STEP), teacher)
    per_neuron = allocation.layers * (2 * allocation.hidden + 1)
    width = FFN_STEP + (target - base) // per_neuron // FFN_STEP * FFN_STEP if target >= base else 0
    return min(width, teacher.ffn) if width >= FFN_STEP else 0


def plan(recipe: Recipe, teacher: Shape, target: int, out: Path, sink: EventSink, token: CancelToken | None = None,
         budget_minutes: float = 20.0, probe: Probe | None = None,
         vocabularies: tuple[int, ...] = VOCABULARIES) -> dict[str, Any]:
    """Try the candidates in order until the time budget is spent, write the winning recipe to `out` and
    the table to `<out stem>.plan/plan.json`; returns that table. Finished trials of an earlier, killed plan
    with the same recipe, target and probe are reused."""
    token = token or CancelToken()
    recipe = recipe.replace(plan=None)  # planning a planned recipe again starts from its stages alone
    record = plan_file(out)
    folder = record.parent
    folder.mkdir(parents=True, exist_ok=True)
    key = {"recipe": recipe.to_toml(), "target_params": target, "probe": dataclasses.asdict(probe) if probe else None,
           "vocabularies": list(vocabularies)}
    table = _load(record, key) or {**key, "trimmed": {}, "trials": {}}
    began = time.monotonic() - sum(trial["minutes"] * 60 for trial in table["trials"].values())
    order = candidates(recipe, teacher, target, vocabularies)
    if probe is None:
        order = label_free(order, own_allocation(recipe, teacher))
    for allocation in order:
        spent = time.monotonic() - began
        if allocation.name in table["trials"]:
            continue
        if table["trials"] and spent * (len(table["trials"]) + 1) / len(table["trials"]) > budget_minutes * 60:
            break  # another trial of the mean length would overrun the budget
        done = len(table["trials"])
        mean = spent / done if done else None  # the budget stops new trials; one that has started finishes
        sink.emit(Progress(index=0, stage="plan", step=done, total=len(order), unit="trial",
                           eta_seconds=min(mean * (len(order) - done), max(budget_minutes * 60 - spent, 0) + mean)
                           if mean else None))
        sink.emit(Log(message=f"plan: trying {allocation.name} ({params_of(recipe, allocation, teacher):,} "
                              f"parameters), trial {done + 1} of at most {len(order)}"))
        trial_began = time.monotonic()
        source = _trimmed(recipe, allocation.vocab, teacher, folder, table, sink, token)
        trial = recipe.replace(teacher=dataclasses.replace(recipe.teacher, source=source))
        scores = _trial(trial, allocation, source_shape(source), folder, sink, token, probe)
        table["trials"][allocation.name] = {**scores, "params": params_of(recipe, allocation, teacher),
                                            "minutes": (time.monotonic() - trial_began) / 60}
        _save(record, table)
        sink.emit(Log(message=f"plan: {allocation.name}: fidelity {scores['fidelity']:.4f}"
                              + (f", probe {scores['probe']:.4f}" if probe else "")
                              + f" ({table['trials'][allocation.name]['minutes']:.1f} min)"))
    rows = [_row(recipe, allocation, teacher, table["trials"].get(allocation.name)) for allocation in order]
    tried = [row for row in rows if row["status"] == "tried"]
    by = "probe" if probe else "fidelity"
    winner = max(tried, key=lambda row: row[by])
    result = {"target_params": target, "ranked_by": by, "winner": winner["name"], "candidates": rows,
              "minutes": sum(trial["minutes"] for trial in table["trials"].values()),
              "rank_correlation": spearman([r["fidelity"] for r in tried], [r["probe"] for r in tried])
              if probe and len(tried) > 2 else None}
    table["result"] = result
    _save(record, table)
    sink.emit(Progress(index=0, stage="plan", step=len(order), total=len(order), unit="trial"))
    allocation = next(a for a in order if a.name == winner["name"])
    planned = recipe.replace(stages=stages_for(recipe, allocation, teacher), plan=plan_record(result))
    out.write_text(f"# Planned by `miniglot-cli plan` for at most {target:,} parameters: the [[plan.candidates]] "
                   f"below were each tried briefly, ranked by {by}; the stages are the winner's.\n\n"
                   + planned.to_toml(), encoding="utf-8")
    return result


def plan_file(out: Path) -> Path:
    """Where the plan for the planned recipe `out` records its trials and result (trial runs beside it)."""
    return out.with_suffix(".plan") / PLAN_FILE


def plan_record(result: dict[str, Any]) -> PlanRecord:
    """The plan's result as the planned recipe's `[plan]` table (and so its runs' manifests)."""
    names = {f.name for f in dataclasses.fields(PlanCandidate)}
    rows = tuple(PlanCandidate(**{k: v for k, v in row.items() if k in names and v is not None})
                 for row in result["candidates"])
    return PlanRecord(target_params=result["target_params"], ranked_by=result["ranked_by"], winner=result["winner"],
                      rank_correlation=result["rank_correlation"], candidates=rows)


def _trimmed(recipe: Recipe, vocab: int, teacher: Shape, folder: Path, table: dict[str, Any], sink: EventSink,
             token: CancelToken) -> str:
    """The teacher with its vocabulary trimmed to `vocab` (the recipe's trim settings), made once per size and
    shared by every trial of that size; the teacher itself when it is no larger."""
    if vocab >= teacher.vocab:
        return recipe.teacher.source
    if str(vocab) not in table["trimmed"]:
        runs = folder / "vocabularies" / str(vocab)
        shutil.rmtree(runs, ignore_errors=True)
        trim = dataclasses.replace(_templates(recipe)["trim_vocab"], size=vocab)
        run = recipe.replace(stages=(trim,), evaluation=None, task_models=(),
                             run=_scratch(recipe.run, runs, f"vocabulary-{vocab}"))
        run_dir = pipeline.run(run, FanOut(sink), token)
        table["trimmed"][str(vocab)] = str(run_dir / Manifest.load(run_dir).data["stages"][0]["model_dir"])
    return table["trimmed"][str(vocab)]


def _trial(recipe: Recipe, allocation: Allocation, teacher: Shape, folder: Path, sink: EventSink,
           token: CancelToken, probe: Probe | None) -> dict[str, Any]:
    """One short run of the allocation's stages after the vocabulary (an unfinished folder of a killed plan is
    started again), scored by the final stage's label-free quality and, with a probe, its probe score."""
    runs = folder / "trials" / allocation.name
    shutil.rmtree(runs, ignore_errors=True)
    trial = recipe.replace(stages=stages_for(recipe, allocation, teacher, TRIAL_FRACTION), evaluation=None,
                           task_models=(), run=_scratch(recipe.run, runs, allocation.name))
    run_dir = pipeline.run(trial, FanOut(sink), token)
    quality = Manifest.load(run_dir).data["stages"][-1].get("quality") or {}
    scores = {"fidelity": quality.get("fidelity"), "retrieval_top1": quality.get("retrieval_top1"),
              "run_dir": str(run_dir)}
    if probe is not None:
        scores["probe"] = _probe(run_dir, probe, folder / "probes" / allocation.name, sink, token)
    return scores


def _scratch(run: RunConfig, runs: Path, name: str) -> RunConfig:
    """A trial's run settings: its own folder, and neither the check in a fresh process nor the sentence-
    transformers layout, which only a model that is kept needs (the planned recipe's run does both)."""
    return dataclasses.replace(run, runs_dir=str(runs), name=name, verify=False, sentence_layout=False)


def _probe(run_dir: Path, probe: Probe, out: Path, sink: EventSink, token: CancelToken) -> float:
    from engine.evaluate.report import headline
    from engine.evaluate.runner import EvalPlan, evaluate, run_models

    final = run_models(run_dir)[-1]
    config = EvaluationConfig(tasks=(probe.task,), data=(probe.data,), seeds=1, mode="probe", speed=False,
                              intrinsic=False)
    summary = evaluate(EvalPlan((final,), config), out, FanOut(sink), token)
    return next(r["dev_mean"] for r in summary["results"] if r["metric"] == headline(probe.task))


def _row(recipe: Recipe, allocation: Allocation, teacher: Shape, trial: dict | None) -> dict[str, Any]:
    return {"name": allocation.name, **dataclasses.asdict(allocation), "params": params_of(recipe, allocation, teacher),
            "status": "tried" if trial else "not tried (time budget)", **(trial or {})}


def spearman(a: list[float], b: list[float]) -> float:
    """The Spearman rank correlation of two score lists (ties ranked by order)."""
    ranks = [np.argsort(np.argsort(values)) for values in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def _load(record: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    try:
        table = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return table if all(table.get(k) == v for k, v in key.items()) else None


def _save(record: Path, table: dict[str, Any]) -> None:
    partial = record.with_suffix(".json.partial")
    partial.write_text(json.dumps(table, indent=1), encoding="utf-8")
    partial.replace(record)
