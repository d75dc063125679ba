"""Errors a user can act on. Each carries the CLI exit code it maps to."""

from __future__ import annotations


class MiniGlotError(Exception):
    """A failure explained in one line that says what to do."""

    exit_code = 1


class RecipeError(MiniGlotError):
    """The recipe is invalid; nothing was started.

    `path` names the setting at fault, e.g. `stages[2].hidden` (stages count from 1, as their folders
    do), `corpus.train`, or just `hidden` when a stage's settings were checked on their own.
    """

    exit_code = 2

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path

    def under(self, prefix: str) -> RecipeError:
        """The same error with its path inside `prefix` (`hidden` under `stages[2]`)."""
        return RecipeError(str(self), f"{prefix}.{self.path}" if self.path else prefix)

    @property
    def stage(self) -> int | None:
        """The 1-based stage the path points into, if any."""
        head = self.path.split(".", 1)[0]
        if head.startswith("stages[") and head.endswith("]") and head[7:-1].isdigit():
            return int(head[7:-1])
        return None

    @property
    def field(self) -> str:
        """The setting's own name (`hidden` of `stages[2].hidden`), or "" for a whole table."""
        tail = self.path.rsplit(".", 1)[-1]
        return "" if tail.startswith("stages[") else tail


class ModelError(MiniGlotError):
    """A model cannot be found, loaded or handled."""


class CorpusError(MiniGlotError):
    """A corpus cannot be read or is unusable."""


class TaskDataError(MiniGlotError):
    """Labelled task data (evaluation) cannot be read or is unusable."""


class VerificationError(MiniGlotError):
    """A written model does not reload or does not match its in-memory twin."""


class Cancelled(MiniGlotError):
    """The run was cancelled by the user."""

    exit_code = 130


class RunFolderError(MiniGlotError):
    """A run folder is missing, damaged, or being written by another process."""
