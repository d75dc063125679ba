"""Errors a user can act on. Each carries the CLI exit code it maps to."""


class MiniGlotError(Exception):
    """A failure explained in one line that says what to do."""

    exit_code = 1


class RecipeError(MiniGlotError):
    """The recipe is invalid; nothing was started."""

    exit_code = 2


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
