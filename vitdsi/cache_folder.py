"""Cache folders built atomically: a process fills a private folder, marks it complete, and
renames it into place, so processes that start together never read a half-written cache
(used by the coco-mosaic generator and the text encoder's weight extraction)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path


def build_atomically(folder: Path, marker: str, fill: Callable[[Path], None]) -> None:
    """Call `fill(tmp)` on an empty folder of this process's own, write `marker` (text: the
    folder is complete) into it, then rename it to `folder`. A `folder` without its marker
    (left by an interrupted run) is replaced; when another process renamed its complete copy
    into place first, that copy is kept. If `fill` raises, nothing is left behind."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not (tmp / marker).exists():
        (tmp / marker).write_text("complete\n")
    if folder.exists() and not (folder / marker).exists():
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.rename(tmp, folder)
    except OSError:  # another process renamed its complete copy into place first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / marker).exists():
            raise
