"""Logging and progress bars through `rich`, shared by the library and the harness.

Long work (feature extraction, training epochs, trials) always shows a progress bar;
`progress()` returns a rich Progress that hides itself when stderr is not a terminal
unless VITDSI_PROGRESS=1, so CI logs stay readable.
"""

from __future__ import annotations

import logging
import os
import sys

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
    flag = os.environ.get("VITDSI_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "")
    return sys.stderr.isatty()


def progress(transient: bool = True) -> Progress:
    """A rich progress display: description, bar, n/total, elapsed and remaining time."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not progress_enabled(),
    )
