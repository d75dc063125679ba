"""Setup → Plan…: fit the recipe to a size target with `engine.planner` in the background (trials, progress,
the candidate table); the winning recipe fills the Setup tab."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.events import Event, Log
from engine.recipe import Recipe
from engine.shapes import Shape
from gui.errors import details, message
from gui.style import show_error
from gui.worker import COMPLETED, Outcome, Worker

TRYING = re.compile(r"plan: trying \S+ .*trial (\d+) of at most (\d+)")


def _plan(sink: Any, token: Any, recipe: Recipe, teacher: Shape, target: int, out: Path, budget: float) -> dict:
    from engine.planner import plan

    return plan(recipe, teacher, target, out, sink, token, budget)


class PlanDialog(QDialog):
    """The planner's form and progress; `planned(Recipe)` when the user takes the winner."""

    planned = Signal(object)

    def __init__(self, recipe: Recipe, teacher: Shape, final_params: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Plan the stages for a size target")
        self.setMinimumSize(720, 560)
        self.recipe, self.teacher = recipe, teacher
        self.worker: Worker | None = None
        self.result: dict | None = None

        self.target = QDoubleSpinBox(decimals=2, minimum=0.1, maximum=teacher.total_params / 1e6, suffix=" M")
        self.target.setValue(min(final_params, teacher.total_params - 1) / 1e6)
        self.target.setToolTip("The student's parameter count may not exceed this (fp32 MB ≈ 4 × millions).")
        self.budget = QDoubleSpinBox(decimals=0, minimum=0, maximum=24 * 60, value=20, suffix=" min")
        self.budget.setToolTip("No new trial starts once this much time is spent; at least one trial runs.")
        base = Path(recipe.base_dir) / recipe.run.runs_dir / "plans"
        self.out = QLineEdit(str(base / f"{recipe.run.name or 'plan'}.toml"))
        self.out.setToolTip("The winning recipe; the trials and the candidate table go to a .plan folder beside it.\n"
                            "Planning again into the same file continues a stopped plan.")
        self.progress = QProgressBar(visible=False)
        self.status = QLabel(wordWrap=True)
        self.status.setStyleSheet("color: #4b5563;")
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Candidate (vocabulary, layers, FFN, hidden)", "Parameters", "Fidelity"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setColumnWidth(0, 380)
        self.log = QPlainTextEdit(readOnly=True, maximumBlockCount=2000)

        form = QFormLayout()
        form.addRow("Target size", self.target)
        form.addRow("Time budget", self.budget)
        form.addRow("Planned recipe", self.out)
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
                                "each tried with a short run on the recipe's corpus and ranked by how faithfully "
                                "the student reproduces the teacher.", wordWrap=True))
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.table, 2)
        layout.addWidget(self.log, 1)
        layout.addWidget(self.buttons)
        self._update_buttons()

    def is_running(self) -> bool:
        return self.worker is not None and self.worker.is_running()

    def start(self) -> Worker | None:
        if self.is_running():
            return None
        self.result = None
        self.table.setRowCount(0)
        self.worker = Worker(_plan, self.recipe, self.teacher, round(self.target.value() * 1e6),
                             Path(self.out.text().strip()), self.budget.value())
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
        if not isinstance(event, Log):
            return
        self.log.appendPlainText(event.message)
        if found := TRYING.match(event.message):
            done, most = int(found[1]) - 1, int(found[2])
            self.progress.setRange(0, most)
            self.progress.setValue(done)
            self.progress.setFormat(f"trial {done + 1} of at most {most}")
            self.status.setText(event.message.removeprefix("plan: "))

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
        rows = result["candidates"]
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            winner = row["name"] == result["winner"]
            score = f"{row['fidelity']:.4f}" if row["status"] == "tried" else row["status"]
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
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        tried = sum(row["status"] == "tried" for row in rows)
        self.progress.setFormat(f"{tried} trial{'s' if tried > 1 else ''} in {result['minutes']:.1f} min")
        self.status.setText(f"Winner: {result['winner']}. Use the winner to load it into the Setup tab "
                            f"(saved as {self.out.text().strip()}).")

    def _use(self) -> None:
        if self.result is not None:
            self.planned.emit(Recipe.load(Path(self.out.text().strip())))
            self.accept()

    def _update_buttons(self) -> None:
        running = self.is_running()
        self.progress.setVisible(running or self.result is not None)
        for widget in (self.target, self.budget, self.out):
            widget.setEnabled(not running)
        self.plan_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.use_button.setEnabled(not running and self.result is not None)
        self.buttons.button(QDialogButtonBox.StandardButton.Close).setEnabled(not running)
