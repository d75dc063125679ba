"""Setup → Plan…: fit the recipe to a size target with `engine.planner` in the background (trials with progress
and ETA, the candidate table, the tried candidates on a Trade-offs chart); the winning recipe fills the Setup tab."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.configs import EVAL_TASKS
from engine.events import Event, Log, Progress
from engine.recipe import Recipe
from engine.shapes import Shape
from gui.durations import format_duration
from gui.errors import details, message
from gui.layouts import splitter
from gui.style import SERIES_COLOURS, show_error
from gui.tradeoff_chart import TradeoffChart
from gui.tradeoff_points import BYTES_PER_PARAM, ModelPoint, plan_points, score_key
from gui.worker import COMPLETED, Outcome, Worker


def _plan(sink: Any, token: Any, recipe: Recipe, teacher: Shape, target: int, out: Path, budget: float,
          probe: tuple[str, str] | None) -> dict:
    from engine.planner import Probe, plan

    return plan(recipe, teacher, target, out, sink, token, budget, Probe(*probe) if probe else None)


class PlanDialog(QDialog):
    """The planner's form and progress; `planned(Recipe)` when the user takes the winner."""

    planned = Signal(object)

    def __init__(self, recipe: Recipe, teacher: Shape, final_params: int, parent: QWidget | None = None,
                 plans_dir: Path | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Plan the stages for a size target")
        self.setMinimumSize(1000, 620)
        self.recipe, self.teacher = recipe, teacher
        self.worker: Worker | None = None
        self.result: dict | None = None

        self.target = QDoubleSpinBox(decimals=2, minimum=0.1, maximum=teacher.total_params / 1e6, suffix=" M")
        self.target.setValue(min(final_params, teacher.total_params - 1) / 1e6)
        self.target.setToolTip("The student's parameter count may not exceed this (fp32 MB ≈ 4 × millions).")
        self.budget = QDoubleSpinBox(decimals=0, minimum=0, maximum=24 * 60, value=20, suffix=" min")
        self.budget.setToolTip("No new trial starts once this much time is spent; at least one trial runs.")
        plans_dir = plans_dir or Path(recipe.base_dir) / recipe.run.runs_dir / "plans"
        self.out = QLineEdit(str(plans_dir / f"{recipe.run.name or 'plan'}.toml"))
        self.out.setToolTip("The winning recipe; the trials and the candidate table go to a .plan folder beside it.\n"
                            "Planning again into the same file continues a stopped plan.")
        self.rank = QComboBox()
        self.rank.addItem("fidelity to the teacher (no labels)", "")
        for task in EVAL_TASKS:
            self.rank.addItem(f"{task} probe on labelled data", task)
        self.rank.setToolTip("Label-free fidelity cannot compare depths or layer selections (it prefers deeper "
                             "students that the probes rank lowest),\nso without labels the recipe's own depth "
                             "and selection are kept and vocabulary, FFN and hidden sizes tried.\nWith a labelled "
                             "set of your task, every depth and selection is tried and ranked by a linear probe's "
                             "dev score.")
        self.probe_data = QLineEdit(placeholderText="labelled data: a folder, file or hub id")
        self.rank.currentIndexChanged.connect(self._update_buttons)
        self.probe_data.textChanged.connect(self._update_buttons)
        self.progress = QProgressBar(visible=False)
        self.status = QLabel(wordWrap=True)
        self.status.setStyleSheet("color: #4b5563;")
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Candidate (vocabulary, layers, FFN, hidden)", "Parameters", "Fidelity"])
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.chart = TradeoffChart()
        self.log = QPlainTextEdit(readOnly=True, maximumBlockCount=2000)

        form = QFormLayout()
        form.addRow("Target size", self.target)
        form.addRow("Time budget", self.budget)
        form.addRow("Planned recipe", self.out)
        form.addRow("Rank by", self.rank)
        form.addRow("", self.probe_data)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.plan_button = self.buttons.addButton("Plan", QDialogButtonBox.ButtonRole.ActionRole)
        self.cancel_button = self.buttons.addButton("Stop", QDialogButtonBox.ButtonRole.ActionRole)
        self.use_button = self.buttons.addButton("Use the winner", QDialogButtonBox.ButtonRole.AcceptRole)
        self.plan_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.stop)
        self.use_button.clicked.connect(self._use)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Candidate allocations of the size (vocabulary, depth, FFN and hidden width) are "
                                "each tried with a short run on the recipe's corpus, the recipe's own first, and "
                                "ranked by how faithfully the student reproduces the teacher (keeping the recipe's "
                                "depth and layer selection), or by a probe on labelled data of your task.",
                                wordWrap=True))
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(splitter(Qt.Orientation.Horizontal, self.table, self.chart.plot, stretch=(1, 1),
                                  sizes=[560, 440]), 2)
        layout.addWidget(self.log, 1)
        layout.addWidget(self.buttons)
        self._update_buttons()

    @property
    def probe(self) -> tuple[str, str] | None:
        """The task and labelled data the candidates are ranked by; None: by fidelity."""
        task = self.rank.currentData()
        return (task, self.probe_data.text().strip()) if task else None

    @property
    def out_path(self) -> Path:
        return Path(self.out.text().strip())

    def is_running(self) -> bool:
        return self.worker is not None and self.worker.is_running()

    def start(self) -> Worker | None:
        if self.is_running():
            return None
        self.result = None
        self.table.setRowCount(0)
        self._draw(self._tried())  # a plan continued shows its finished trials at once
        self.worker = Worker(_plan, self.recipe, self.teacher, round(self.target.value() * 1e6), self.out_path,
                             self.budget.value(), self.probe)
        self.worker.event.connect(self.handle)
        self.worker.failed.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self.worker.start()
        self.status.setText("Planning… (each trial compresses the teacher briefly on your corpus)")
        self.progress.setRange(0, 0)
        self._update_buttons()
        return self.worker

    def stop(self) -> None:
        if self.is_running():
            self.worker.cancel()
            self.status.setText("Stopping after the current step… (planning again continues where it stopped)")

    def reject(self) -> None:
        if self.is_running():
            self.stop()
            return
        super().reject()

    def handle(self, event: Event) -> None:
        if isinstance(event, Progress) and event.unit == "trial":
            self.progress.setRange(0, event.total)
            self.progress.setValue(event.step)
            left = f" · about {format_duration(event.eta_seconds)} left" if event.eta_seconds is not None else ""
            self.progress.setFormat(f"trial {min(event.step + 1, event.total)} of at most {event.total}{left}")
            self._draw(self._tried())
        elif isinstance(event, Log):
            self.log.appendPlainText(event.message)
            if event.message.startswith("plan: trying"):
                self.status.setText(event.message.removeprefix("plan: "))

    def _tried(self) -> list[dict]:
        """The finished trials so far, from the plan's own record (written after each trial)."""
        from engine.planner import plan_file

        try:
            table = json.loads(plan_file(self.out_path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return [{"name": name, **trial} for name, trial in (table.get("trials") or {}).items()]

    def _draw(self, rows: list[dict], winner: str = "") -> None:
        """The tried candidates (with the teacher, by fidelity): parameters against the score they are ranked by."""
        by = "probe" if self.probe else "fidelity"
        key = score_key("stage", by)
        size = self.teacher.total_params
        teacher = [] if self.probe else [ModelPoint("plan", "teacher", 0, size, size * BYTES_PER_PARAM, True,
                                                    {key: (1.0, 0.0)})]
        trials = plan_points("plan", {"candidates": rows}, by)
        for point in trials:
            if point.name == f"trial {winner}":
                point.name += "  ← winner"
        self.chart.draw([("candidates (short trials)", SERIES_COLOURS[0], [*teacher, *trials])], key, "params")

    def _finished(self, outcome: Outcome) -> None:
        self.worker = None
        if outcome.status == COMPLETED:
            self.result = outcome.result
            self._show(outcome.result)
        elif outcome.status != "failed":
            self.status.setText("Stopped; Plan continues where it stopped.")
        self._update_buttons()

    def _failed(self, error: BaseException) -> None:
        self.status.setText("")
        show_error(self, "Planning failed", message(error), details(error))

    def _show(self, result: dict) -> None:
        rows, by = result["candidates"], result["ranked_by"]
        self.table.setHorizontalHeaderItem(2, QTableWidgetItem(by.capitalize()))
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            winner = row["name"] == result["winner"]
            score = f"{row[by]:.4f}" if row["status"] == "tried" else row["status"]
            layers = f"{row['layers']} layer{'s' if row['layers'] > 1 else ''}"
            cells = [f"{row['vocab']:,} · {layers} ({row['selection']}) · FFN {row['ffn']} · "
                     f"hidden {row['hidden']}" + ("  ← winner" if winner else ""), f"{row['params']:,}", score]
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if winner:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                self.table.setItem(i, column, item)
        self._draw([row for row in rows if row["status"] == "tried"], result["winner"])
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        tried = sum(row["status"] == "tried" for row in rows)
        self.progress.setFormat(f"{tried} trial{'s' if tried > 1 else ''} in {result['minutes']:.1f} min")
        agreement = (f" The label-free ranking's Spearman correlation with the probe's: "
                     f"{result['rank_correlation']:+.2f}." if result["rank_correlation"] is not None else "")
        self.status.setText(f"Winner: {result['winner']}. Use the winner to load it into the Setup tab "
                            f"(saved as {self.out_path}).{agreement}")

    def _use(self) -> None:
        if self.result is not None:
            self.planned.emit(Recipe.load(self.out_path))
            self.accept()

    def _update_buttons(self) -> None:
        running = self.is_running()
        self.progress.setVisible(running or self.result is not None)
        for widget in (self.target, self.budget, self.out, self.rank):
            widget.setEnabled(not running)
        self.probe_data.setEnabled(not running and bool(self.rank.currentData()))
        labelled = not self.rank.currentData() or bool(self.probe_data.text().strip())
        self.plan_button.setEnabled(not running and labelled)
        self.cancel_button.setEnabled(running)
        self.use_button.setEnabled(not running and self.result is not None)
        self.buttons.button(QDialogButtonBox.StandardButton.Close).setEnabled(not running)
