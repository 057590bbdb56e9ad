"""Logging and progress bars through `rich`, shared by the library and the harness.

Long work (feature extraction, training epochs, trials) always shows a progress bar;
`progress()` returns a rich Progress that hides itself when stderr is not a terminal
unless VITDSI_PROGRESS=1, so CI logs stay readable; hidden, it prints a plain line
(description, steps done, elapsed) at least every 30 s (VITDSI_PROGRESS_EVERY), from a
background ticker when a step (an epoch, a trial) takes longer, so a long step is never
silent. VITDSI_PROGRESS=0 turns both off (tests).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from vitdsi import interrupt

console = Console(stderr=True)

_configured = False


def get_logger(name: str) -> logging.Logger:
    """A logger writing through rich; level from VITDSI_LOG_LEVEL (default INFO)."""
    global _configured
    if not _configured:
        root = logging.getLogger("vitdsi")
        root.setLevel(os.environ.get("VITDSI_LOG_LEVEL", "INFO").upper())
        root.addHandler(RichHandler(console=console, show_path=False, rich_tracebacks=True))
        root.propagate = False
        _configured = True
    if not name.startswith("vitdsi"):
        name = f"vitdsi.{name}"
    return logging.getLogger(name)


def progress_enabled() -> bool:
    """Live progress bars: on a terminal, or anywhere with VITDSI_PROGRESS=1."""
    flag = os.environ.get("VITDSI_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "")
    return sys.stderr.isatty()


def progress_lines_every() -> float | None:
    """Seconds between plain progress lines when the bars are hidden because the output is not a
    terminal (CI logs, `make demo > log`): VITDSI_PROGRESS_EVERY, default 30; None when the live
    bars show or VITDSI_PROGRESS=0 asks for silence."""
    if progress_enabled() or os.environ.get("VITDSI_PROGRESS") is not None:
        return None
    try:
        return max(0.0, float(os.environ.get("VITDSI_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


class _Progress(Progress):
    """A rich Progress that, while hidden (output not a terminal), still prints one plain line per
    unfinished task every `every` seconds: its description (e.g. "dsi index loss 0.412 IA@1 0.53"),
    steps done of the total (epochs, images, trials) and the time elapsed. Updates print when due;
    between them a daemon ticker does, so an epoch longer than `every` still shows it is alive."""

    def __init__(self, *columns, every: float | None = None, **kwargs) -> None:
        super().__init__(*columns, **kwargs)
        self._every = every
        self._started: dict = {}
        self._last_line: dict = {}
        self._line_lock = threading.Lock()  # the ticker and the caller's updates both print
        self._ticker: threading.Thread | None = None
        self._stop_ticker = threading.Event()

    def start(self) -> None:
        super().start()
        if self._every and self._ticker is None:  # every=0 prints on each update: no ticker needed
            self._stop_ticker.clear()
            self._ticker = threading.Thread(target=self._tick, name="vitdsi-progress-lines", daemon=True)
            self._ticker.start()

    def stop(self) -> None:
        if self._ticker is not None:
            self._stop_ticker.set()
            self._ticker.join()
            self._ticker = None
        super().stop()

    def _tick(self) -> None:
        while not self._stop_ticker.wait(min(self._every, 1.0)):
            for task_id in list(self._started):
                task = self._tasks.get(task_id)
                if task is not None and not task.finished:
                    self._maybe_line(task_id)

    def add_task(self, description, *args, **kwargs):
        task_id = super().add_task(description, *args, **kwargs)
        self._started[task_id] = self._last_line[task_id] = time.monotonic()
        return task_id

    def update(self, task_id, *args, **kwargs) -> None:
        super().update(task_id, *args, **kwargs)
        self._maybe_line(task_id)
        interrupt.check()  # a progress step is a safe point to stop at

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_line(task_id)
        interrupt.check()

    def _maybe_line(self, task_id) -> None:
        if self._every is None or task_id not in self._started:
            return
        with self._line_lock:
            now = time.monotonic()
            if now - self._last_line[task_id] < self._every:
                return
            self._last_line[task_id] = now
        task = self._tasks.get(task_id)
        if task is None:
            return
        elapsed = int(now - self._started[task_id])
        done = f"{int(task.completed)}/{int(task.total)}" if task.total else f"{int(task.completed)}"
        self.console.print(
            f"progress: {task.description} - {done} after {elapsed // 60}:{elapsed % 60:02d}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def progress(transient: bool = True) -> Progress:
    """A rich progress display: description, bar, n/total, elapsed and remaining time. When the
    output is not a terminal the bar is hidden and a plain line is printed at least every 30 s
    instead (see `progress_lines_every`); VITDSI_PROGRESS=0 silences both, =1 forces the bar."""
    return _Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not progress_enabled(),
        every=progress_lines_every(),
    )
