"""The fault-injection tests' child: run or resume a recipe, SIGKILL this process at a chosen point.

    python fault_child.py RECIPE_OR_RUN_DIR POINT

POINT is `after-stage-N` (stage N's model and manifest entry are written), `reload-N` (stage N's model
is in its temporary folder and the fresh-process reload check is about to run) or `none`.
"""

from __future__ import annotations

import os
import signal
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
    path = Path(target)
    if path.is_dir():
        print(pipeline.run(None, sink, resume=path))
    else:
        print(pipeline.run(Recipe.load(path), sink))


if __name__ == "__main__":
    main(*sys.argv[1:])
