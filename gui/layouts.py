"""Layout helpers the tabs share: splitters, titled boxes with a row of buttons, fields with buttons after them,
read-only tables."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QSplitter,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)


def splitter(orientation: Qt.Orientation, *widgets: QWidget, stretch: tuple[int, ...] = (),
             sizes: list[int] | None = None) -> QSplitter:
    """A splitter holding `widgets`; `stretch[i]`, when not 0, is the stretch factor of widget i."""
    split = QSplitter(orientation)
    for widget in widgets:
        split.addWidget(widget)
    for index, factor in enumerate(stretch):
        if factor:
            split.setStretchFactor(index, factor)
    if sizes:
        split.setSizes(sizes)
    return split


def action_group(title: str, content: QWidget, actions: list[tuple[str, Callable[[], None]]],
                 stretch: bool = False) -> QGroupBox:
    """A titled box: `content` above a row of buttons, one per (text, slot)."""
    group = QGroupBox(title)
    box = QVBoxLayout(group)
    box.addWidget(content)
    row = QHBoxLayout()
    for text, slot in actions:
        button = QPushButton(text)
        button.clicked.connect(slot)
        row.addWidget(button)
    if stretch:
        row.addStretch(1)
    box.addLayout(row)
    return group


def with_browse(field: QWidget, browse: Callable[[], None]) -> QWidget:
    """`field` with a "Browse…" button after it that calls `browse`."""
    return with_buttons(field, [("Browse…", browse)])


def with_buttons(field: QWidget, actions: list[tuple[str, Callable[[], None]]]) -> QWidget:
    """`field` with one button after it per (text, slot)."""
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(field, 1)
    for text, slot in actions:
        button = QPushButton(text)
        button.clicked.connect(slot)
        layout.addWidget(button)
    return row


def read_only_table(columns: int) -> QTableWidget:
    """A table for showing results: not editable, no row numbers or grid, columns sized to their contents."""
    table = QTableWidget(0, columns)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.setShowGrid(False)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    return table
