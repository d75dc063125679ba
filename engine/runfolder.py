"""The run folder contract (DESIGN.md §2): layout, atomic writes, the manifest and the writer's lock.

`RunFolder` is the one place that knows a run folder's layout: the pipeline, the CLI, evaluation and
every GUI tab read manifests, stage folders and lock owners through it. Files are written under a
temporary name and renamed into place, with the permissions the process's umask gives ordinary files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import RunFolderError

RECIPE = "recipe.toml"
MANIFEST = "manifest.json"
EVENTS = "events.jsonl"
EVAL = "eval"  # the evaluation's results (engine.evaluate.runner): per task, model and seed, and the summary
LOCK = ".lock"  # held (flock) by the one process writing the run, then removed; the OS releases it if that process dies
LOCK_OWNER = ".lock.json"  # who holds it: pid, host, since
TASKS = "tasks"  # the run's task models (engine.taskmodel): tasks/<task>/model, tasks/<task>/teacher
LEFTOVER_PATTERNS = (".*.tmp", ".*.old")  # a killed writer's temporary files and folders
TASK_LEFTOVERS = "*.partial*"  # a task model (or its cached teacher predictions) a killed writer left unfinished
MODEL_CARD = "README.md"  # a model folder's card (engine.modelcard): not part of the model's identity
TASK_FILE = "miniglot_task.json"  # a task model folder's facts (engine.taskmodel)
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)  # no space left, quota exceeded


def cache_root() -> Path:
    """Where MiniGlot keeps what it can rebuild (converted packaged models, cached corpora):
    `$MINIGLOT_CACHE`, else `~/.cache/miniglot`."""
    env = os.environ.get("MINIGLOT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "miniglot"


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _process_umask()  # read once at import: os.umask can only be read by setting it


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file under a temporary name in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes it private (0600)
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
        _umask_permissions(tmp)
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


class DiskFull(OSError):
    """A save that found the disk full, in one line: the folder, the space it needs, what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)


@contextmanager
def saving(folder: Path, needs: int):
    """Raise DiskFull, naming `folder` and the `needs` bytes its save takes, when a write inside fails on a full disk.

    Libraries tell a full disk in their own words (safetensors: `SafetensorError … No space left on device`;
    torch.save: `unexpected pos …`), so a failed write that leaves less than `needs` bytes free is one too.
    """
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        free = free_bytes(folder)
        told = getattr(exc, "errno", None) in FULL_DISK or any(os.strerror(e) in str(exc) for e in FULL_DISK)
        if not (told or free < needs):
            raise
        raise DiskFull(f"the disk is full: saving {folder} needs about {needs / 1e6:,.1f} MB "
                       f"({free / 1e6:,.1f} MB free); free some space") from exc


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds `path` (or its nearest existing parent folder)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _umask_permissions(folder: Path) -> None:
    """Give `folder` and everything in it the umask's permissions: mkdtemp makes folders private (0700) and
    safetensors writes its files 0600, which would keep others on a shared disk from loading a student."""
    os.chmod(folder, 0o777 & ~UMASK)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~UMASK)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def folder_fingerprint(path: Path) -> str:
    """A hash of every file's relative name and bytes under `path` (a model folder's identity).

    The model card (`README.md`, and its temporary file while it is rewritten) is left out: a card updated
    with new scores leaves the model, and the results cached for it, as they are.
    """
    digest = hashlib.sha256()
    path = Path(path)
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not _is_card(p, path)):
        digest.update(str(file.relative_to(path)).encode() + b"\x00")
        with file.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        digest.update(b"\x00")
    return digest.hexdigest()


def _is_card(file: Path, folder: Path) -> bool:
    """Whether `file` is the model card of `folder` or the temporary file `atomic_write_text` renames onto it."""
    name = file.name
    temporary = name.startswith(f".{MODEL_CARD}.") and name.endswith(".tmp")
    return file.parent == folder and (name == MODEL_CARD or temporary)


def stage_dir(run_dir: Path, index: int, kind: str) -> Path:
    return Path(run_dir) / "stages" / f"{index:02d}-{kind}"


