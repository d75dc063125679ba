"""Bundle entry point of `MiniGlot` (the desktop app; `--self-test` checks the installation)."""

from bundle_boot import start

from gui.app import main

start(main)
