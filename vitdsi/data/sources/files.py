"""Decoding many image files into one uint8 tensor, in parallel, with progress."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from vitdsi.data.prep import load_image_file
from vitdsi.log import progress

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def decode_files(paths: Sequence[Path], size: int, what: str = "images") -> torch.Tensor:
    """uint8 [N, 3, size, size] for image files; PIL decoding releases the GIL, so threads scale."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    if not paths:
        return out

    def work(i: int) -> int:
        out[i] = load_image_file(paths[i], size)
        return i

    with progress() as bar, ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 1)) as pool:
        task = bar.add_task(f"decoding {what}", total=len(paths))
        for _ in pool.map(work, range(len(paths))):
            bar.advance(task)
    return out
