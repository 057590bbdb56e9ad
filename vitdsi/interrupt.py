"""Ctrl-C and SIGTERM as a stop request, acted on at safe points.

Inside `deferred_interrupts()` the first SIGINT / SIGTERM only sets a flag; `check()` raises
`KeyboardInterrupt` where stopping is safe: between trials, after a training epoch, at a
progress-bar step. A KeyboardInterrupt raised by the signal handler itself could land anywhere,
e.g. in a garbage-collection callback, which swallows it, or half-way through a database write.
A second signal raises at once, for work that reaches no safe point.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_requested = threading.Event()


def request() -> None:
    """Ask the work under way to stop at its next safe point."""
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def check() -> None:
    """Raise KeyboardInterrupt if a stop was requested (only in the main thread, where the
    signal would have landed). The request is delivered once: the cleanup that the interrupt
    runs may pass safe points too."""
    if _requested.is_set() and threading.current_thread() is threading.main_thread():
        _requested.clear()
        raise KeyboardInterrupt


def _handler(signum, frame) -> None:
    if _requested.is_set():
        raise KeyboardInterrupt  # a second Ctrl-C before a safe point was reached: stop now
    _requested.set()


@contextlib.contextmanager
def deferred_interrupts(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """SIGINT / SIGTERM set the stop flag instead of raising (see the module docstring); the
    previous handlers come back, and the flag is cleared, on exit. The handlers are installed
    even where the process started with SIGINT ignored (`bench run ... &` in a script)."""
    previous = {s: signal.signal(s, _handler) for s in signals}
    _requested.clear()
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _requested.clear()
