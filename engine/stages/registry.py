"""The stage registry: every kind of stage the pipeline, estimates, the CLI and the Setup tab know.

A stage is one module that defines its frozen config dataclass and a `SPEC = StageSpec(...)`
(`engine.stages.spec`): its shape arithmetic, cost model, form fields and runner. The built-in stages
are listed in `BUILTIN`; `register` adds another (a plugin, or a test's toy stage). Stage modules import
torch and transformers only inside their runner, so reading the registry stays instant.
"""

from __future__ import annotations

from engine.errors import RecipeError
from engine.stages import adapt, distill, prune, shrink, trim_vocab
from engine.stages.spec import StageSpec

# the Setup tab's order: trimming first is lossless and makes every later step cheaper
BUILTIN = tuple(module.SPEC for module in (trim_vocab, adapt, distill, prune, shrink))
_SPECS: dict[str, StageSpec] = {spec.kind: spec for spec in BUILTIN}


def register(spec: StageSpec) -> None:
    """Add (or replace) a kind of stage; recipes, estimates, runs and the Setup tab then know it."""
    if spec.config.kind != spec.kind:
        raise ValueError(f"{spec.config.__name__}.kind is {spec.config.kind!r}, not {spec.kind!r}")
    _SPECS[spec.kind] = spec


def specs() -> tuple[StageSpec, ...]:
    """Every registered stage, built-in ones first."""
    return tuple(_SPECS.values())


def kinds() -> tuple[str, ...]:
    return tuple(_SPECS)


def spec_for(kind: str, path: str = "kind") -> StageSpec:
    try:
        return _SPECS[kind]
    except (KeyError, TypeError):
        raise RecipeError(f"{path} = {kind!r}: choose one of {', '.join(_SPECS)}", path) from None
