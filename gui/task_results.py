"""What a trained task model shows in its tab: its scores beside its teacher's, and its answers to typed text."""

from __future__ import annotations

from html import escape
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QGroupBox,
    QHeaderView,
    QLabel,
    QLineEdit,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from gui.form_widgets import note_label
from gui.layouts import read_only_table
from gui.style import TAG_COLOURS
from gui.task_curves import metric_title
from gui.task_jobs import Prediction, TaskModel

NONE = "–"
SHOWN_LABELS = 5  # text tasks: the best labels listed with their confidence


def percent(value: float | None) -> str:
    return NONE if value is None else f"{100 * value:.1f}"


def millions(params: int | None) -> str:
    return f"{params / 1e6:.2f}M" if params else NONE


def score_rows(model: TaskModel) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the scores table: the task model, then (when distilled) its teacher on the same test
    set; scores in %. The teacher's dev score shows when its own facts were measured on the same data."""
    facts = model.facts
    headline = facts["headline"]
    others = [name for name in facts["test"] if name != headline]
    header = ["Model", "Parameters", f"dev {metric_title(headline)}", f"test {metric_title(headline)}",
              *(f"test {metric_title(name)}" for name in others)]

    def row(name: str, params: int | None, dev: dict[str, float], test: dict[str, float]) -> list[str]:
        scores = [percent(test.get(metric)) for metric in (headline, *others)]
        return [name, millions(params), percent(dev.get(headline)), *scores]

    rows = [row("task model", facts.get("params"), facts.get("dev") or {}, facts["test"])]
    if facts.get("teacher_test"):
        teacher = model.teacher or {}
        same_data = teacher.get("data_fingerprint") == facts.get("data_fingerprint")
        rows.append(row("teacher", teacher.get("params"), (teacher.get("dev") or {}) if same_data else {},
                        facts["teacher_test"]))
    return header, rows


def tag_of(label: str) -> str:
    """The entity or tag a label names (`B-PER` → PER)."""
    return label[2:] if label[:2] in ("B-", "I-") else label


def tag_colours(labels: list[str]) -> dict[str, str]:
    """A background colour per entity or tag of a task model's labels, in their order ("O" has none)."""
    tags = [tag for tag in dict.fromkeys(map(tag_of, labels)) if tag != "O"]
    return {tag: TAG_COLOURS[i % len(TAG_COLOURS)] for i, tag in enumerate(tags)}


def marked_up(text: str, spans: tuple[dict[str, Any], ...], colours: dict[str, str]) -> str:
    """`text` as rich text with each span on its tag's colour, the tag after it in small capitals."""
    parts, at = [], 0
    for span in sorted(spans, key=lambda s: s["start"]):
        start, end, tag = span["start"], span["end"], str(span["entity_group"])
        parts.append(escape(text[at:start]))
        parts.append(f"<span style='background-color:{colours.get(tag, TAG_COLOURS[-1])};'>&nbsp;"
                     f"{escape(text[start:end])} <small><b>{escape(tag)}</b></small>&nbsp;</span>")
        at = max(at, end)
    parts.append(escape(text[at:]))
    return "".join(parts)


def fill_table(table: QTableWidget, header: list[str], rows: list[list[str]]) -> None:
    """Replace `table`'s contents; every column but the first is right-aligned."""
    table.setColumnCount(len(header))
    table.setHorizontalHeaderLabels(header)
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            cell = QTableWidgetItem(value)
            if c:
                cell.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            table.setItem(r, c, cell)


class ScoresTable(QGroupBox):
    """The task model's dev and test scores, its teacher's beside them, and where the model lies."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Scores", parent)
        self.table = read_only_table(0)
        self.summary = note_label()
        self.summary.setText("Train a task model to see its scores here.")
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(self.summary)

    def clear(self, text: str = "") -> None:
        self.table.setRowCount(0)
        self.table.setColumnCount(0)
        self.summary.setText(text)

    def show_model(self, model: TaskModel) -> None:
        fill_table(self.table, *score_rows(model))
        rows = self.table.verticalHeader().defaultSectionSize() * 2  # the task model and its teacher
        self.table.setFixedHeight(self.table.horizontalHeader().sizeHint().height() + rows
                                  + 2 * self.table.frameWidth())
        facts = model.facts
        best = f", best epoch {facts['best_epoch']} of {facts['epochs_run']}" if facts.get("epochs_run") else ""
        self.summary.setText(f"{facts['task']} model in {model.folder}: trained in {facts.get('seconds', 0):.0f} s"
                             f"{best}. Scores in % on the data's dev and test splits.")


class TryItPanel(QGroupBox):
    """A sentence in, the task model's answer out: coloured spans (token tasks) or labels (text tasks), with
    the latency; `asked(text)` when Enter is pressed."""

    asked = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Try it", parent)
        self.colours: dict[str, str] = {}
        self.input = QLineEdit(placeholderText="Type a sentence and press Enter")
        self.input.returnPressed.connect(self._ask)
        self.answer = QLabel()
        self.answer.setWordWrap(True)
        self.answer.setTextFormat(Qt.TextFormat.RichText)
        self.answer.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.answer.setStyleSheet("font-size: 12pt; font-weight: normal; padding: 4px 0;")
        self.details = read_only_table(3)
        self.details.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)  # words, labels
        self.details.setMinimumHeight(80)
        self.timing = note_label()
        layout = QVBoxLayout(self)
        layout.addWidget(self.input)
        layout.addWidget(self.answer)
        layout.addWidget(self.details, 1)
        layout.addWidget(self.timing)
        layout.addStretch(0)
        self.set_labels(None)

    def set_labels(self, labels: list[str] | None) -> None:
        """Ready for the task model with these labels; None: no model to ask yet."""
        self.colours = tag_colours(labels or [])
        self.input.setEnabled(labels is not None)
        self.answer.clear()
        self.details.setRowCount(0)
        self.details.hide()
        self.timing.setText("" if labels is not None else "A trained task model answers here.")

    def show_busy(self) -> None:
        self.timing.setText("Labelling… (the first sentence loads the model)")

    def show_prediction(self, prediction: Prediction) -> None:
        items = prediction.items
        if prediction.token_level:
            self.answer.setText(marked_up(prediction.text, items, self.colours) if items else
                                f"{escape(prediction.text)} <small>(nothing found)</small>")
            header = ["Words", "Tag", "Score"]
            rows = [[prediction.text[s["start"]:s["end"]], str(s["entity_group"]), f"{s['score']:.3f}"] for s in items]
        else:
            best = items[0]
            self.answer.setText(f"<span style='background-color:{TAG_COLOURS[0]};'>&nbsp;<b>"
                                f"{escape(str(best['label']))}</b>&nbsp;</span> {100 * best['score']:.0f}% confident")
            header = ["Label", "Confidence"]
            rows = [[str(item["label"]), f"{100 * item['score']:.1f}%"] for item in items[:SHOWN_LABELS]]
        fill_table(self.details, header, rows)
        self.details.show()
        loaded = f" · model loaded in {prediction.load_seconds:.1f} s" if prediction.load_seconds else ""
        self.timing.setText(f"{prediction.milliseconds:.0f} ms for this sentence{loaded}")

    def _ask(self) -> None:
        text = self.input.text().strip()
        if text:
            self.asked.emit(text)
