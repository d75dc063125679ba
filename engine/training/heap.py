"""Large tensors without page faults while training (glibc).

glibc serves every allocation over 32 MB with its own mmap and unmaps it when it is freed, so the next
allocation of that size faults its pages in again, each one zeroed by the kernel. A training step allocates
and frees its large tensors every step: at a 250k vocabulary the tied embedding's gradient alone is three
384 MB buffers a step (the embedding's, the decoder's and their sum), and their page faults cost more than
the step's matrix products (bench/README.md, "FLOP utilisation"). While `retained_heap()` is active glibc
serves large blocks from its heap and keeps freed memory for the next step; when the last one ends, the
defaults come back and the free memory is returned to the OS (`malloc_trim`), so a long-lived process (the
GUI) does not keep a finished run's memory. Elsewhere (other C libraries, other systems) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults
KEEP_ALL = 2**31 - 1  # a trim threshold no free block reaches

_lock = threading.Lock()
_active = 0


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl, macOS and Windows have none  # noqa: B018
        libc.mallopt, libc.malloc_trim  # noqa: B018
    except (AttributeError, OSError, TypeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


@contextlib.contextmanager
def retained_heap() -> Iterator[None]:
    """Keep freed memory for reuse instead of returning it to the OS, until the last such block ends (nests,
    thread-safe). Usable as a decorator."""
    global _active
    libc = _glibc()
    if libc is None:
        yield
        return
    with _lock:
        if _active == 0:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, KEEP_ALL)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
