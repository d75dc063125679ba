"""The fault-injection tests' child: run or resume a recipe, SIGKILL this process at a chosen point.

    python fault_child.py RECIPE_OR_RUN_DIR POINT

POINT is `after-stage-N` (stage N's model and manifest entry are written), `reload-N` (stage N's model
is in its temporary folder and the fresh-process reload check is about to run), `in-reload-N` (stage N's
reload check runs in its process, stopped by SIGSTOP so it cannot end on its own; its pid and scratch folder
are written to `check.json` in the working folder) or `none`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from engine import pipeline
from engine.events import FanOut, StageFinished
from engine.recipe import Recipe


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAfterStage:
    def __init__(self, index: int) -> None:
        self.index = index

    def emit(self, event) -> None:
        if isinstance(event, StageFinished) and event.index == self.index and event.status == "completed":
            kill()


def main(target: str, point: str) -> None:
    where, _, number = point.rpartition("-")
    sink = KillAfterStage(int(number)) if where == "after-stage" else FanOut()
    if where == "reload":
        real, calls = pipeline.verify_folder, []

        def verify_then_die(*args, **kwargs):
            calls.append(1)
            if len(calls) == int(number):
                kill()
            return real(*args, **kwargs)

        pipeline.verify_folder = verify_then_die
    if where == "in-reload":
        calls = []

        def start_check_then_die(command, *, capture_output, text, timeout, **kwargs):
            calls.append(1)
            if len(calls) < int(number):
                return real_run(command, capture_output=capture_output, text=text, timeout=timeout, **kwargs)
            check = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
            os.kill(check.pid, signal.SIGSTOP)
            Path("check.json").write_text(json.dumps({"pid": check.pid, "scratch": command[-2]}))
            kill()

        real_run, subprocess.run = subprocess.run, start_check_then_die  # engine.verify's only call
    path = Path(target)
    if path.is_dir():
        print(pipeline.run(None, sink, resume=path))
    else:
        print(pipeline.run(Recipe.load(path), sink))


if __name__ == "__main__":
    main(*sys.argv[1:])
