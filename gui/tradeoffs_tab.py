"""Trade-offs tab: model size versus score for the teacher and every student of one or more runs.

Data come from run folders only: `manifest.json` (stage parameters and bytes, and the label-free
fidelity every stage records) and, when the run was evaluated, `eval/summary.json` (task scores,
exact sizes). Runs from before stages recorded fidelity show size against stage index.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.runfolder import RunFolder
from gui.runs_tab import list_runs
from gui.style import SERIES_COLOURS

NONE = "none"
FIDELITY = ("similarity_correlation", "sentence_cosine")
STAGE_QUALITY = ("fidelity", "masked_accuracy")  # recorded by every stage in the manifest, no labels needed
BYTES_PER_PARAM = 4  # fp32 estimate for a teacher whose folder size is not recorded
SIZES = {"params": ("parameters (millions, log scale)", "params (M)"), "mb": ("size on disk (MB, log scale)",
                                                                            "size (MB)")}


class SizeAxis(pg.AxisItem):
    """A log-scale axis (data are log10 of the size) labelled with plain numbers at 1, 2 and 5 × 10^k."""

    def __init__(self) -> None:
        super().__init__("bottom")
        self.setLogMode(True)

    def logTickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:
        out = []
        for v in values:
            real = 10 ** v
            mantissa = round(real / 10 ** math.floor(v + 1e-9), 6)
            out.append(f"{real:,.{max(0, -math.floor(v + 1e-9))}f}" if mantissa in (1, 2, 5) else "")
        return out


@dataclass
class ModelPoint:
    """One model of one run: its size and every score known for it."""

    run: str
    name: str
    stage: int  # 0 for the teacher
    params: int
    bytes: int
    bytes_estimated: bool = False
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)  # score key -> (mean, std)

    def size(self, unit: str) -> float:
        return self.params / 1e6 if unit == "params" else self.bytes / 1e6


def score_key(task: str, metric: str) -> str:
    return f"{task}:{metric}"


def score_label(key: str) -> str:
    if key == NONE:
        return "none (size per stage)"
    kind, metric = key.split(":", 1)
    if kind == "stage":
        return "fidelity to the teacher (layer CKA)" if metric == "fidelity" else metric.replace("_", " ")
    return f"fidelity: {metric.replace('_', ' ')}" if kind == "fidelity" else f"{kind}: {metric.replace('_', ' ')}"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_points(run_dir: Path) -> list[ModelPoint]:
    """The teacher and completed students of a run, with scores from `eval/summary.json` if present."""
    from engine.evaluate.report import HEADLINE

    folder = RunFolder(run_dir)
    run_dir, manifest = folder.path, folder.read_manifest()
    summary = _read_json(folder.eval_dir / "summary.json") or {}
    points: dict[str, ModelPoint] = {}
    teacher = manifest.get("teacher") or {}
    if teacher.get("params"):
        points["teacher"] = ModelPoint(run_dir.name, "teacher", 0, int(teacher["params"]),
                                       int(teacher["params"]) * BYTES_PER_PARAM, bytes_estimated=True)
        if any("fidelity" in (stage.get("quality") or {}) for stage in manifest.get("stages") or []):
            points["teacher"].scores[score_key("stage", "fidelity")] = (1.0, 0.0)
    for stage in folder.stage_models(manifest):
        if stage.params:
            points[stage.name] = ModelPoint(run_dir.name, stage.name, stage.index, stage.params, stage.bytes)
            for metric in STAGE_QUALITY:
                if stage.quality.get(metric) is not None:
                    points[stage.name].scores[score_key("stage", metric)] = (float(stage.quality[metric]), 0.0)
    reference = summary.get("teacher")
    for model in summary.get("models") or []:
        name = str(model.get("name", ""))
        point = points.get(name) or points.get("teacher" if name == reference else "")
        if point is None:
            point = points[name] = ModelPoint(run_dir.name, name, len(points), 0, 0)
        point.params = int(model.get("params") or point.params)
        if model.get("bytes"):
            point.bytes, point.bytes_estimated = int(model["bytes"]), False
        for metric in FIDELITY:
            value = (model.get("fidelity") or {}).get(metric)
            if value is not None:
                point.scores[score_key("fidelity", metric)] = (float(value), 0.0)
        if name == reference:
            for metric in FIDELITY:
                point.scores[score_key("fidelity", metric)] = (1.0, 0.0)
    for result in summary.get("results") or []:
        if HEADLINE.get(result.get("task")) != result.get("metric"):
            continue
        name = result.get("model")
        point = points.get(name) or (points.get("teacher") if name == reference else None)
        if point is not None:
            point.scores[score_key(result["task"], result["metric"])] = (float(result["mean"]),
                                                                          float(result.get("std") or 0.0))
    return sorted(points.values(), key=lambda p: p.stage)


def pareto_front(xs: list[float], ys: list[float]) -> list[int]:
    """Indices of the non-dominated points (smaller x and larger y are better), sorted by x.

    A point is dominated when another is at least as small and at least as good, and strictly
    better in one of the two.
    """
    front = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        dominated = any(xo <= x and yo >= y and (xo < x or yo > y) for xo, yo in zip(xs, ys, strict=True))
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (xs[i], -ys[i]))


def tip(point: ModelPoint, key: str) -> str:
    lines = [f"{point.run} · {point.name}", f"{point.params:,} parameters",
             f"{point.bytes / 1e6:,.1f} MB" + (" (estimated, fp32)" if point.bytes_estimated else "")]
    if key != NONE and key in point.scores:
        mean, std = point.scores[key]
        lines.append(f"{score_label(key)}: {_pct(mean)} ± {_pct(std)}")
    return "\n".join(lines)


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


class TradeoffsTab(QWidget):
    """Size (parameters or MB, log axis) versus a score, for every checked run; Pareto front and table."""

    def __init__(self, runs_dir: Path | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runs_dir = Path(runs_dir) if runs_dir is not None else Path("runs")
        self.extra_runs: list[Path] = []  # runs shown that are not in the runs folder
        self.checked: set[str] = set()
        self.points: dict[str, list[ModelPoint]] = {}  # run path -> points
        self.shown: list[ModelPoint] = []
        self.front: list[int] = []
        self.labels: list[pg.TextItem] = []

        self.run_list = QListWidget()
        self.run_list.setMinimumWidth(220)
        self.run_list.itemChanged.connect(self._run_toggled)
        add = QPushButton("Add run folder…")
        add.clicked.connect(self._add_run_dialog)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(QLabel("<b>Runs</b> (tick to compare)"))
        left_layout.addWidget(self.run_list, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(refresh)
        left_layout.addLayout(buttons)

        self.size_combo = QComboBox()
        self.size_combo.addItem("Parameters", "params")
        self.size_combo.addItem("Size on disk (MB)", "mb")
        self.size_combo.setToolTip("Horizontal axis: parameter count or model folder size (log scale)")
        self.score_combo = QComboBox()
        self.score_combo.setMinimumWidth(230)
        self.score_combo.setToolTip("Vertical axis: a task's headline test score (mean over seeds) or the "
                                    "representation fidelity to the teacher")
        self.size_combo.currentIndexChanged.connect(self.redraw)
        self.score_combo.currentIndexChanged.connect(self.redraw)
        self.note = QLabel()
        self.note.setStyleSheet("color: #6b7280;")
        controls = QHBoxLayout()
        controls.addWidget(QLabel("Size:"))
        controls.addWidget(self.size_combo)
        controls.addSpacing(16)
        controls.addWidget(QLabel("Score:"))
        controls.addWidget(self.score_combo)
        controls.addSpacing(16)
        controls.addWidget(self.note, 1)

        self.plot = pg.PlotWidget(background="w", axisItems={"bottom": SizeAxis()})
        self.plot.setMinimumHeight(260)
        item = self.plot.getPlotItem()
        item.showGrid(x=True, y=True, alpha=0.25)
        self.legend = item.addLegend(offset=(10, 10), labelTextSize="9pt", labelTextColor="#1f2937",
                       brush=pg.mkBrush(255, 255, 255, 210))
        for axis in ("bottom", "left"):
            item.getAxis(axis).setTextPen("#374151")
            item.getAxis(axis).setPen("#9ca3af")
            item.getAxis(axis).enableAutoSIPrefix(False)
        self.front_curve = pg.PlotDataItem(pen=pg.mkPen("#6b7280", width=1.5, style=Qt.PenStyle.DashLine),
)
        item.addItem(self.front_curve)
        self.scatters: list[pg.ScatterPlotItem] = []

        self.table = QTableWidget(0, 8)
        self.table.setHorizontalHeaderLabels(["Run", "Model", "Params (M)", "Size (MB)", "Score",
                                              "Drop vs teacher (pts)", "Params vs teacher", "Pareto"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setShowGrid(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)

        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(self.plot)
        right.addWidget(self.table)
        right.setStretchFactor(0, 3)
        right.setStretchFactor(1, 2)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(1, 1)
        split.setSizes([240, 1000])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 12, 12, 12)
        layout.addLayout(controls)
        layout.addWidget(split, 1)
        self.refresh()

    # ---- runs ----
    def set_runs_dir(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir)
        self.refresh()

    def show_run(self, run_dir: Path) -> None:
        """Tick `run_dir` (adding it to the list when it is elsewhere) and show it."""
        run_dir = Path(run_dir).resolve()
        if run_dir.parent != self.runs_dir.resolve() and run_dir not in self.extra_runs:
            self.extra_runs.append(run_dir)
        self.checked.add(str(run_dir))
        self.refresh()

    def refresh(self) -> None:
        """Re-read the run folders (manifests and eval summaries) and redraw."""
        runs = [r.path.resolve() for r in list_runs(self.runs_dir)]
        runs += [p for p in self.extra_runs if p not in runs and RunFolder(p).manifest_file.is_file()]
        self.points = {}
        for run in runs:
            points = load_points(run)
            if points:
                self.points[str(run)] = points
        if not self.checked & set(self.points):
            evaluated = [r for r in self.points if any(p.scores for p in self.points[r])]
            self.checked = {(evaluated or list(self.points) or [""])[0]}
        self.run_list.blockSignals(True)
        self.run_list.clear()
        for run, points in self.points.items():
            evaluated = any(p.scores for p in points)
            entry = QListWidgetItem(Path(run).name)
            entry.setData(Qt.ItemDataRole.UserRole, run)
            entry.setToolTip(run if evaluated else f"{run}\nnot evaluated yet: sizes only")
            if not evaluated:
                entry.setForeground(QColor("#6b7280"))
            entry.setFlags(entry.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            entry.setCheckState(Qt.CheckState.Checked if run in self.checked else Qt.CheckState.Unchecked)
            self.run_list.addItem(entry)
        self.run_list.blockSignals(False)
        self._fill_scores()
        self.redraw()

    def _run_toggled(self, entry: QListWidgetItem) -> None:
        run = entry.data(Qt.ItemDataRole.UserRole)
        if entry.checkState() == Qt.CheckState.Checked:
            self.checked.add(run)
        else:
            self.checked.discard(run)
        self._fill_scores()
        self.redraw()

    def _add_run_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a run folder", str(self.runs_dir))
        if folder:
            self.show_run(Path(folder))

    def _fill_scores(self) -> None:
        keys = list(dict.fromkeys(k for run in self.checked for p in self.points.get(run, []) for k in p.scores))
        keys.sort(key=lambda k: (k.split(":")[0] in ("fidelity", "stage"), k))  # task scores first
        current = self.score_combo.currentData()
        self.score_combo.blockSignals(True)
        self.score_combo.clear()
        for key in [*keys, NONE]:
            self.score_combo.addItem(score_label(key), key)
        index = self.score_combo.findData(current) if current in keys else 0
        self.score_combo.setCurrentIndex(max(index, 0))
        self.score_combo.blockSignals(False)

    # ---- drawing ----
    @property
    def unit(self) -> str:
        return self.size_combo.currentData()

    @property
    def score(self) -> str:
        return self.score_combo.currentData() or NONE

    def redraw(self) -> None:
        item = self.plot.getPlotItem()
        for scatter in self.scatters:
            item.removeItem(scatter)
        for label in self.labels:
            item.removeItem(label)
        self.scatters, self.labels, self.shown = [], [], []
        key, unit = self.score, self.unit
        missing = []
        for n, run in enumerate(self.points):
            points = [p for p in self.points[run] if p.size(unit) > 0 and (key == NONE or key in p.scores)]
            if run not in self.checked:
                continue
            if not points:
                missing.append(Path(run).name)
                continue
            colour = SERIES_COLOURS[n % len(SERIES_COLOURS)]
            spots = []
            for p in points:
                x, y = math.log10(p.size(unit)), self._y(p, key)
                teacher = p.stage == 0
                spots.append({"pos": (x, y), "data": len(self.shown), "symbol": "s" if teacher else "o",
                              "size": 14 if teacher else 11})
                label = pg.TextItem(p.name, color="#111827", anchor=(0, 1.1))
                label.setPos(x, y)
                item.addItem(label)
                self.labels.append(label)
                self.shown.append(p)
            scatter = pg.ScatterPlotItem(spots=spots, pen=pg.mkPen("#111827", width=1), brush=pg.mkBrush(colour),
                                         hoverable=True, hoverSize=16, hoverBrush=pg.mkBrush(colour),
                                         tip=lambda x, y, data: tip(self.shown[data], self.score),
                                         name=Path(run).name)
            item.addItem(scatter)
            self.scatters.append(scatter)
        xs = [math.log10(p.size(unit)) for p in self.shown]
        ys = [self._y(p, key) for p in self.shown]
        self.front = pareto_front(xs, ys) if key != NONE and self.shown else []
        self.front_curve.setData([xs[i] for i in self.front], [ys[i] for i in self.front])
        self.legend.removeItem(self.front_curve)
        if key != NONE:
            self.legend.addItem(self.front_curve, "Pareto front (smaller and better)")
        item.setLabel("bottom", SIZES[unit][0], color="#374151")
        item.setLabel("left", "stage (0 = teacher)" if key == NONE else f"{score_label(key)} (%)", color="#374151")
        item.setTitle("Size per stage" if key == NONE else f"Size versus {score_label(key)}", color="#111827",
                      size="10pt")
        item.getAxis("left").setTicks([[(i, str(i)) for i in range(8)]] if key == NONE else None)
        item.enableAutoRange()
        self._pad_view(xs, ys)
        if not self.points:
            note = "No run with finished stages in this folder yet."
        elif self.score_combo.count() == 1:
            note = "No evaluation in the ticked runs yet: sizes only (the Evaluation tab scores them)."
        else:
            note = f"Not scored on this: {', '.join(missing)}" if missing else ""
        self.note.setText(note)
        self._fill_table()

    def _pad_view(self, xs: list[float], ys: list[float]) -> None:
        """Leave room for the labels on the right and above the points."""
        if not xs:
            return
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        dx, dy = max(x1 - x0, 0.3), max(y1 - y0, 1.0)
        self.plot.getPlotItem().setRange(xRange=(x0 - 0.08 * dx, x1 + 0.25 * dx),
                                         yRange=(y0 - 0.1 * dy, y1 + 0.18 * dy), padding=0)

    @staticmethod
    def _y(point: ModelPoint, key: str) -> float:
        return float(point.stage) if key == NONE else 100 * point.scores[key][0]

    def _fill_table(self) -> None:
        key, front = self.score, set(self.front)
        teachers = {p.run: p for p in self.shown if p.stage == 0}
        self.table.setRowCount(len(self.shown))
        for row, p in enumerate(self.shown):
            teacher = teachers.get(p.run)
            score = drop = ""
            if key != NONE:
                mean, std = p.scores[key]
                score = f"{_pct(mean)} ± {_pct(std)}"
                if teacher is not None and teacher is not p and key in teacher.scores:
                    drop = f"{100 * (teacher.scores[key][0] - mean):+.2f}"
            ratio = f"{p.params / teacher.params:.1%}" if teacher is not None and teacher.params else ""
            size = f"{p.bytes / 1e6:,.1f}" + (" (est.)" if p.bytes_estimated else "")
            values = (p.run, p.name, f"{p.params / 1e6:,.2f}", size, score, drop, ratio, "✓" if row in front else "")
            for column, value in enumerate(values):
                cell = QTableWidgetItem(value)
                cell.setToolTip(tip(p, key))
                if column >= 2:
                    cell.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if row in front:
                    cell.setBackground(QColor("#ecfdf5"))
                self.table.setItem(row, column, cell)
