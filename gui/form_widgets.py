"""Small form helpers shared by the Setup tab's sections: framed fields that turn red when invalid,
compact combos, and error and note labels."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QFrame, QHBoxLayout, QLabel, QWidget

ERROR_COLOUR = "#dc2626"
NOTE_STYLE = "color: #4b5563; font-weight: normal;"
TEXT_STYLE = "color: #1f2937; font-weight: normal;"
ERROR_STYLE = f"color: {ERROR_COLOUR}; font-weight: normal;"
FIELD_FRAME = "field"


def framed(widget: QWidget) -> QFrame:
    """`widget` inside a thin frame that turns red when the field is invalid (the widget keeps its look)."""
    frame = QFrame()
    frame.setObjectName(FIELD_FRAME)
    layout = QHBoxLayout(frame)
    layout.setContentsMargins(2, 2, 2, 2)
    layout.addWidget(widget)
    return frame


def with_tip(widget: QWidget, tip: str) -> QWidget:
    """Give `widget` a tooltip that `mark` restores when the field becomes valid again."""
    widget.setToolTip(tip)
    widget.setProperty("base_tip", tip)
    return widget


def mark(widget: QWidget, invalid: bool, message: str = "") -> None:
    """Flag a field: red frame (see `framed`), message in its tooltip and an `invalid` property."""
    if bool(widget.property("invalid")) == invalid and not invalid:
        return
    widget.setProperty("invalid", invalid)
    frame = widget.parentWidget()
    if frame is not None and frame.objectName() == FIELD_FRAME:
        frame.setStyleSheet(f"QFrame#{FIELD_FRAME} {{ border: 2px solid {ERROR_COLOUR}; border-radius: 4px; }}"
                            if invalid else "")
    base_tip = widget.property("base_tip") or ""
    widget.setToolTip(f"{message}\n\n{base_tip}".strip() if invalid else base_tip)


def compact(combo: QComboBox, characters: int = 24) -> QComboBox:
    """A combo whose width does not follow its longest item (keeps the form inside the scroll area)."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(characters)
    return combo


def error_label() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet(ERROR_STYLE)
    label.hide()
    return label


def note_label(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet(NOTE_STYLE)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def show_message(label: QLabel, message: str) -> None:
    """Show `message` in an error label, or hide it when empty."""
    label.setText(message)
    label.setVisible(bool(message))


def plain_label(text: str) -> QLabel:
    label = QLabel(text)
    label.setStyleSheet("font-weight: normal;")
    return label
