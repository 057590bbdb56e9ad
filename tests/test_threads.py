"""bench.threads.fixed_threads: a block of work runs on the pinned count and every library gets
its own count back, nested blocks included. (Where torch and FAISS share one OpenMP runtime,
restoring FAISS after torch would undo torch's count; that needs a whole 2-thread study in the
same process to show, which test_study's threads test, run after the latency-study tests, covers.)"""

from __future__ import annotations

import cv2
import faiss
import numpy as np
import torch

from bench.threads import fixed_threads


def _work() -> None:
    """Parallel regions in torch and FAISS, so both thread pools are in use when the counts are read."""
    torch.randn(256, 256) @ torch.randn(256, 256)
    index = faiss.IndexFlatIP(16)
    index.add(np.random.default_rng(0).random((512, 16), dtype=np.float32))
    index.search(np.ones((64, 16), np.float32), 5)


def test_pinned_inside_and_restored_after_even_nested():
    _work()
    before = torch.get_num_threads(), faiss.omp_get_max_threads(), cv2.getNumThreads()
    with fixed_threads(before[0] + 2):
        _work()
        assert torch.get_num_threads() == faiss.omp_get_max_threads() == before[0] + 2
        assert cv2.getNumThreads() == before[0] + 2
        with fixed_threads(1):  # a latency study's timed searches inside a worker's trials
            assert torch.get_num_threads() == faiss.omp_get_max_threads() == cv2.getNumThreads() == 1
        assert torch.get_num_threads() == faiss.omp_get_max_threads() == before[0] + 2
    assert (torch.get_num_threads(), faiss.omp_get_max_threads(), cv2.getNumThreads()) == before
