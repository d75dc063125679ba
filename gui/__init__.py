"""MiniGlot desktop application (PySide6 + pyqtgraph); talks to the engine through recipes, events and run folders."""
