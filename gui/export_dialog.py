"""File → Export to ONNX: pick a model folder and the output, export in the background, show the result."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QVBoxLayout,
    QWidget,
)

from engine.export import default_out, export_onnx, summary_lines
from gui.errors import details, message
from gui.layouts import with_browse
from gui.style import show_error
from gui.worker import BackgroundTask, run_in_background


def inform(parent: QWidget, title: str, text: str) -> None:
    """The result message (tests replace it: offscreen nobody can click a dialog away)."""
    QMessageBox.information(parent, title, text)


class ExportDialog(QDialog):
    """The export form; `exported(report)` or `failed(message)` after each export it starts."""

    exported = Signal(dict)
    failed = Signal(str)

    def __init__(self, model_dir: Path | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export to ONNX")
        self.setMinimumWidth(640)
        self.task: BackgroundTask | None = None
        self._out_edited = False

        self.model = QLineEdit(placeholderText="model folder with config.json (e.g. a stage's model/)")
        self.out = QLineEdit(placeholderText="output folder")
        self.onnx = QCheckBox("ONNX (fp32), checked against PyTorch", checked=True)
        self.int8 = QCheckBox("also int8: about 4× smaller and faster on CPUs, slightly less exact")
        self.int8.setToolTip("ONNX Runtime's dynamic quantization: int8 weights per channel, activations "
                             "quantized at run time; its agreement with PyTorch is reported")
        self.progress = QProgressBar(visible=False)
        self.progress.setRange(0, 0)  # busy: torch's exporter reports no progress
        self.status = QLabel(wordWrap=True)
        self.status.setStyleSheet("color: #4b5563;")

        form = QFormLayout()
        form.addRow("Model folder", with_browse(self.model, self._browse_model))
        form.addRow("Export into", with_browse(self.out, self._browse_out))
        form.addRow("Formats", self.onnx)
        form.addRow("", self.int8)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.export_button = self.buttons.addButton("Export", QDialogButtonBox.ButtonRole.AcceptRole)
        self.buttons.accepted.connect(self.start)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.buttons)

        self.model.textChanged.connect(self._model_changed)
        self.out.textEdited.connect(lambda _: setattr(self, "_out_edited", True))
        self.onnx.toggled.connect(self._update_buttons)
        if model_dir is not None:
            self.model.setText(str(model_dir))
        self._update_buttons()

    def is_running(self) -> bool:
        return self.task is not None and self.task.is_running()

    def start(self) -> BackgroundTask | None:
        """Export in the background with the form's settings; None when the form is incomplete."""
        model, out = self.model.text().strip(), self.out.text().strip()
        if self.is_running() or not (model and out and self.onnx.isChecked()):
            return None
        self.task = run_in_background(export_onnx, model, Path(out), int8=self.int8.isChecked(),
                                      on_done=self._done, on_error=self._failed)
        self.status.setText(f"Exporting {model} … (loading the libraries and checking against PyTorch take "
                            "a little while)")
        self._update_buttons()
        return self.task

    def reject(self) -> None:
        if not self.is_running():  # the export cannot be interrupted: the dialog stays until it ends
            super().reject()

    def _done(self, report: dict) -> None:
        self.task = None
        self._update_buttons()
        self.status.setText(f"Exported to {report['out']}")
        self.exported.emit(report)
        inform(self, "Export finished", "\n".join([f"Exported to {report['out']}", *summary_lines(report)]))
        self.accept()

    def _failed(self, error: BaseException) -> None:
        self.task = None
        self._update_buttons()
        self.status.setText("")
        self.failed.emit(message(error))
        show_error(self, "Export failed", message(error), details(error))

    def _update_buttons(self) -> None:
        running = self.is_running()
        self.progress.setVisible(running)
        for widget in (self.model, self.out, self.onnx, self.int8):
            widget.setEnabled(not running)
        self.export_button.setEnabled(not running and self.onnx.isChecked())
        self.buttons.button(QDialogButtonBox.StandardButton.Close).setEnabled(not running)

    def _model_changed(self, text: str) -> None:
        if not self._out_edited:
            self.out.setText(str(default_out(text.strip())) if text.strip() else "")

    def _browse_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder (with config.json)",
                                                  self.model.text() or str(Path.cwd()))
        if folder:
            self.model.setText(folder)

    def _browse_out(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export into folder", self.out.text() or str(Path.cwd()))
        if folder:
            self._out_edited = True
            self.out.setText(folder)
