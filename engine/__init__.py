"""MiniGlot engine: headless compression of multilingual encoders (never imports Qt)."""

__version__ = "0.1.0"
