"""Benchmark a teacher and its students: models × tasks × seeds, plus fidelity, size and speed.

Results are files under one output folder (DESIGN.md §2 `eval/`): one JSON per model, task and
seed — an interrupted evaluation continues where it stopped — and a summary as JSON, Markdown
and CSV. Progress and every score go out as events, so the GUI draws them live.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.configs import EvaluationConfig
from engine.data.parallel import ParallelData
from engine.errors import MiniGlotError
from engine.evaluate.report import write_summary
from engine.events import CancelToken, EvalDevScore, EvalProgress, EvalResult, EventSink, Log
from engine.modelcard import refresh_cards
from engine.runfolder import RunFolder, atomic_write_text, folder_bytes, folder_fingerprint
from engine.tasks import task as task_kind


@dataclass(frozen=True)
class ModelRef:
    """A model to evaluate: a short name for tables and the folder it loads from."""

    name: str
    path: Path


@dataclass(frozen=True)
class EvalPlan:
    """The models to compare (the first is the reference, the teacher) and the evaluation's settings."""

    models: tuple[ModelRef, ...]
    config: EvaluationConfig

    @property
    def tasks(self) -> tuple[tuple[str, str], ...]:
        """(task, data folder / file / hub id) pairs."""
        return tuple(zip(self.config.tasks, self.config.data, strict=True))


def run_models(run_dir: Path) -> list[ModelRef]:
    """The teacher and every completed stage student of a run folder."""
    from engine.models.loading import resolve_source
    from engine.recipe import Recipe

    folder = RunFolder.open(run_dir)
    stages = folder.stage_models(folder.manifest().data)
    recipe = Recipe.load(folder.recipe_file)
    models = [ModelRef("teacher", resolve_source(recipe.teacher.source))]
    models += [ModelRef(stage.name, stage.path) for stage in stages]
    if len(models) == 1:
        raise MiniGlotError(f"{run_dir} has no completed stage yet: nothing to compare with the teacher")
    return models


def source_models(specs: list[str]) -> list[ModelRef]:
    """Model folders or teacher sources (`packaged:…`, `hub:…`), named by their last path part."""
    from engine.models.loading import resolve_source

    refs = []
    for spec in specs:
        path = resolve_source(spec)
        folder = Path(spec)
        name = (spec.split(":", 1)[1] if spec.startswith(("packaged:", "hub:"))
                else folder.parent.name if folder.name == "model" else folder.name)  # stages/NN-kind/model
        refs.append(ModelRef(unique_name(name, [r.name for r in refs]), path))
    return refs


def unique_name(name: str, taken: list[str]) -> str:
    """`name` with `/` as `_` (empty: `model`), suffixed `-2`, `-3`, … until it is not in `taken`."""
    name = name.replace("/", "_") or "model"
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    return candidate


def evaluate(plan: EvalPlan, out_dir: Path, sink: EventSink, token: CancelToken | None = None) -> dict[str, Any]:
    """Run the plan into `out_dir`; returns the summary (also written as summary.json/.md/.csv)."""
    from engine.data.tasks import Columns, load_task
    from engine.evaluate.finetune import DevScore, FitStep, finetune
    from engine.evaluate.probe import probe
    from engine.evaluate.retrieval import embeddings, retrieval

    token = token or CancelToken()
    out_dir = Path(out_dir)
    cfg = plan.config
    labels = task_labels(plan.tasks)
    columns = Columns(cfg.text_column, cfg.label_column)
    datasets = {label: load_task(task, data, columns=columns)
                for label, (task, data) in zip(labels, plan.tasks, strict=True)}
    jobs = [(task, model, seed) for task in labels for model in plan.models
            for seed in range(1 if isinstance(datasets[task], ParallelData) else cfg.seeds)]  # retrieval: no seeds
    how = "linear probes on frozen features" if cfg.mode == "probe" else f"{cfg.mode} fine-tuning"
    sink.emit(Log(message=f"evaluating {len(plan.models)} models on {', '.join(datasets)} "
                          f"× {cfg.seeds} seeds ({how})"))
    fingerprints = {ref.name: folder_fingerprint(ref.path) for ref in plan.models}
    data_prints = {label: data.fingerprint() for label, data in datasets.items()}
    began = time.monotonic()
    scored: list[dict[str, Any]] = []
    indexes: dict[str, Any] = {}  # retrieval: the teacher's index embeddings per task
    for done, (task, model, seed) in enumerate(jobs):
        token.raise_if_cancelled()
        eta = (time.monotonic() - began) / done * (len(jobs) - done) if done else None
        sink.emit(EvalProgress(done=done, total=len(jobs), task=task, model=model.name, seed=seed, eta_seconds=eta))
        key = result_key(cfg, fingerprints[model.name], data_prints[task], task, seed,
                         index=fingerprints[plan.models[0].name])
        path = out_dir / task / model.name / f"seed-{seed}-{key[:12]}.json"
        record = _cached(path, key)
        if record is None:
            def progress(report: FitStep | DevScore, task=task, model=model, seed=seed) -> None:
                if isinstance(report, DevScore):
                    sink.emit(EvalDevScore(task=task, model=model.name, seed=seed, **dataclasses.asdict(report)))

            if isinstance(datasets[task], ParallelData):
                if task not in indexes:
                    indexes[task] = embeddings(plan.models[0].path, datasets[task].index)
                result = retrieval(model.path, datasets[task], indexes[task])
            elif cfg.mode == "probe":
                result = probe(model.path, datasets[task], seed, progress=progress, token=token)
            else:
                result = finetune(model.path, datasets[task], seed, epochs=cfg.epochs or None,
                                  learning_rate=cfg.learning_rate or None, progress=progress, token=token)
            record = {"model": model.name, "model_path": str(model.path), "task": task, "seed": seed,
                      "mode": cfg.mode, "key": key, "data": datasets[task].source, **_result_fields(result)}
            atomic_write_text(path, json.dumps(record, indent=2))
        scored.append(record)
        sink.emit(EvalResult(model=model.name, task=task, seed=seed, metrics=record["metrics"]))
    sink.emit(EvalProgress(done=len(jobs), total=len(jobs), eta_seconds=0.0))
    models = _model_facts(plan, datasets, sink, token)
    summary = {"teacher": plan.models[0].name, "mode": cfg.mode,
               "tasks": [{"label": label, "task": task, "data": data}
                         for label, (task, data) in zip(labels, plan.tasks, strict=True)],
               "results": aggregate(scored), "models": models}
    write_summary(summary, out_dir)
    for problem in refresh_cards(summary):  # the run students' model cards now list these scores
        sink.emit(Log(message=problem, level="warning"))
    return summary


