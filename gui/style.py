"""Look and feel: one light theme, status colours, plot colours and the app icon."""

from __future__ import annotations

from PySide6.QtGui import QColor, QIcon, QPalette
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

from engine.resources import ICON

ACCENT = "#2563eb"
STATUS_COLOURS = {  # background, text
    "pending": ("#e5e7eb", "#374151"),
    "running": ("#dbeafe", "#1d4ed8"),
    "completed": ("#dcfce7", "#15803d"),
    "skipped": ("#ecfdf5", "#047857"),
    "failed": ("#fee2e2", "#b91c1c"),
    "cancelled": ("#ffedd5", "#c2410c"),
    "warning": ("#fef3c7", "#a16207"),  # a finished stage whose quality gate warned
}
STATUS_LABELS = {"pending": "pending", "running": "running", "completed": "done", "skipped": "done (resumed)",
                 "failed": "failed", "cancelled": "cancelled"}
# Colour-blind-safe categorical colours (Okabe–Ito), one per loss component.
SERIES_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
# Light backgrounds for labelled spans of text (entities, tags), dark text stays readable on each.
TAG_COLOURS = ["#bfdbfe", "#fde68a", "#bbf7d0", "#fbcfe8", "#ddd6fe", "#fed7aa", "#a5f3fc", "#e5e7eb"]

STYLESHEET = f"""
QMainWindow, QDialog {{ background: #f8fafc; }}
QTabWidget::pane {{ border: 1px solid #d1d5db; border-radius: 4px; background: white; top: -1px; }}
QTabBar::tab {{ padding: 7px 18px; margin-right: 2px; border: 1px solid #d1d5db; border-bottom: none;
    border-top-left-radius: 4px; border-top-right-radius: 4px; background: #eef2f7; color: #374151; }}
QTabBar::tab:selected {{ background: white; color: #111827; font-weight: 600; }}
QGroupBox {{ font-weight: 600; border: 1px solid #e5e7eb; border-radius: 6px; margin-top: 12px;
    padding: 10px 8px 8px 8px; }}
QGroupBox::title {{ subcontrol-origin: margin; left: 10px; padding: 0 4px; color: #1f2937; }}
QPushButton {{ padding: 5px 14px; border: 1px solid #cbd5e1; border-radius: 4px; background: white; }}
QPushButton:hover {{ background: #f1f5f9; }}
QPushButton:disabled {{ color: #9ca3af; background: #f3f4f6; }}
QPushButton#primary {{ background: {ACCENT}; color: white; border-color: {ACCENT}; font-weight: 600; }}
QPushButton#primary:hover {{ background: #1d4ed8; }}
QPushButton#primary:disabled {{ background: #93c5fd; border-color: #93c5fd; }}
QProgressBar {{ border: 1px solid #cbd5e1; border-radius: 4px; background: #f1f5f9; text-align: center;
    min-height: 18px; }}
QProgressBar::chunk {{ background: {ACCENT}; border-radius: 3px; }}
QPlainTextEdit, QTableWidget {{ border: 1px solid #e5e7eb; border-radius: 4px; background: white; }}
QHeaderView::section {{ background: #f1f5f9; padding: 4px 6px; border: none;
    border-bottom: 1px solid #e5e7eb; font-weight: 600; }}
QStatusBar {{ background: #eef2f7; color: #374151; }}
"""


def apply(app: QApplication) -> None:
    """Fusion style, a light palette and the stylesheet, whatever the desktop theme."""
    app.setStyle("Fusion")
    palette = app.palette()
    palette.setColor(QPalette.ColorRole.Window, QColor("#f8fafc"))
    palette.setColor(QPalette.ColorRole.Base, QColor("white"))
    palette.setColor(QPalette.ColorRole.Text, QColor("#111827"))
    palette.setColor(QPalette.ColorRole.WindowText, QColor("#111827"))
    palette.setColor(QPalette.ColorRole.Highlight, QColor(ACCENT))
    app.setPalette(palette)
    font = app.font()
    font.setPointSizeF(max(font.pointSizeF(), 10.0))
    app.setFont(font)
    app.setStyleSheet(STYLESHEET)
    app.setWindowIcon(icon())


def icon() -> QIcon:
    return QIcon(str(ICON))


def status_css(status: str) -> str:
    background, text = STATUS_COLOURS.get(status, STATUS_COLOURS["pending"])
    return (f"background: {background}; color: {text}; border: 1px solid {text}; border-radius: 5px; "
            f"padding: 6px 10px; font-weight: 600;")


def show_error(parent: QWidget | None, title: str, message: str, details: str = "") -> None:
    """A modal error dialog; the traceback (if any) sits behind "Show Details..."."""
    box = QMessageBox(QMessageBox.Icon.Critical, title, message, QMessageBox.StandardButton.Ok, parent)
    if details:
        box.setDetailedText(details)
    box.exec()
