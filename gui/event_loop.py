"""Running the Qt event loop from scripts (screenshots, self-test, benchmarks) while work threads go on."""

from __future__ import annotations

import time

from PySide6.QtCore import QEventLoop, QTimer

from gui.worker import live_workers


def run_event_loop(msecs: int) -> None:
    """Process GUI events for `msecs` while work threads go on.

    `QTest.qWait` keeps the GIL between its event-processing rounds, which starves work threads:
    a teacher inspection that takes 6 s under a real event loop never finished under it.
    """
    loop = QEventLoop()
    QTimer.singleShot(msecs, loop.quit)
    loop.exec()


def idle_workers(timeout_s: float, settle_ms: int = 600) -> bool:
    """Run the event loop until no worker has run for two settle periods (debounced jobs start late)."""
    deadline, idle = time.monotonic() + timeout_s, 0
    while idle < 2 and time.monotonic() < deadline:
        run_event_loop(settle_ms)
        idle = 0 if live_workers() else idle + 1
    return idle >= 2
