"""The files MiniGlot ships — preset recipes, the icon, samples, the FLORES-200 language table — and `preset:` names.

The repository's `resources/` folder installs as the package `miniglot_resources` (pyproject.toml), so
`importlib.resources` finds it in a checkout, an installed wheel and the PyInstaller bundle alike.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from engine.errors import RecipeError
from engine.recipe import Recipe

PACKAGE = "miniglot_resources"
PRESET = "preset:"


def resource_path(*parts: str) -> Path:
    """`parts` inside the resources, as a path on disk (they are installed as plain files, never zipped)."""
    return Path(str(files(PACKAGE))).joinpath(*parts)


RECIPES_DIR = resource_path("recipes")
DEFAULT_RECIPE = RECIPES_DIR / "offline-default.toml"
LANGUAGES_FILE = resource_path("flores200_languages.tsv")
ICON = resource_path("icons", "miniglot.svg")
SAMPLES = resource_path("samples")


def presets() -> dict[str, Path]:
    """Every preset recipe by name (its file name without `.toml`), sorted by name."""
    return {path.stem: path for path in sorted(RECIPES_DIR.glob("*.toml"))}


def load_recipe(argument: str | Path) -> Recipe:
    """The recipe a command-line argument names: a .toml/.json file, or `preset:<name>` for a preset recipe,
    whose relative paths (its runs folder) then resolve in the current folder, not inside the installation."""
    text = str(argument)
    if not text.startswith(PRESET):
        return Recipe.load(argument)
    shipped = presets()
    name = text.removeprefix(PRESET)
    if name not in shipped:
        raise RecipeError(f"no preset recipe named {name!r}; the presets are "
                          + ", ".join(PRESET + preset for preset in shipped))
    return Recipe.from_toml(shipped[name].read_text(encoding="utf-8"), Path.cwd())
