"""What the Trade-offs tab plots: each model of a run with its size and scores, and the Pareto front.

Sizes and the label-free fidelity every stage records come from the run's manifest; task scores and
exact sizes from `eval/summary.json` when the run was evaluated. A run of a planned recipe also shows the
planner's tried candidates (their short trials' final fidelity), apart from the Pareto front.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gui.runs_model import RunSummary

NONE = "none"
FIDELITY = ("similarity_correlation", "sentence_cosine")
STAGE_QUALITY = ("fidelity", "masked_accuracy", "retrieval_top1")  # recorded by every stage in the manifest, no
# labels needed (retrieval: with `[corpus] parallel`, the teacher's own score in the manifest's teacher entry)
BYTES_PER_PARAM = 4  # fp32 estimate for a teacher whose folder size is not recorded


@dataclass
class ModelPoint:
    """One model of one run: its size and every score known for it."""

    run: str
    name: str
    stage: int  # 0 for the teacher
    params: int
    bytes: int
    bytes_estimated: bool = False
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)  # score key -> (mean, std)
    trial: bool = False  # a planner's candidate, scored after a short trial run: not comparable with finished models

    def size(self, unit: str) -> float:
        return self.params / 1e6 if unit == "params" else self.bytes / 1e6


def score_key(task: str, metric: str) -> str:
    return f"{task}:{metric}"


def score_label(key: str) -> str:
    if key == NONE:
        return "none (size per stage)"
    kind, metric = key.split(":", 1)
    if kind == "stage":
        return {"fidelity": "fidelity to the teacher (layer CKA)",
                "retrieval_top1": "retrieval top-1 (validation text → translations)"}.get(metric,
                                                                                          metric.replace("_", " "))
    return f"fidelity: {metric.replace('_', ' ')}" if kind == "fidelity" else f"{kind}: {metric.replace('_', ' ')}"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_points(run: RunSummary) -> list[ModelPoint]:
    """The teacher and completed students of a run, with scores from `eval/summary.json` if present."""
    from engine.evaluate.report import SUMMARY_FILE, is_headline

    name, manifest = run.path.name, run.manifest
    summary = _read_json(run.folder.eval_dir / SUMMARY_FILE) or {}
    points: dict[str, ModelPoint] = {}
    teacher = manifest.get("teacher") or {}
    if teacher.get("params"):
        points["teacher"] = ModelPoint(name, "teacher", 0, int(teacher["params"]),
                                       int(teacher["params"]) * BYTES_PER_PARAM, bytes_estimated=True)
        if any("fidelity" in (stage.get("quality") or {}) for stage in manifest.get("stages") or []):
            points["teacher"].scores[score_key("stage", "fidelity")] = (1.0, 0.0)
        if (teacher.get("retrieval") or {}).get("top1") is not None:
            points["teacher"].scores[score_key("stage", "retrieval_top1")] = (float(teacher["retrieval"]["top1"]), 0.0)
    for stage in run.stage_models():
        if stage.params:
            points[stage.name] = ModelPoint(name, stage.name, stage.index, stage.params, stage.bytes)
            for metric in STAGE_QUALITY:
                if stage.quality.get(metric) is not None:
                    points[stage.name].scores[score_key("stage", metric)] = (float(stage.quality[metric]), 0.0)
    reference = summary.get("teacher")
    for model in summary.get("models") or []:
        model_name = str(model.get("name", ""))
        point = points.get(model_name) or points.get("teacher" if model_name == reference else "")
        if point is None:
            point = points[model_name] = ModelPoint(name, model_name, len(points), 0, 0)
        point.params = int(model.get("params") or point.params)
        if model.get("bytes"):
            point.bytes, point.bytes_estimated = int(model["bytes"]), False
        for metric in FIDELITY:
            value = (model.get("fidelity") or {}).get(metric)
            if value is not None:
                point.scores[score_key("fidelity", metric)] = (float(value), 0.0)
        if model_name == reference:
            for metric in FIDELITY:
                point.scores[score_key("fidelity", metric)] = (1.0, 0.0)
    for result in summary.get("results") or []:
        if not is_headline(result.get("task", ""), result.get("metric")):
            continue
        model_name = result.get("model")
        point = points.get(model_name) or (points.get("teacher") if model_name == reference else None)
        if point is not None:
            point.scores[score_key(result["task"], result["metric"])] = (float(result["mean"]),
                                                                          float(result.get("std") or 0.0))
    return sorted(points.values(), key=lambda p: p.stage) + plan_points(name, manifest.get("plan") or {})


def plan_points(run: str, plan: dict[str, Any], by: str = "fidelity") -> list[ModelPoint]:
    """The tried candidates of a plan (`[plan]` of a planned recipe, or the planner's result) as trial points,
    scored by their trial's `by` ("fidelity" or "probe")."""
    return [ModelPoint(run, f"trial {row['name']}", -1, int(row["params"]), int(row["params"]) * BYTES_PER_PARAM,
                       bytes_estimated=True, trial=True, scores={score_key("stage", by): (float(row[by]), 0.0)})
            for row in plan.get("candidates") or [] if row.get(by) is not None]


def pareto_front(xs: list[float], ys: list[float]) -> list[int]:
    """Indices of the non-dominated points (smaller x and larger y are better), sorted by x.

    A point is dominated when another is at least as small and at least as good, and strictly
    better in one of the two.
    """
    front = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        dominated = any(xo <= x and yo >= y and (xo < x or yo > y) for xo, yo in zip(xs, ys, strict=True))
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (xs[i], -ys[i]))


def percent(value: float) -> str:
    return f"{100 * value:.2f}"


def tip(point: ModelPoint, key: str) -> str:
    lines = [f"{point.run} · {point.name}" + (" (planner's short trial run)" if point.trial else ""),
             f"{point.params:,} parameters",
             f"{point.bytes / 1e6:,.1f} MB" + (" (estimated, fp32)" if point.bytes_estimated else "")]
    if key != NONE and key in point.scores:
        mean, std = point.scores[key]
        lines.append(f"{score_label(key)}: {percent(mean)} ± {percent(std)}")
    return "\n".join(lines)
