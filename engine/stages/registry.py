"""The stage registry: everything the pipeline, `shapes`, `cost`, the CLI and the Setup tab know of a stage.

A stage is one module that defines its frozen config dataclass and a `SPEC = StageSpec(...)`:
its shape arithmetic, cost model, form fields and runner. The built-in stages are listed in
`_builtin_specs`; `register` adds another (a plugin, or a test's toy stage). Stage modules import
torch and transformers only inside their runner, so reading the registry stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.errors import RecipeError

if TYPE_CHECKING:
    from engine.cost import CostInputs, StageCost
    from engine.recipe import Stage
    from engine.shapes import Shape
    from engine.stages.base import StageContext, StageOutput
    from engine.stages.fields import FieldSpec


@dataclass(frozen=True)
class StageSpec:
    """One kind of stage.

    `shape(config, shape)` returns the shape after the stage or raises RecipeError with the field's
    name as its path; `cost(config, inputs)` says what the stage holds and how long it takes;
    `run(ctx)` does the work. `keeps_teacher`: the output is still the run's teacher (same depth and
    width), so later stages distil from it. `reference`: the output reproduces the teacher as
    faithfully as the run can, so a later repair (shrink) distils from it. `teacher_first`: the stage
    works on the teacher itself and so may follow only `keeps_teacher` stages, once. `describe(config)`
    says the stage's settings in a few words and `tag` names what it does, for the model card.
    """

    kind: str
    config: type[Stage]
    title: str
    tip: str
    fields: tuple[FieldSpec, ...]
    shape: Callable[[Any, Shape], Shape]
    cost: Callable[[Any, CostInputs], StageCost]
    run: Callable[[StageContext], StageOutput]
    template: Stage  # the settings a stage starts from when a user switches it on
    describe: Callable[[Any], str] = lambda config: ""  # the settings in a few words (none by default)
    tag: str = ""  # the model card's tag for what the stage does (default: its kind)
    keeps_teacher: bool = False
    reference: bool = False
    teacher_first: bool = False


    @property
    def trains(self) -> bool:
        """Whether the stage trains with an optimiser (its config has `recipe.Training`'s settings)."""
        from engine.recipe import Training

        return issubclass(self.config, Training)


_SPECS: dict[str, StageSpec] = {}


def _builtin_specs() -> tuple[StageSpec, ...]:
    from engine.stages import adapt, distill, prune, shrink, trim_vocab

    # the Setup tab's order: trimming first is lossless and makes every later step cheaper
    return tuple(module.SPEC for module in (trim_vocab, adapt, distill, prune, shrink))


def _specs() -> dict[str, StageSpec]:
    if not _SPECS:
        _SPECS.update((spec.kind, spec) for spec in _builtin_specs())
    return _SPECS


def register(spec: StageSpec) -> None:
    """Add (or replace) a kind of stage; recipes, estimates, runs and the Setup tab then know it."""
    if spec.config.kind != spec.kind:
        raise ValueError(f"{spec.config.__name__}.kind is {spec.config.kind!r}, not {spec.kind!r}")
    _specs()[spec.kind] = spec


def unregister(kind: str) -> None:
    _specs().pop(kind, None)


def specs() -> tuple[StageSpec, ...]:
    """Every registered stage, built-in ones first."""
    return tuple(_specs().values())


def kinds() -> tuple[str, ...]:
    return tuple(_specs())


def spec_for(kind: str, path: str = "kind") -> StageSpec:
    try:
        return _specs()[kind]
    except (KeyError, TypeError):
        raise RecipeError(f"{path} = {kind!r}: choose one of {', '.join(_specs())}", path) from None
