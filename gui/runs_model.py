"""The runs the tabs show: every run folder under the runs folder, each manifest read once per refresh.

`RunsModel` is shared by the main window and the Runs, Trade-offs and Evaluation tabs. It re-reads
the folder when a file-system watcher sees a run appear, disappear or rewrite its manifest (atomic
writes rename a file in the run folder; appending to `events.jsonl` does not count), debounced,
and tells the tabs through `changed`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QFileSystemWatcher, QObject, QTimer, Signal

from engine.runfolder import RunFolder, StageModel

REFRESH_DELAY_MS = 500  # a manifest write is a burst of changes (temporary file, rename): read once after it


@dataclass(frozen=True)
class RunSummary:
    """One run folder: its manifest as read, and what the Runs table lists about it."""

    folder: RunFolder
    manifest: dict[str, Any] = field(compare=False, repr=False)
    status: str
    started: float
    teacher: str
    language: str
    stages: str
    final_params: int | None
    final_bytes: int | None
    teacher_params: int | None

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def compression(self) -> float | None:
        if self.final_params and self.teacher_params:
            return 1 - self.final_params / self.teacher_params
        return None

    def stage_models(self) -> list[StageModel]:
        return self.folder.stage_models(self.manifest)


def summarise(run_dir: Path) -> RunSummary | None:
    """One run folder read from its manifest; None when it is not a run folder."""
    folder = RunFolder(run_dir)
    manifest = folder.read_manifest()
    if not manifest:
        return None
    done = [s for s in folder.stage_models(manifest) if s.params]
    teacher = manifest.get("teacher") or {}
    return RunSummary(
        folder=folder,
        manifest=manifest,
        status=str(manifest.get("status", "?")),
        started=_started(folder),
        teacher=str(teacher.get("source", "")),
        language=str(manifest.get("language", "")),
        stages=" → ".join(str(s.get("kind", "?")) for s in manifest.get("stages") or []),
        final_params=done[-1].params if done else None,
        final_bytes=done[-1].bytes or None if done else None,
        teacher_params=teacher.get("params"),
    )


def list_runs(runs_dir: Path) -> list[RunSummary]:
    """Every run folder under `runs_dir`, newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = [summarise(p) for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted((s for s in found if s is not None), key=lambda s: s.started, reverse=True)


def newest_run(runs_dir: Path) -> Path | None:
    runs = list_runs(runs_dir)
    return runs[0].path if runs else None


def _started(folder: RunFolder) -> float:
    """The run's start time: from the folder name (`YYYYmmdd-HHMMSS-…`), else the recipe's mtime."""
    try:
        return time.mktime(time.strptime(folder.path.name[:15], "%Y%m%d-%H%M%S"))
    except ValueError:
        return (folder.recipe_file if folder.recipe_file.exists() else folder.path).stat().st_mtime


class RunsModel(QObject):
    """The runs of one runs folder, plus any other run folder a tab asked about; `changed` after a re-read."""

    changed = Signal()
    runs_dir_changed = Signal(object)

    def __init__(self, runs_dir: Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.runs_dir = Path(runs_dir)
        self.runs: list[RunSummary] = []  # newest first
        self._elsewhere: dict[Path, RunSummary | None] = {}  # run folders outside the runs folder
        self._watcher = QFileSystemWatcher(self)
        self._watcher.directoryChanged.connect(self._schedule)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(REFRESH_DELAY_MS)
        self._debounce.timeout.connect(self.refresh)
        self.refresh()

    def set_runs_dir(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir)
        self.refresh()
        self.runs_dir_changed.emit(self.runs_dir)

    def refresh(self) -> None:
        """Re-read every run folder's manifest, then emit `changed`."""
        self._debounce.stop()
        self.runs = list_runs(self.runs_dir)
        here = self.runs_dir.resolve()
        self._elsewhere = {path: summarise(path) for path in self._elsewhere if path.parent != here}
        self._watch()
        self.changed.emit()

    def summary(self, run_dir: Path) -> RunSummary | None:
        """The run at `run_dir` (in the runs folder or not); None when it is not a run folder.

        A folder not seen yet is read now: one elsewhere is kept beside the runs; one in the runs folder
        (a run that started since the last refresh) means the runs folder is read again.
        """
        path = RunFolder(run_dir).path
        if path.parent != self.runs_dir.resolve():
            if path not in self._elsewhere:
                self._elsewhere[path] = summarise(path)
                self._watch()
            return self._elsewhere[path]
        found = next((run for run in self.runs if run.path == path), None)
        if found is None and RunFolder(path).manifest_file.is_file():
            self.refresh()
            found = next((run for run in self.runs if run.path == path), None)
        return found

    def with_extra(self, extra: list[Path]) -> list[RunSummary]:
        """The runs folder's runs, then those of the folders in `extra` that are runs and not among them."""
        listed = list(self.runs)
        for path in extra:
            run = self.summary(path)
            if run is not None and all(run.path != other.path for other in listed):
                listed.append(run)
        return listed

    def _watch(self) -> None:
        wanted = {str(self.runs_dir.resolve()), *(str(run.path) for run in self.runs),
                  *(str(path) for path in self._elsewhere)}
        wanted = {path for path in wanted if Path(path).is_dir()}
        watched = set(self._watcher.directories())
        if watched - wanted:
            self._watcher.removePaths(sorted(watched - wanted))
        if wanted - watched:
            self._watcher.addPaths(sorted(wanted - watched))

    def _schedule(self, _path: str) -> None:
        self._debounce.start()
