"""The main window: Setup | Training | Trade-offs | Evaluation | Task model | Runs, menus, shortcuts, status bar,
settings."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings, Qt
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QInputDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QTabWidget,
    QWidget,
)

from engine.errors import RecipeError
from engine.recipe import Recipe
from engine.resources import DEFAULT_RECIPE, PRESET, load_recipe
from engine.runfolder import RunFolder
from gui.errors import details, message
from gui.evaluation_tab import EvaluationTab
from gui.runs_model import RunsModel
from gui.runs_tab import RunsTab
from gui.setup_tab import SetupTab
from gui.style import icon, show_error
from gui.task_tab import TaskModelTab
from gui.tradeoffs_tab import TradeoffsTab
from gui.training_tab import TrainingTab
from gui.worker import run_in_background, wait_for_all

ORGANISATION = "MiniGlot"
APPLICATION = "MiniGlot"
TAB_TITLES = ("Setup", "Training", "Trade-offs", "Evaluation", "Task model", "Runs")

METHOD_SUMMARY = """
<h3>How MiniGlot compresses a model</h3>
<p>MiniGlot turns a large <b>multilingual</b> encoder (mBERT, XLM-R, multilingual-e5…) into a small
model for <b>one</b> language, following Gurgurov et&nbsp;al. (2025). Each step starts from the previous
step's model, and every step's model is saved as an ordinary Hugging Face folder.</p>
<ol>
<li><b>Fewer layers (distillation).</b> The student keeps some of the teacher's layers (for example every
second one) and learns to imitate the teacher on text in your language. The loss mixes ordinary masked-word
prediction with matching the teacher's outputs (<i>alpha</i> sets the mix).</li>
<li><b>Narrower feed-forward blocks (pruning).</b> MiniGlot measures how much each neuron (and optionally
each attention head) matters on your language's text and removes the least useful ones.</li>
<li><b>Smaller hidden size (second distillation).</b> The model's width is cut (for example 768 → 312) and it
is distilled again, this time from the step-1 student. This step costs the most accuracy.</li>
<li><b>Smaller vocabulary.</b> Only the tokens your language actually uses are kept; the embedding matrix
and the tokenizer shrink to match.</li>
</ol>
<p>The paper reaches up to 92% fewer parameters, with average accuracy drops of 2–10% at moderate and
8–13% at maximum compression. Languages that were rare in the teacher's training data lose more; named
entity recognition is the most fragile task and part-of-speech tagging the most robust.
Optionally, an <b>adapt</b> step first trains the teacher further on your language, which gives a better
teacher.</p>
"""


def settings() -> QSettings:
    """The app's settings (an INI file in the user's config folder; tests point QSettings elsewhere)."""
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANISATION, APPLICATION)


def confirm(parent: QWidget, title: str, text: str) -> bool:
    answer = QMessageBox.question(parent, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                  QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


class MainWindow(QMainWindow):
    def __init__(self, runs_dir: Path | None = None) -> None:
        super().__init__()
        self.settings = settings()
        self.recipe_path: Path | None = None
        self.setWindowIcon(icon())
        self.setMinimumSize(720, 480)
        runs_dir = runs_dir or Path(str(self.settings.value("runs_dir", "runs")))

        self.runs = RunsModel(runs_dir, self)  # every tab's list of runs, read once per change
        self.setup_tab = SetupTab()
        self.training_tab = TrainingTab(self._recipe_for_run)
        self.tradeoffs_tab = TradeoffsTab(self.runs)
        self.evaluation_tab = EvaluationTab(self.runs)
        self.task_tab = TaskModelTab(self.runs)
        self.runs_tab = RunsTab(self.runs)

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(False)
        for widget, title in zip((self.setup_tab, self.training_tab, self.tradeoffs_tab, self.evaluation_tab,
                                  self.task_tab, self.runs_tab), TAB_TITLES, strict=True):
            self.tabs.addTab(widget, title)
        self.setCentralWidget(self.tabs)

        self.recipe_label = QLabel()
        self.recipe_label.setStyleSheet("color: #4b5563; padding-right: 8px;")
        self.statusBar().addPermanentWidget(self.recipe_label)
        self.training_tab.status_message.connect(self.show_message)
        self.training_tab.run_finished.connect(self._run_finished)
        self.training_tab.running_changed.connect(self._running_changed)
        self.runs_tab.open_requested.connect(self.open_run)
        self.runs.runs_dir_changed.connect(self._runs_dir_changed)
        self._runs_dir_changed(runs_dir, remember=False)
        self.setup_tab.valid_changed.connect(self.training_tab.set_can_start)
        self.evaluation_tab.evaluation_finished.connect(lambda _: self.tradeoffs_tab.refresh())
        self.task_tab.export_requested.connect(self.open_export_dialog)
        self._build_menus()
        self._running_changed(False)

        geometry = self.settings.value("geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1360, 880)
        self.show_message("Ready")

    # ---- menus ----
    def _action(self, menu: Any, text: str, slot: Any, shortcut: Any = None, tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.setStatusTip(tip)
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file = bar.addMenu("&File")
        self._action(file, "&New recipe", self.new_recipe, QKeySequence.StandardKey.New,
                     "Start again from the embedded offline default recipe")
        self._action(file, "&Open recipe…", self._open_recipe_dialog, QKeySequence.StandardKey.Open)
        self._action(file, "&Save recipe as…", self._save_recipe_dialog, QKeySequence.StandardKey.Save)
        file.addSeparator()
        self._action(file, "Open &run…", self._open_run_dialog, "Ctrl+Shift+O",
                     "Open a run folder; a run still being written is followed live")
        self.export_action = self._action(file, "&Export student…", self._export_student_dialog, "Ctrl+E",
                                          "Copy one stage's model folder somewhere else")
        self.export_dialog: Any = None  # the ONNX export dialog, once opened
        self.export_onnx_action = self._action(file, "Export to &ONNX…", self._export_onnx_dialog, "Ctrl+Shift+E",
                                               "Write a model as ONNX (optionally int8) for ONNX Runtime, checked "
                                               "against PyTorch")
        file.addSeparator()
        self._action(file, "&Quit", self.close, QKeySequence.StandardKey.Quit)

        run = bar.addMenu("&Run")
        self.start_action = self._action(run, "&Start", self.training_tab.start, "F5",
                                         "Compress the recipe in the Setup tab")
        self.cancel_action = self._action(run, "&Cancel", self.training_tab.cancel, "Shift+F5",
                                          "Stop the run at its next step")
        self.resume_action = self._action(run, "&Resume", lambda: self.training_tab.resume(), "Ctrl+R",
                                          "Continue the shown failed or cancelled run")
        run.addSeparator()
        self._action(run, "&Plan for a size target…", self._plan, "Ctrl+P",
                     "Try allocations of a size target with short runs; the best fills the Setup tab")

        view = bar.addMenu("&View")
        for i in range(self.tabs.count()):
            self._action(view, self.tabs.tabText(i), lambda _=False, i=i: self.tabs.setCurrentIndex(i), f"Ctrl+{i + 1}")

        help_menu = bar.addMenu("&Help")
        self._action(help_menu, "&Method summary", self.show_method_summary, QKeySequence.StandardKey.HelpContents)
        self._action(help_menu, "&About MiniGlot", self.show_about)

    # ---- recipes ----
    def set_recipe(self, recipe: Recipe, path: Path | None = None) -> None:
        self.setup_tab.set_recipe(recipe)
        self.recipe_path = Path(path) if path is not None else None
        name = self.recipe_path.name if self.recipe_path else "new recipe"
        self.setWindowTitle(f"MiniGlot — {name}")
        self.recipe_label.setText(f"Recipe: {self.recipe_path or name}")
        if self.recipe_path is not None and self.recipe_path.resolve() != DEFAULT_RECIPE.resolve():
            self.settings.setValue("last_recipe", str(self.recipe_path.resolve()))

    def load_recipe(self, argument: str | Path) -> bool:
        """Open a recipe file, or a `preset:<name>` (shown as a new recipe, so Save never overwrites a preset)."""
        try:
            recipe = load_recipe(argument)
        except RecipeError as exc:
            show_error(self, "Cannot open the recipe", str(exc))
            return False
        preset = str(argument).startswith(PRESET)
        self.set_recipe(recipe, None if preset else Path(argument))
        self.show_message(f"Loaded {'preset' if preset else 'recipe'} {argument}")
        return True

    def new_recipe(self) -> None:
        self.set_recipe(Recipe.load(DEFAULT_RECIPE))
        self.show_message("New recipe from the offline default")

    def restore_recipe(self) -> None:
        """The last recipe used (if it still loads), else the embedded default."""
        last = self.settings.value("last_recipe")
        if last and Path(str(last)).is_file():
            try:
                self.set_recipe(Recipe.load(Path(str(last))), Path(str(last)))
                return
            except RecipeError:
                pass
        self.new_recipe()

    def save_recipe(self, path: Path) -> bool:
        try:
            recipe = self.setup_tab.recipe()
        except RecipeError as exc:
            show_error(self, "The recipe is not valid", str(exc))
            return False
        recipe.save(path)
        self.set_recipe(Recipe.load(path), path)
        self.show_message(f"Saved recipe to {path}")
        return True

    def _recipe_for_run(self) -> Recipe:
        """The Setup tab's recipe, writing its run folder into the Runs tab's folder."""
        recipe = self.setup_tab.recipe()
        runs_dir = str(self.runs.runs_dir.resolve())
        return recipe.replace(run=dataclasses.replace(recipe.run, runs_dir=runs_dir))

    # ---- runs ----
    def open_run(self, run_dir: Path) -> bool:
        folder = RunFolder(run_dir)
        run_dir = folder.path
        if not folder.is_run():
            show_error(self, "Not a run folder",
                       f"{run_dir} has no {folder.manifest_file.name} or {folder.events_file.name}.")
            return False
        if not self.training_tab.open_run(run_dir):
            return False
        for tab in (self.tradeoffs_tab, self.evaluation_tab):
            tab.show_run(run_dir)
        self.tabs.setCurrentWidget(self.training_tab)
        return True

    def export_student(self, model_dir: Path, destination: Path):
        """Copy a stage's model folder to `destination` in the background; returns the task."""
        task = run_in_background(shutil.copytree, str(model_dir), str(destination),
                                 on_done=lambda _: self.show_message(f"Exported the student to {destination}"),
                                 on_error=lambda exc: show_error(self, "Export failed", message(exc), details(exc)))
        self.show_message(f"Copying {model_dir} to {destination}…")
        return task

    def _runs_dir_changed(self, runs_dir: Path, remember: bool = True) -> None:
        """Runs and plans go to the app's runs folder (never beside an installed recipe)."""
        self.setup_tab.plans_dir = Path(runs_dir).resolve() / "plans"
        if remember:
            self.settings.setValue("runs_dir", str(Path(runs_dir).resolve()))

    def _run_finished(self, run_dir: Path | None, status: str) -> None:
        self.runs.refresh()
        if run_dir is not None:
            for tab in (self.tradeoffs_tab, self.evaluation_tab):
                tab.show_run(run_dir)

    def _running_changed(self, running: bool) -> None:
        self.start_action.setEnabled(not running)
        self.cancel_action.setEnabled(running)
        self.resume_action.setEnabled(not running)

    # ---- dialogs ----
    def _open_recipe_dialog(self) -> None:
        start = str(self.recipe_path.parent if self.recipe_path else DEFAULT_RECIPE.parent)
        path, _ = QFileDialog.getOpenFileName(self, "Open recipe", start, "Recipes (*.toml *.json)")
        if path:
            self.load_recipe(Path(path))

    def _save_recipe_dialog(self) -> None:
        start = str(self.recipe_path or Path.cwd() / "recipe.toml")
        path, _ = QFileDialog.getSaveFileName(self, "Save recipe as", start, "TOML recipe (*.toml);;JSON (*.json)")
        if path:
            self.save_recipe(Path(path))

    def _open_run_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open run folder", str(self.runs.runs_dir))
        if folder:
            self.open_run(Path(folder))

    def _export_student_dialog(self) -> None:
        run_dir = self.training_tab.run_dir
        stages = _completed_stages(run_dir) if run_dir else {}
        if not stages:
            show_error(self, "Nothing to export", "Open a run with at least one finished stage first "
                                                  "(Runs tab, or File → Open run…).")
            return
        names = list(stages)
        name, ok = QInputDialog.getItem(self, "Export student", "Stage model to export:", names, len(names) - 1,
                                        False)
        if not ok:
            return
        folder = QFileDialog.getExistingDirectory(self, "Export into folder", str(Path.home()))
        if folder:
            destination = Path(folder) / f"{run_dir.name}-{name.split(' ')[0]}"
            if destination.exists():
                show_error(self, "Export", f"{destination} already exists.")
                return
            self.export_student(stages[name], destination)

    def _plan(self) -> None:
        """Setup's Plan… dialog, over the Setup tab."""
        self.tabs.setCurrentWidget(self.setup_tab)
        self.setup_tab.open_plan()

    def _export_onnx_dialog(self) -> None:
        """The export dialog, preset to the shown run's last finished stage model."""
        run_dir = self.training_tab.run_dir
        models = list(_completed_stages(run_dir).values()) if run_dir else []
        self.open_export_dialog(models[-1] if models else None)

    def open_export_dialog(self, model_dir: Path | None) -> None:
        """The export dialog for `model_dir` (a stage's or a task model's folder); one still exporting is shown."""
        from gui.export_dialog import ExportDialog

        current = self.export_dialog
        if current is not None and current.is_running():
            current.show()
            return
        if current is not None:
            current.deleteLater()
        self.export_dialog = ExportDialog(model_dir, self)
        self.export_dialog.exported.connect(lambda report: self.show_message(f"Exported to {report['out']}"))
        self.export_dialog.open()

    def show_method_summary(self) -> None:
        box = QMessageBox(QMessageBox.Icon.NoIcon, "Method summary", METHOD_SUMMARY, QMessageBox.StandardButton.Ok,
                          self)
        box.setTextFormat(Qt.TextFormat.RichText)
        box.exec()

    def show_about(self) -> None:
        from engine import __version__

        QMessageBox.about(self, "About MiniGlot",
                          f"<h3>MiniGlot {__version__}</h3><p>Compress multilingual encoders into small "
                          "monolingual students for low-resource languages, and see what each byte saved costs."
                          "</p><p>Method: Gurgurov, Gregor, van Genabith and Ostermann (2025), arXiv 2505.16956."
                          "</p><p>Apache-2.0</p>")

    def show_message(self, text: str) -> None:
        self.statusBar().showMessage(text, 15_000)

    # ---- closing ----
    def closeEvent(self, event: QCloseEvent) -> None:
        if self.task_tab.is_running() and not confirm(self, "A task model is training",
                                                      "Cancel its training and quit? Its folder is not written."):
            event.ignore()
            return
        if self.training_tab.is_running():
            if not confirm(self, "A run is going", "Cancel the run and quit? Finished stages stay on disk; "
                                                   "the run can be resumed later."):
                event.ignore()
                return
            self.show_message("Cancelling the run…")
            QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
            try:
                self.training_tab.cancel_and_wait()
            finally:
                QApplication.restoreOverrideCursor()
        self.task_tab.cancel_and_wait()
        self.training_tab.curves.timer.stop()
        self.task_tab.curves.timer.stop()
        self.evaluation_tab.cancel_and_wait()  # an evaluation keeps every finished fine-tuning; a new one continues
        wait_for_all(600_000)  # short background jobs always end; a QThread must not outlive its owner
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.sync()
        event.accept()


def _completed_stages(run_dir: Path) -> dict[str, Path]:
    """'NN-kind (params)' -> model folder, for every completed stage of a run."""
    return {f"{stage.name} ({stage.params / 1e6:.1f}M parameters)": stage.path
            for stage in RunFolder(run_dir).stage_models() if stage.path.is_dir()}