def result_key(config: EvaluationConfig, model_print: str, data_print: str, task: str, seed: int,
               index: str = "") -> str:
    """A hash of everything a result depends on: weights, data, task, mode and settings, seed, code (retrieval:
    the weights of the model that embedded the index, `index`, instead of mode and seed)."""
    kind = task.split("@")[0]
    settings = {"model": model_print, "data": data_print, "task": kind, "code": code_fingerprint()}
    if task_kind(kind).trainable:
        settings.update(mode=config.mode, seed=seed)
    else:
        settings.update(index=index)
    if task_kind(kind).trainable and config.mode != "probe":
        settings.update(epochs=config.epochs, learning_rate=config.learning_rate)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


@functools.cache
def code_fingerprint() -> str:
    """A hash of the source of the modules that produce a score (readers, training, probes, metrics)."""
    from engine.data import batches, parallel, tasks
    from engine.evaluate import encoding, finetune, metrics, probe, retrieval
    from engine.models import embedder

    digest = hashlib.sha256()
    for module in (batches, tasks, parallel, encoding, finetune, metrics, probe, retrieval, embedder):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def _cached(path: Path, key: str) -> dict[str, Any] | None:
    """The stored result at `path` if it was computed for exactly `key`."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("key") == key else None


def task_labels(tasks: tuple[tuple[str, str], ...]) -> list[str]:
    """Names for result folders and table columns: the task, or `task@data` when a task repeats."""
    kinds = [task for task, _ in tasks]
    return [task if kinds.count(task) == 1 else f"{task}@{Path(data.rstrip('/')).name or data}"
            for task, data in tasks]


def _result_fields(result: Any) -> dict[str, Any]:
    fields = dataclasses.asdict(result)
    fields["labels"] = list(fields.get("labels", ()))
    return fields


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds for every model, task and metric, in first-seen order; `dev_mean` too where
    every seed has a dev score for the metric (what a choice among models may be made by, never the test)."""
    from engine.evaluate.metrics import mean_std

    groups: dict[tuple[str, str, str], list[float]] = {}
    devs: dict[tuple[str, str, str], list[float]] = {}
    for record in records:
        for metric, value in record["metrics"].items():
            key = (record["model"], record["task"], metric)
            groups.setdefault(key, []).append(float(value))
            if metric in (record.get("dev_metrics") or {}):
                devs.setdefault(key, []).append(float(record["dev_metrics"][metric]))
    rows = []
    for key, values in groups.items():
        mean, std = mean_std(values)
        model, task, metric = key
        rows.append({"model": model, "task": task, "metric": metric, "mean": mean, "std": std, "seeds": len(values)}
                    | ({"dev_mean": mean_std(devs[key])[0]} if len(devs.get(key, ())) == len(values) else {}))
    return rows


def _model_facts(plan: EvalPlan, datasets: dict, sink: EventSink, token: CancelToken) -> list[dict[str, Any]]:
    """Parameters, bytes, speed (as ratios to the first model) and fidelity to the first model."""
    from engine.evaluate.intrinsic import representation_fidelity
    from engine.evaluate.speed import measure_speed, parameter_breakdown, ratios_to
    from engine.models.loading import load_model

    loaded = {ref.name: load_model(ref.path) for ref in plan.models}
    facts = []
    for ref in plan.models:
        params = parameter_breakdown(loaded[ref.name])
        facts.append({"name": ref.name, "path": str(ref.path), "params": params["total"],
                      "params_by_component": {k: params[k] for k in ("embeddings", "encoder", "head")},
                      "bytes": folder_bytes(ref.path)})
    token.raise_if_cancelled()
    if plan.config.speed:
        sink.emit(Log(message="measuring CPU latency and throughput (models interleaved)"))
        speed = measure_speed(loaded)
        ratios = ratios_to(speed, plan.models[0].name)
        for fact in facts:
            fact.update(speed[fact["name"]], **ratios[fact["name"]])
    token.raise_if_cancelled()
    if plan.config.intrinsic:
        texts = _probe_texts(datasets)
        teacher = loaded[plan.models[0].name]
        for fact in facts[1:]:
            fact["fidelity"] = representation_fidelity(teacher, loaded[fact["name"]], texts)
    return facts


def _probe_texts(datasets: dict, limit: int = 200) -> list[str]:
    """Held-out sentences for fidelity: the test texts of the evaluated tasks."""
    texts: list[str] = []
    for data in datasets.values():
        if isinstance(data, ParallelData):  # retrieval: the query side
            texts.extend(data.queries)
            continue
        for example in data.test:
            texts.append(example.text if hasattr(example, "text") else " ".join(example.words))
    return texts[:limit]
