"""`miniglot`: the desktop application's entry point."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SCREENSHOT_SETTLE_MS = 600
SCREENSHOT_MAX_WAIT_S = 60.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="miniglot", description="MiniGlot: compress multilingual encoders "
                                     "into small monolingual students, and watch it happen.")
    parser.add_argument("--recipe", help="open this recipe file, or preset:<name> "
                        "(default: the last one, or the offline default)")
    parser.add_argument("--run", type=Path, help="open this run folder (followed live while it is being written)")
    parser.add_argument("--runs-dir", type=Path, help="folder listed in the Runs tab (default: ./runs)")
    parser.add_argument("--screenshots", type=Path, metavar="DIR",
                        help="render every tab offscreen into DIR as PNG files, then exit")
    parser.add_argument("--self-test", action="store_true",
                        help="compress a bundled tiny model, reload it, open and close the window offscreen; "
                             "print one line and exit 0 (or 1 with the reason)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.self_test:
        os.environ["QT_QPA_PLATFORM"] = os.environ.get("QT_QPA_PLATFORM") or "offscreen"
        from gui.selftest import main as self_test

        return self_test()
    if args.screenshots is not None:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        if args.recipe is not None:  # batch mode: no dialog would ever be answered, so say it here and stop
            from engine.errors import RecipeError
            from engine.resources import load_recipe

            try:
                load_recipe(args.recipe)
            except RecipeError as exc:
                print(f"miniglot: {exc}", file=sys.stderr)
                return exc.exit_code
    from PySide6.QtWidgets import QApplication

    from gui import style
    from gui.main_window import APPLICATION, ORGANISATION, MainWindow
    from gui.runs_model import newest_run

    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setOrganizationName(ORGANISATION)
    app.setApplicationName(APPLICATION)
    style.apply(app)
    window = MainWindow(runs_dir=args.runs_dir)
    if args.recipe is None or not window.load_recipe(args.recipe):
        window.restore_recipe()
        if args.recipe is not None:
            window.show_message(f"Could not open {args.recipe}; showing the last recipe instead")
    run_dir = args.run
    if run_dir is None and args.screenshots is not None:
        run_dir = newest_run(args.runs_dir or Path("runs"))
    if run_dir is not None:
        window.open_run(run_dir)
    if args.screenshots is not None:
        return screenshots(window, args.screenshots)
    window.show()
    return app.exec()


def screenshots(window, out_dir: Path) -> int:
    """Visit every tab, save one PNG per tab into `out_dir`, close the window."""
    from PySide6.QtCore import QCoreApplication

    from gui.event_loop import idle_workers, run_event_loop

    out_dir.mkdir(parents=True, exist_ok=True)
    window.resize(1440, 900)
    window.show()
    idle_workers(SCREENSHOT_MAX_WAIT_S, SCREENSHOT_SETTLE_MS)  # e.g. the Setup tab inspecting the teacher
    for index in range(window.tabs.count()):
        window.tabs.setCurrentIndex(index)
        run_event_loop(SCREENSHOT_SETTLE_MS)
        name = window.tabs.tabText(index).lower().replace(" ", "-")
        path = out_dir / f"{index + 1:02d}-{name}.png"
        window.grab().save(str(path))
        print(path)
    window.close()
    QCoreApplication.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(main())
