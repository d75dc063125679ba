"""Architecture shapes: parameter arithmetic per stage and recipe checks against the teacher.

Everything here is instant (no weights are loaded), so the CLI's `estimate` and the GUI's live
budget panel use it directly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from engine.errors import RecipeError
from engine.recipe import Recipe


@dataclass(frozen=True)
class Shape:
    """The sizes that determine an encoder's parameter count."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    vocab: int
    positions: int = 512
    token_types: int = 2
    pooler: bool = False
    mlm_head: bool = False
    special_tokens: int = 5

    @classmethod
    def from_config(cls, config: Any, mlm_head: bool, pooler: bool, special_tokens: int = 5) -> Shape:
        return cls(
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            ffn=config.intermediate_size,
            heads=config.num_attention_heads,
            vocab=config.vocab_size,
            positions=config.max_position_embeddings,
            token_types=config.type_vocab_size,
            pooler=pooler,
            mlm_head=mlm_head,
            special_tokens=special_tokens,
        )

    def params(self) -> dict[str, int]:
        """Parameters by component: embeddings, encoder, pooler+head (decoder tied to embeddings)."""
        h, f = self.hidden, self.ffn
        embeddings = (self.vocab + self.positions + self.token_types) * h + 2 * h
        layer = 4 * (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h
        head = (h * h + h if self.pooler else 0) + ((h * h + h) + 2 * h + self.vocab if self.mlm_head else 0)
        return {"embeddings": embeddings, "encoder": layer * self.layers, "head": head}

    @property
    def total_params(self) -> int:
        return sum(self.params().values())

    def describe(self) -> str:
        return (f"{self.layers} layers, hidden {self.hidden}, FFN {self.ffn}, {self.heads} heads, "
                f"vocabulary {self.vocab:,}")


def stage_shapes(recipe: Recipe, teacher: Shape) -> list[Shape]:
    """The teacher's shape followed by each stage's; checks every stage against its input (a RecipeError
    names the stage and carries the path of the setting at fault, e.g. `stages[3].hidden`)."""
    from engine.stages.registry import spec_for

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
