"""Thread pinning: torch, FAISS and OpenCV held to one thread count for a block of work (a
worker's trials, the timed searches of a latency study), so runs on a shared machine compare."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """Pin torch, FAISS and OpenCV to `n` threads for the duration (restored after)."""
    old_torch = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        import faiss

        old_faiss = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(n)
    except ImportError:  # pragma: no cover - faiss is a dependency
        faiss, old_faiss = None, None
    try:
        import cv2

        old_cv = cv2.getNumThreads()
        cv2.setNumThreads(n)
    except ImportError:  # pragma: no cover
        cv2, old_cv = None, None
    try:
        yield
    finally:
        torch.set_num_threads(old_torch)
        if faiss is not None:
            faiss.omp_set_num_threads(old_faiss)
        if cv2 is not None:
            cv2.setNumThreads(old_cv)
