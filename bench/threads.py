"""Thread pinning: torch, FAISS and OpenCV held to one thread count for a block of work (a
worker's trials, the timed searches of a latency study), so runs on a shared machine compare."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """Pin torch, FAISS and OpenCV to `n` threads for the duration (restored after).

    torch and FAISS may share one OpenMP runtime, where setting either sets both: every old
    count is read before any is set, and torch's is restored last, so neither restore undoes
    the other."""
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss is a dependency
        faiss = None
    try:
        import cv2
    except ImportError:  # pragma: no cover
        cv2 = None
    old_torch = torch.get_num_threads()
    old_faiss = faiss.omp_get_max_threads() if faiss is not None else None
    old_cv = cv2.getNumThreads() if cv2 is not None else None
    torch.set_num_threads(n)
    if faiss is not None:
        faiss.omp_set_num_threads(n)
    if cv2 is not None:
        cv2.setNumThreads(n)
    try:
        yield
    finally:
        if cv2 is not None:
            cv2.setNumThreads(old_cv)
        if faiss is not None:
            faiss.omp_set_num_threads(old_faiss)
        torch.set_num_threads(old_torch)
