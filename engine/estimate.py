"""A recipe's sizes and costs before any weights are loaded: each stage's shape, parameters and bytes, and
the peak memory and time it will need on a device. The CLI's `estimate` and the Setup tab's live budget use it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.configs import check
from engine.cost import PROCESS_BYTES, SENTENCE_TOKENS, CostInputs, Device, weights_bytes
from engine.errors import RecipeError
from engine.recipe import Recipe
from engine.shapes import Shape
from engine.stages.registry import spec_for


def stage_shapes(recipe: Recipe, teacher: Shape) -> list[Shape]:
    """The teacher's shape followed by each stage's; checks every stage against its input (a RecipeError
    names the stage and carries the path of the setting at fault, e.g. `stages[3].hidden`)."""
    check(recipe.corpus.max_length <= teacher.positions,
          f"corpus.max_length = {recipe.corpus.max_length} but the teacher reads at most {teacher.positions} tokens; "
          f"use {teacher.positions} or less", "corpus.max_length")
    shapes = [teacher]
    for i, stage in enumerate(recipe.stages, start=1):
        try:
            shapes.append(spec_for(stage.kind).shape(stage, shapes[-1]))
        except RecipeError as exc:
            raise RecipeError(f"stages[{i}] ({stage.kind}): {exc}", exc.under(f"stages[{i}]").path) from None
    return shapes


def estimate(recipe: Recipe, teacher: Shape) -> list[dict[str, Any]]:
    """Rows for the teacher and each stage: parameters by component, fp32/fp16 bytes, % of teacher."""
    shapes = stage_shapes(recipe, teacher)
    names = ["teacher", *[f"{i:02d}-{s.kind}" for i, s in enumerate(recipe.stages, start=1)]]
    base = shapes[0].total_params
    rows = []
    for name, shape in zip(names, shapes, strict=True):
        total = shape.total_params
        rows.append({
            "name": name,
            "shape": dataclasses.asdict(shape),
            "params": shape.params(),
            "total_params": total,
            "fp32_bytes": 4 * total,
            "fp16_bytes": 2 * total,
            "percent_of_teacher": 100.0 * total / base,
        })
    return rows


def stage_costs(recipe: Recipe, teacher: Shape, device: Device,
                sentence_tokens: int = SENTENCE_TOKENS) -> list[dict[str, Any]]:
    """One row per stage: `peak_bytes`, `fits`, `seconds`, and what they assume."""
    shapes = stage_shapes(recipe, teacher)
    max_length = recipe.corpus.max_length
    rows = []
    for i, stage in enumerate(recipe.stages, start=1):
        source, target = shapes[i - 1], shapes[i]
        inputs = CostInputs(teacher, source, target, max_length, min(sentence_tokens, max_length), device)
        cost = spec_for(stage.kind).cost(stage, inputs)
        alive = (teacher, source, target) if i > 1 else (teacher, target)
        peak = weights_bytes(*alive) + cost.bytes + PROCESS_BYTES
        if recipe.run.verify:
            peak += weights_bytes(target)  # the reload process holds one more copy
        rows.append({"name": f"{i:02d}-{stage.kind}", "peak_bytes": int(peak), "fits": peak <= device.free_bytes,
                     "seconds": cost.seconds})
    return rows
