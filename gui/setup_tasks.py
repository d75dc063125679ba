"""What the Setup tab reads from disk: the FLORES-200 language table, preset recipes, and (in a work
thread) a teacher's shape and a corpus's statistics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.resources import LANGUAGES_FILE, presets
from engine.shapes import Shape
from gui.errors import message


def load_languages(path: Path = LANGUAGES_FILE) -> list[tuple[str, str]]:
    """FLORES-200 (code, English name) pairs."""
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        code, _, name = line.partition("\t")
        if code.strip():
            pairs.append((code.strip(), name.strip()))
    return pairs


def preset_files() -> list[tuple[str, str]]:
    """Every preset recipe's name with its header comment (the leading `#` lines)."""
    out = []
    for name, path in presets().items():
        header = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            header.append(line.lstrip("#").strip())
        out.append((name, " ".join(header)))
    return out


def keyed(key: Any, fn: Callable[..., Any], *args: Any) -> tuple[Any, Any, str]:
    """Run `fn` and return (key, result, error message) so stale answers can be recognised."""
    try:
        return key, fn(*args), ""
    except Exception as exc:  # every failure is shown inline, never raised in the thread
        return key, None, message(exc)


def inspect_teacher(source: str, allow_pickle: bool) -> tuple[str, Shape]:
    """(model type, shape) of a teacher source, read without loading weights (background thread)."""
    from engine.models.loading import inspect_folder, resolve_source

    info = inspect_folder(resolve_source(source), allow_pickle)
    return info.config.model_type, info.shape()


def count_corpus(train: tuple[str, ...], base_dir: str, teacher: str) -> tuple[Any, str]:
    """Corpus statistics with the teacher's tokenizer when it loads (background thread)."""
    from engine.data.corpus import corpus_stats, open_corpus

    lines = open_corpus(train, Path(base_dir))  # streamed: a corpus of any size is never held in memory
    tokenizer, note = None, ""
    try:
        from transformers import AutoTokenizer

        from engine.models.loading import resolve_source

        tokenizer = AutoTokenizer.from_pretrained(resolve_source(teacher), use_fast=True, trust_remote_code=False)
    except Exception as exc:  # tokens are optional: lines and characters still count
        note = f"no token count: {message(exc)}"
    return corpus_stats(lines, tokenizer), note
