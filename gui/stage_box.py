"""One stage's settings as a checkable group box, built from its `StageSpec` (engine.stages.registry)."""

from __future__ import annotations

import dataclasses
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QGridLayout, QGroupBox, QLineEdit, QSpinBox, QWidget

from engine.configs import Stage
from engine.errors import RecipeError
from engine.stages.spec import FieldSpec, StageSpec
from gui.form_widgets import compact, error_label, framed, mark, plain_label, show_message, with_tip


class StageBox(QGroupBox):
    """A stage's fields (unchecked = stage off); `changed` after every edit."""

    changed = Signal()

    def __init__(self, spec: StageSpec, parent: QWidget | None = None) -> None:
        super().__init__(spec.title, parent)
        self.spec = spec
        self.kind = spec.kind
        self.setCheckable(True)
        self.setToolTip(spec.tip)
        self.specs = {field.name: field for field in spec.fields}
        self.widgets: dict[str, QWidget] = {}
        grid = QGridLayout(self)
        grid.setHorizontalSpacing(10)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        for i, field in enumerate(spec.fields):
            widget = with_tip(self._make(field), field.tip)
            label = plain_label(field.label)
            label.setToolTip(field.tip)
            row, col = divmod(i, 2)
            grid.addWidget(label, row, col * 2, Qt.AlignmentFlag.AlignRight)
            grid.addWidget(framed(widget), row, col * 2 + 1)
            self.widgets[field.name] = widget
        self.error = error_label()
        grid.addWidget(self.error, grid.rowCount(), 0, 1, 4)
        self.toggled.connect(self.changed)
        self.changed.connect(self._update_enabled)

    def _make(self, field: FieldSpec) -> QWidget:
        if field.kind in ("int", "optional_int"):
            widget = QSpinBox()
            widget.setRange(int(field.low), int(field.high))
            widget.setGroupSeparatorShown(True)
            if field.kind == "optional_int":
                widget.setSpecialValueText("keep")
            widget.valueChanged.connect(self.changed)
        elif field.kind == "float":
            widget = QDoubleSpinBox()
            widget.setRange(field.low, field.high)
            widget.setDecimals(3)
            widget.setSingleStep(0.05 if field.high <= 1 else 0.5)
            widget.valueChanged.connect(self.changed)
        elif field.kind == "lr":
            widget = QLineEdit()
            widget.setPlaceholderText("e.g. 5e-5")
            widget.textChanged.connect(self.changed)
        elif field.kind == "bool":
            widget = QCheckBox()
            widget.toggled.connect(self.changed)
        else:
            widget = compact(QComboBox(), 10)
            widget.addItems(field.choices)
            widget.currentTextChanged.connect(self.changed)
        return widget

    def _update_enabled(self) -> None:
        """Fields that matter only for some value of another (temperature: loss = kl) follow it."""
        for name, field in self.specs.items():
            if field.enabled_when is not None:
                other, values = field.enabled_when
                self.widgets[name].setEnabled(str(self.value_of(other)) in values)

    def value_of(self, name: str) -> Any:
        widget, field = self.widgets[name], self.specs[name]
        if isinstance(widget, QSpinBox):
            return (widget.value() or None) if field.kind == "optional_int" else widget.value()
        if isinstance(widget, QDoubleSpinBox):
            return round(widget.value(), widget.decimals())
        if isinstance(widget, QLineEdit):
            try:
                return float(widget.text().strip())
            except ValueError:
                raise RecipeError(f"{self.kind}.{name} = {widget.text()!r} is not a number", name) from None
        if isinstance(widget, QCheckBox):
            return widget.isChecked()
        return widget.currentText()

    def set_stage(self, stage: Stage) -> None:
        for name, widget in self.widgets.items():
            value = getattr(stage, name)
            if isinstance(widget, QSpinBox):
                widget.setValue(0 if value is None else int(value))
            elif isinstance(widget, QDoubleSpinBox):
                widget.setValue(float(value))
            elif isinstance(widget, QLineEdit):
                widget.setText(repr(float(value)))
            elif isinstance(widget, QCheckBox):
                widget.setChecked(bool(value))
            else:
                widget.setCurrentText(str(value))
        self._update_enabled()

    def stage(self, base: Stage) -> Stage:
        """`base` with the form's values; raises RecipeError whose path is the field at fault."""
        return dataclasses.replace(base, **{name: self.value_of(name) for name in self.widgets})

    def show_error(self, message: str, field: str = "") -> None:
        """Show `message` under the box and flag the field named `field` (none when "")."""
        for name, widget in self.widgets.items():
            mark(widget, bool(message) and name == field, message)
        show_message(self.error, message)
