"""Whether the Hugging Face hub can be used from here: the one check before any download."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

PROBE_TIMEOUT = 3.0  # seconds to wait for a TCP connection to the hub


def offline_reason() -> str | None:
    """Why the hub cannot be reached (an offline setting, or no connection), or None when it can."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return f"{var} is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=PROBE_TIMEOUT).close()
    except OSError as exc:
        return f"{host} cannot be reached ({exc})"
    return None
