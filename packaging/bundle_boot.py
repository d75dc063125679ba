"""Start-up shared by the bundled executables: offline unless told otherwise, and the verification child."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

FROZEN_CHILD_ENV = "MINIGLOT_VERIFY_CHILD"  # = engine.verify.FROZEN_CHILD_ENV, read without importing torch


def start(main: Callable[[], int]) -> None:
    """Exit with `main()`, or with the reload check when engine.verify started this executable as its child."""
    # hub: sources fail at once with the engine's "needs network" message; HF_HUB_OFFLINE=0 allows downloads
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if os.environ.get(FROZEN_CHILD_ENV):
        from engine.verify import child_main

        sys.exit(child_main(sys.argv[1:]))
    sys.exit(main())
