"""Line-aligned texts in two languages (FLORES-200 style) for the retrieval task: a folder with two text
files whose line i are translations of each other. The first file in name order is the query side, the
second the index. Pairs where either line is blank are left out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from engine.errors import TaskDataError
from engine.tasks import task as task_kind


@dataclass(frozen=True)
class ParallelData:
    """Query texts and their translations in the index, pair by pair, with the files they came from."""

    task: str
    queries: tuple[str, ...]
    index: tuple[str, ...]
    files: tuple[str, str]
    source: str

    def fingerprint(self) -> str:
        """A hash of the task and every pair: equal exactly when the data are."""
        return hashlib.sha256(json.dumps([self.task, self.queries, self.index], ensure_ascii=False).encode()
                              ).hexdigest()


def load_parallel(task: str, data: str | Path) -> ParallelData:
    """The pairs in the folder `data` (see the module docstring); one-line errors for what is not such a folder."""
    folder = Path(data).expanduser()
    suffixes = task_kind(task).formats
    if not folder.is_dir():
        raise TaskDataError(f"{folder}: {task} reads a folder with two line-aligned text files "
                            f"({', '.join(suffixes)}), one per language")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in suffixes)
    if len(files) != 2:
        raise TaskDataError(f"{folder}: {task} needs exactly two line-aligned text files ({', '.join(suffixes)}), "
                            f"found {len(files)}{': ' + ', '.join(p.name for p in files) if files else ''}")
    return read_pairs(files[0], files[1], task, str(data))


def read_pairs(queries: Path, index: Path, task: str = "retrieval", source: str = "") -> ParallelData:
    """The pairs of two line-aligned files (`queries` line i translates to `index` line i)."""
    sides = [_lines(Path(path)) for path in (queries, index)]
    if len(sides[0]) != len(sides[1]):
        raise TaskDataError(f"{queries} has {len(sides[0])} lines but {index} {len(sides[1])}; the two files "
                            "must be line-aligned translations")
    pairs = [(q, i) for q, i in zip(*sides, strict=True) if q.strip() and i.strip()]
    if len(pairs) < 2:
        raise TaskDataError(f"{queries} and {index}: fewer than two non-empty line pairs; nothing to retrieve")
    return ParallelData(task, tuple(q for q, _ in pairs), tuple(i for _, i in pairs), (str(queries), str(index)),
                        source or str(queries))


def _lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise TaskDataError(f"{path} is binary, not text")
    try:
        return raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise TaskDataError(f"{path} is not UTF-8 text (byte {exc.start})") from None
