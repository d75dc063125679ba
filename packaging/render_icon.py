"""Render the app icon (resources/icons/miniglot.svg) to a PNG for desktops that want bitmap icons:
`render_icon.py OUT.png [SIZE]`."""

from __future__ import annotations

import os
import sys

from engine.resources import ICON


def main(out: str, size: int = 256) -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication([])
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    QSvgRenderer(str(ICON)).render(painter)
    painter.end()
    if not image.save(out):
        sys.exit(f"cannot write {out}")


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:3]))
