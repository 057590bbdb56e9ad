"""Decoding many image files into one uint8 tensor, in parallel, with progress."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from vitdsi.data.prep import load_image_file
from vitdsi.errors import VitDSIError
from vitdsi.log import progress

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def decode_files(paths: Sequence[Path], size: int, what: str = "images") -> torch.Tensor:
    """uint8 [N, 3, size, size] for image files; PIL decoding releases the GIL, so threads scale.
    A file that cannot be decoded is a VitDSIError naming it."""
    out, failed = decode_files_skipping(paths, size, what)
    if failed:
        raise failed[0][1]
    return out


def decode_files_skipping(
    paths: Sequence[Path], size: int, what: str = "images"
) -> tuple[torch.Tensor, list[tuple[int, VitDSIError]]]:
    """Like `decode_files`, but a file that cannot be decoded (corrupt, truncated) leaves its row
    zero and is returned in `failed` as (position, error) instead of stopping the load."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    failed: list[tuple[int, VitDSIError]] = []
    if not paths:
        return out, failed

    def work(i: int) -> int:
        try:
            out[i] = load_image_file(paths[i], size)
        except VitDSIError as e:
            out[i] = 0
            failed.append((i, e))
        return i

    with progress() as bar, ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 1)) as pool:
        task = bar.add_task(f"decoding {what}", total=len(paths))
        for _ in pool.map(work, range(len(paths))):
            bar.advance(task)
    return out, sorted(failed, key=lambda f: f[0])
