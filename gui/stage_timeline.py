"""The stage timeline of the Training tab: one coloured chip per stage of the run."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QWidget

from gui.style import STATUS_LABELS, status_css


class StageTimeline(QWidget):
    """One coloured chip per stage: pending / running / done / failed / cancelled, marked ⚠ (the warnings as its
    tooltip) when the stage's quality gate warned."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.chips: list[QLabel] = []
        self.kinds: list[str] = []
        self.statuses: list[str] = []
        self.warnings: list[list[str]] = []
        self.placeholder = QLabel("No run yet: press Start (F5) to compress the recipe in the Setup tab.")
        self.placeholder.setStyleSheet("color: #6b7280;")
        self.row = QHBoxLayout(self)
        self.row.setContentsMargins(0, 0, 0, 0)
        self.row.setSpacing(6)
        self.row.addWidget(self.placeholder)
        self.row.addStretch(1)

    def set_stages(self, kinds: tuple[str, ...] | list[str]) -> None:
        for chip in self.chips:
            chip.setParent(None)
            chip.deleteLater()
        self.kinds, self.statuses, self.chips = list(kinds), ["pending"] * len(kinds), []
        self.warnings = [[] for _ in kinds]
        self.placeholder.setVisible(not kinds)
        for i, _kind in enumerate(self.kinds):
            chip = QLabel()
            chip.setAlignment(Qt.AlignmentFlag.AlignCenter)
            chip.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            self.row.insertWidget(i, chip)
            self.chips.append(chip)
            self._paint(i)

    def set_status(self, index: int, status: str) -> None:
        if 1 <= index <= len(self.chips):
            if status == "skipped" and self.statuses[index - 1] == "completed":
                return
            self.statuses[index - 1] = status
            self._paint(index - 1)

    def warn(self, index: int, message: str) -> None:
        """Mark stage `index` with a quality warning (kept across status changes until the next run)."""
        if 1 <= index <= len(self.chips):
            self.warnings[index - 1].append(message)
            self._paint(index - 1)

    def status(self, index: int) -> str:
        return self.statuses[index - 1]

    def _paint(self, i: int) -> None:
        status = self.statuses[i]
        warned = bool(self.warnings[i])
        mark = "  ⚠ quality" if warned else ""
        self.chips[i].setText(f"{i + 1} · {self.kinds[i]}  —  {STATUS_LABELS.get(status, status)}{mark}")
        self.chips[i].setStyleSheet(status_css("warning" if warned and status in ("completed", "skipped") else status))
        self.chips[i].setToolTip("\n\n".join(self.warnings[i]))
