"""How the GUI words an exception: one line a user can act on, and the traceback behind "Show Details…"."""

from __future__ import annotations

import traceback


def message(exc: BaseException) -> str:
    """The engine's own message for its errors; otherwise the exception's type and text."""
    text = str(exc)
    return text if text and type(exc).__module__.startswith("engine") else f"{type(exc).__name__}: {text}"


def details(exc: BaseException) -> str:
    """The exception's formatted traceback (with its causes), as Python prints it."""
    return "".join(traceback.format_exception(exc))
