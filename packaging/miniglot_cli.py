"""Bundle entry point of `miniglot-cli`."""

from bundle_boot import start

from engine.cli import main

start(main)
