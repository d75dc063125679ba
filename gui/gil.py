"""Sharing one interpreter with work threads: what keeps the GUI thread responsive and safe while they run.

- `import_engine`: the engine's heavy libraries are imported once, one thread at a time;
- `favour_gui_thread`: a short GIL switch interval, so repaints are not starved;
- `compute_threads`: torch threads for a run, one core left to the GUI;
- `collect_on_gui_thread`: while work threads run, the cyclic garbage collector runs only on the GUI thread.
"""

from __future__ import annotations

import gc
import os
import sys
import threading

from pyqtgraph.util.garbage_collector import GarbageCollector

SWITCH_INTERVAL = 0.001  # seconds a Python thread may hold the GIL before the GUI thread gets a turn

_IMPORT_LOCK = threading.Lock()
_imported = False
_collector: GarbageCollector | None = None  # while work threads run: cyclic garbage collected on the GUI thread


def import_engine() -> None:
    """Import the engine's heavy libraries once, one thread at a time.

    transformers' lazy top-level module is not safe to import from two threads at once (it raises
    "cannot import name 'AutoConfig'"), so every work thread passes through here first.
    """
    global _imported
    with _IMPORT_LOCK:
        if _imported:
            return
        import transformers

        import engine.pipeline  # noqa: F401  (torch, transformers' BERT classes, every stage)

        for name in ("AutoConfig", "AutoTokenizer", "AutoModel", "AutoModelForMaskedLM"):
            getattr(transformers, name)
        # the libraries' millions of long-lived objects leave the collector's view: a full collection
        # in a work thread would otherwise hold the GIL (and freeze the window) for a tenth of a second
        gc.freeze()
        _imported = True


def favour_gui_thread() -> None:
    """Shorten the GIL switch interval (default 5 ms) while work threads run.

    The GUI thread gives up the GIL in every Qt call it makes; a work thread running Python code
    then keeps it for a whole interval, so a repaint of a few hundred Qt calls could take a
    second. With 1 ms the event loop stays responsive (measured by bench/gui_responsiveness.py).
    """
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))


def compute_threads() -> int:
    """Torch threads for a run: leave one core to the GUI so the event loop stays responsive."""
    return max(1, (os.cpu_count() or 2) - 1)


def collecting_on_gui_thread() -> bool:
    return _collector is not None


def collect_on_gui_thread(active: bool) -> None:
    """While work threads run, the cyclic garbage collector runs only on the GUI thread, on a timer.

    Otherwise it runs in whichever thread allocates when a threshold is crossed — a work thread
    building tensors, say — and destroys any Qt objects caught in garbage cycles there, which
    crashes Qt (seen: a segfault in the window's event loop while a work thread read a tokenizer).
    """
    global _collector
    if active and _collector is None:
        _collector = GarbageCollector(interval=0.25)  # disables automatic collection until stopped
    elif not active and _collector is not None:
        _collector.timer.stop()
        _collector = None
        gc.enable()