class Manifest:
    """`manifest.json`: status, teacher, stages with lineage, sizes and metrics, task models; saved atomically."""

    def __init__(self, run_dir: Path, data: dict[str, Any] | None = None) -> None:
        self.path = Path(run_dir) / MANIFEST
        self.data: dict[str, Any] = data if data is not None else {"status": "running", "stages": []}
        self.writable = True  # False on the processes of a distributed run other than rank 0

    @classmethod
    def load(cls, run_dir: Path) -> Manifest:
        """The manifest of `run_dir`; RunFolderError when it is missing or damaged."""
        path = Path(run_dir) / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunFolderError(f"{run_dir} has no {MANIFEST}: the run never started; start it again from "
                                 f"its recipe ({Path(run_dir) / RECIPE})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunFolderError(f"{path} is damaged ({exc}); the run cannot be resumed: start it again from "
                                 f"its recipe ({Path(run_dir) / RECIPE})") from None
        if not isinstance(data, dict) or not isinstance(data.get("stages", []), list):
            raise RunFolderError(f"{path} is not a MiniGlot manifest; start the run again from its recipe")
        return cls(run_dir, data)

    def save(self) -> None:
        if not self.writable:
            return
        atomic_write_text(self.path, json.dumps(self.data, indent=2, ensure_ascii=False))

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def stage(self, index: int) -> dict[str, Any]:
        return self.data["stages"][index - 1]

    def stage_status(self, index: int) -> str:
        """pending | running | completed | failed | cancelled (`pending` for a stage not recorded yet)."""
        stages = self.data.get("stages") or []
        return stages[index - 1].get("status", "pending") if 0 < index <= len(stages) else "pending"

    def set_stage(self, index: int, **fields: Any) -> None:
        """Record `fields` (status, model_dir, params, …) for stage `index` (1-based) and save."""
        stages = self.data.get("stages") or []
        if 0 < index <= len(stages):
            stages[index - 1].update(fields)
        self.save()

    def task_model(self, task: str) -> dict[str, Any]:
        """The entry of the task model for `task` (empty when not recorded)."""
        return next((entry for entry in self.data.get("task_models") or [] if entry.get("task") == task), {})

    def set_task_model(self, task: str, **fields: Any) -> None:
        """Record `fields` (status, model_dir, test, …) for the task model of `task` and save."""
        self.task_model(task).update(fields)
        self.save()


@dataclass(frozen=True)
class StageModel:
    """A completed stage's model folder with what the manifest records about it."""

    index: int
    kind: str
    path: Path
    params: int = 0
    bytes: int = 0
    quality: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.index:02d}-{self.kind}"


