"""Benchmark: how steadily the window's event loop ticks while a run streams events, versus idle.

A shown Training tab (offscreen) runs the bundled self-test recipe — the tiny BERT of
`resources/samples` with weights from a fixed seed, all four stages, distill and shrink lengthened to
`--steps` — through `RunWorker`, exactly as the Start button does. A `--interval-ms` QTimer records
when each tick arrives: first with the tab idle for `--idle-seconds`, then from the start of the run
to its end (loading the engine, four stages, saving). Both phases run in this one process.

A frozen window (work on the GUI thread, a work thread holding the GIL) shows as late ticks and
stalls of seconds; another process keeping the cores busy shows as a few gaps of 0.1-0.2 s.
Prints one JSON line, then a short summary.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    args = parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from gui import style
    from gui.event_loop import run_event_loop
    from gui.training_tab import TrainingTab

    app = QApplication.instance() or QApplication([sys.argv[0]])
    style.apply(app)
    with tempfile.TemporaryDirectory(prefix="miniglot-bench-gui-") as tmp:
        recipe = bench_recipe(Path(tmp), args.steps)
        tab = TrainingTab(lambda: recipe)
        tab.resize(1200, 800)
        tab.show()  # painted: the live curves are redrawn during the run
        ticks: list[float] = []
        timer = QTimer()
        timer.setInterval(args.interval_ms)
        timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        timer.start()
        run_event_loop(int(args.idle_seconds * 1000))
        idle, ticks[:] = list(ticks), []

        statuses: list[str] = []
        loop = QEventLoop()

        def finished(_run_dir: object, status: str) -> None:
            statuses.append(status)
            loop.quit()

        tab.run_finished.connect(finished)
        QTimer.singleShot(int(args.timeout * 1000), loop.quit)
        started = time.perf_counter()
        tab.start()
        loop.exec()
        seconds = time.perf_counter() - started
        running = list(ticks)
        timer.stop()
        if not statuses:
            tab.cancel_and_wait()
    result = {"run": gap_stats(running), "idle": gap_stats(idle), "run_status": statuses[0] if statuses else "timeout",
              "run_seconds": round(seconds, 1), "steps": args.steps, "interval_ms": args.interval_ms,
              "idle_seconds": args.idle_seconds, "cpu_count": os.cpu_count()}
    print(json.dumps(result), flush=True)
    print(summary(result))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="distill and shrink steps of the run")
    parser.add_argument("--interval-ms", type=int, default=10, help="the timer's tick interval")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="length of the idle phase")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on the run after this many seconds")
    return parser.parse_args()


def bench_recipe(tmp: Path, steps: int):
    """The self-test recipe on its tiny BERT, runs in `tmp`, no reload checks, `steps` per training stage."""
    from engine.recipe import Recipe
    from gui.selftest import RECIPE, SAMPLES, tiny_teacher

    data = Recipe.load(RECIPE).to_dict()
    data["teacher"]["source"] = str(tiny_teacher(tmp / "tiny-bert"))
    data["run"].update(runs_dir=str(tmp / "runs"), name="bench-gui", verify=False)
    for stage in data["stages"]:
        if "max_steps" in stage:
            stage.update(max_steps=steps, eval_every=max(1, steps // 4))
    return Recipe.from_dict(data, SAMPLES)


def gap_stats(ticks: list[float]) -> dict[str, float | int]:
    """Median, 99th percentile and longest gap between consecutive ticks, in milliseconds."""
    gaps = sorted(b - a for a, b in itertools.pairwise(ticks))
    if not gaps:
        return {"ticks": len(ticks)}
    return {"ticks": len(ticks), "median_ms": round(1000 * gaps[len(gaps) // 2], 1),
            "p99_ms": round(1000 * gaps[int(0.99 * (len(gaps) - 1))], 1), "longest_ms": round(1000 * gaps[-1], 1)}


def summary(r: dict) -> str:
    lines = [f"run {r['run_status']} in {r['run_seconds']} s ({r['steps']} steps per training stage), "
             f"timer every {r['interval_ms']} ms"]
    for phase in ("idle", "run"):
        s = r[phase]
        if "median_ms" in s:
            lines.append(f"{phase:>5}: {s['ticks']:5d} ticks, gaps median {s['median_ms']:.1f} ms, "
                         f"99th percentile {s['p99_ms']:.1f} ms, longest {s['longest_ms']:.1f} ms")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
