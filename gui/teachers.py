"""The teachers the Setup tab offers, each with the standard shape that makes the budget instant before
(or without) inspection: the engine's packaged offline models (`engine.models.packaged.PACKAGED_MODELS`)
and the paper's two hub teachers."""

from __future__ import annotations

from dataclasses import dataclass

from engine.models.packaged import PACKAGED_MODELS, PackagedModel
from engine.shapes import Shape


@dataclass(frozen=True)
class Teacher:
    """A teacher choice: its recipe source, the combo's label and tooltip, and its standard shape."""

    source: str
    label: str
    shape: Shape
    tip: str = ""


def _packaged(model: PackagedModel) -> Teacher:
    shape = Shape(**model.shape)
    return Teacher(f"packaged:{model.name}", f"{model.name} — packaged, offline ({shape.layers} layers × "
                   f"{shape.hidden})", shape, model.description)


TEACHERS = (
    *(_packaged(model) for model in PACKAGED_MODELS.values()),
    Teacher("hub:google-bert/bert-base-multilingual-cased", "mBERT base cased — Hugging Face hub",
            Shape(12, 768, 3072, 12, 119547, pooler=True)),
    Teacher("hub:FacebookAI/xlm-roberta-base", "XLM-R base — Hugging Face hub",
            Shape(12, 768, 3072, 12, 250002, positions=514, token_types=1, pooler=True)),
)


def known_shape(source: str) -> Shape | None:
    """The standard shape of a teacher in `TEACHERS`, else None."""
    return next((teacher.shape for teacher in TEACHERS if teacher.source == source), None)
