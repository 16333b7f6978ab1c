"""Giving freed heap memory back to the system once a burst of writes settles.

An ingest allocates and frees a lot (request bodies, token offsets, vectors, the lexical
index's arena, HNSW growth); glibc keeps what was freed in its arenas, so a process's RSS stays
at its peak long after. ``malloc_trim(0)`` returns the free pages of every arena. It walks them
with each arena locked (tens of ms on a fragmented heap of 100 MB), so it is not run on a
request's path: :func:`trim_soon` asks for one, and a daemon thread runs it once no request
has asked for ``delay`` seconds (a steady ingest trims once, when it ends). Elsewhere than on
glibc it does nothing. :func:`ragserve.service.limit_malloc_arenas` caps the arenas themselves.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Seconds without a new request before the trim runs.
TRIM_DELAY = 1.0


def _glibc_trim() -> Callable[[], object] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


class Trimmer:
    """Runs ``trim`` on a thread of its own ``delay`` seconds after the last :meth:`request`."""

    def __init__(self, trim: Callable[[], object] | None, delay: float = TRIM_DELAY) -> None:
        self._trim = trim
        self._delay = delay
        self._due: float | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        if self._trim is None:
            return
        with self._cond:
            self._due = time.monotonic() + self._delay
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ragserve-trim", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        assert self._trim is not None
        while True:
            with self._cond:
                while self._due is None:
                    self._cond.wait()
                left = self._due - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._due = None
            started = time.perf_counter()
            self._trim()
            log.debug("malloc_trim: %.1f ms", (time.perf_counter() - started) * 1000)


_process = Trimmer(_glibc_trim())


def trim_soon() -> None:
    """Give the process's free heap back to the system once its writes have settled."""
    _process.request()