class RunFolder:
    """A run folder (DESIGN.md §2) at an absolute path: its files, its stage models and its lock."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser().resolve()

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @classmethod
    def create(cls, runs_dir: Path | str, name: str) -> RunFolder:
        """A fresh, uniquely named run folder `<date>-<time>-<name>` under `runs_dir`."""
        runs_dir = Path(runs_dir).expanduser().resolve()
        if runs_dir.exists() and not runs_dir.is_dir():
            raise RunFolderError(f"the runs folder {runs_dir} is a file; choose a folder for runs")
        try:
            runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"cannot create the runs folder {runs_dir}: {exc.strerror or exc}; "
                                 "choose a folder you can write to") from None
        stem = time.strftime("%Y%m%d-%H%M%S") + (f"-{name}" if name else "")
        for n in range(1000):
            candidate = runs_dir / (stem if n == 0 else f"{stem}-{n}")
            try:
                candidate.mkdir()
                return cls(candidate)
            except FileExistsError:
                continue
            except OSError as exc:
                raise RunFolderError(f"cannot create a run folder in {runs_dir}: {exc.strerror or exc}") from None
        raise RunFolderError(f"cannot create a run folder under {runs_dir}: 1000 runs named {stem} exist")

    @classmethod
    def open(cls, path: Path | str) -> RunFolder:
        """An existing run folder; RunFolderError when `path` is not one."""
        folder = cls(path)
        if not folder.path.is_dir():
            raise RunFolderError(f"run folder not found: {folder.path}")
        if not folder.recipe_file.is_file():
            raise RunFolderError(f"{folder.path} is not a MiniGlot run folder (no {RECIPE})")
        return folder

    @property
    def recipe_file(self) -> Path:
        return self.path / RECIPE

    @property
    def manifest_file(self) -> Path:
        return self.path / MANIFEST

    @property
    def events_file(self) -> Path:
        return self.path / EVENTS

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL

    def is_run(self) -> bool:
        """Whether the folder has a manifest or an event log (a run, possibly still starting)."""
        return self.manifest_file.is_file() or self.events_file.is_file()

    def stage_dir(self, index: int, kind: str) -> Path:
        return stage_dir(self.path, index, kind)

    def task_dir(self, task: str) -> Path:
        """Where the run's task model for `task` lives (`model/`, `teacher/`, cached teacher predictions)."""
        return self.path / TASKS / task

    def manifest(self) -> Manifest:
        """The manifest, for writing; RunFolderError when it is missing or damaged."""
        return Manifest.load(self.path)

    def read_manifest(self) -> dict[str, Any]:
        """The manifest's data for display: empty when missing or unreadable (a view never fails on it)."""
        try:
            data = json.loads(self.manifest_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def status(self) -> str:
        return str(self.read_manifest().get("status", ""))

    def stage_models(self, manifest: dict[str, Any] | None = None) -> list[StageModel]:
        """Every completed stage that has a model folder, in order."""
        data = self.read_manifest() if manifest is None else manifest
        models = []
        for index, stage in enumerate(data.get("stages") or [], start=1):
            if stage.get("status") == "completed" and stage.get("model_dir"):
                models.append(StageModel(index, str(stage.get("kind", "stage")), self.path / stage["model_dir"],
                                         int(stage.get("params") or 0), int(stage.get("bytes") or 0),
                                         dict(stage.get("quality") or {})))
        return models

    def model_folders(self) -> list[Path]:
        """Every model folder written in the run (stages' `model/`, then task models'), whatever the manifest says."""
        return sorted(p.parent for p in (*self.path.glob("stages/*/model/config.json"),
                                         *self.path.glob(f"{TASKS}/*/model/config.json")))

    def lock(self) -> RunLock:
        return RunLock(self.path)

    def remove_leftovers(self) -> list[Path]:
        """Delete what killed writers left (temporary files and folders, replaced models); call under the lock."""
        found = [p for pattern in LEFTOVER_PATTERNS
                 for p in (*self.path.glob(pattern), *self.path.glob(f"stages/*/{pattern}"),
                           *self.path.glob(f"stages/*/checkpoint/{pattern}"), *self.path.glob(f"{TASKS}/*/{pattern}"))]
        found += self.path.glob(f"{TASKS}/*/{TASK_LEFTOVERS}")
        for path in found:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return found


class RunLock:
    """The right to write one run folder, held by one process at a time (a context manager).

    An OS file lock (released by the kernel when the holder dies, even by SIGKILL), with the holder's
    pid and host beside it so a refused writer can say who is writing. Both files go when the holder
    lets go: the lock file is unlinked while still held, so a writer that opened it meanwhile finds an
    unlinked file and is refused (filelock checks), and the next one creates a fresh file.
    """

    def __init__(self, run_dir: Path) -> None:
        from filelock import FileLock

        self.run_dir = Path(run_dir)
        self._lock = FileLock(self.run_dir / LOCK, timeout=0)

    def __enter__(self) -> RunLock:
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout:
            raise RunFolderError(f"{self.run_dir} is being written by {self.owner()}; wait for that run to "
                                 "end (or cancel it), then resume") from None
        atomic_write_text(self.run_dir / LOCK_OWNER, json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        return self

    def __exit__(self, *exc: object) -> None:
        (self.run_dir / LOCK_OWNER).unlink(missing_ok=True)
        (self.run_dir / LOCK).unlink(missing_ok=True)
        self._lock.release()

    def owner(self) -> str:
        """'pid N on HOST since T', as recorded by the holder."""
        try:
            owner = json.loads((self.run_dir / LOCK_OWNER).read_text(encoding="utf-8"))
            return f"pid {owner['pid']} on {owner['host']} (since {owner['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process (it has not recorded its pid yet)"
