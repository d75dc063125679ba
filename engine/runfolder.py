"""The run folder contract (DESIGN.md §2): layout, atomic writes and the manifest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RECIPE = "recipe.toml"
MANIFEST = "manifest.json"
EVENTS = "events.jsonl"


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file under a temporary name in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: Path):
    """Yield a temporary folder next to `path`; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def folder_fingerprint(path: Path) -> str:
    """A hash of every file's relative name and bytes under `path` (a model folder's identity)."""
    digest = hashlib.sha256()
    path = Path(path)
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\x00")
        with file.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        digest.update(b"\x00")
    return digest.hexdigest()


def stage_dir(run_dir: Path, index: int, kind: str) -> Path:
    return Path(run_dir) / "stages" / f"{index:02d}-{kind}"


def new_run_dir(runs_dir: Path, name: str) -> Path:
    """A fresh, uniquely named run folder: `<date>-<time>-<name>`."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y%m%d-%H%M%S") + (f"-{name}" if name else "")
    for n in range(1000):
        candidate = runs_dir / (stem if n == 0 else f"{stem}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a run folder under {runs_dir}")


class Manifest:
    """`manifest.json`: status, teacher, stages with lineage, sizes and metrics; saved atomically."""

    def __init__(self, run_dir: Path, data: dict[str, Any] | None = None) -> None:
        self.path = Path(run_dir) / MANIFEST
        self.data: dict[str, Any] = data if data is not None else {"status": "running", "stages": []}
        self.writable = True  # False on the processes of a distributed run other than rank 0

    @classmethod
    def load(cls, run_dir: Path) -> Manifest:
        path = Path(run_dir) / MANIFEST
        return cls(run_dir, json.loads(path.read_text(encoding="utf-8")))

    def save(self) -> None:
        if not self.writable:
            return
        atomic_write_text(self.path, json.dumps(self.data, indent=2, ensure_ascii=False))

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def stage(self, index: int) -> dict[str, Any]:
        return self.data["stages"][index - 1]
