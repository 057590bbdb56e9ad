"""Visual vocabularies: k-means on a seeded descriptor sample, and nearest-centroid
quantisation in one vectorised step (paper section 3.1; Sivic & Zisserman, "Video Google").

The original implementation assigned each descriptor to its word in Python loops over
descriptors and centroids; `nearest_centroid` instead scores a whole block of descriptors
against all centroids with one fused matrix product, blocks bounded in memory.
`nearest_centroid_loop` keeps a per-descriptor loop as the reference for tests and the
benchmark only.
"""

from __future__ import annotations

import numpy as np
import torch

from vitdsi.errors import VitDSIError


def train_vocabulary(
    desc: np.ndarray, k: int, *, seed: int = 0, sample: int = 100_000, iters: int = 20
) -> np.ndarray:
    """float32 [k, D] centroids: faiss k-means on at most `sample` descriptors drawn with `seed`."""
    import faiss  # heavy; only for k-means vocabularies

    n = len(desc)
    if k < 1:
        raise VitDSIError(f"the vocabulary needs K >= 1 visual words, got K={k}")
    if n < k:
        raise VitDSIError(
            f"only {n} descriptors to learn K={k} visual words; use a smaller K, dense SIFT "
            "(a smaller step gives more descriptors), or a larger corpus"
        )
    rng = np.random.default_rng(seed)
    take = rng.choice(n, size=min(n, max(sample, k)), replace=False) if n > sample else np.arange(n)
    x = np.ascontiguousarray(desc[np.sort(take)], dtype=np.float32)
    kmeans = faiss.Kmeans(
        x.shape[1],
        k,
        niter=iters,
        seed=seed,
        verbose=False,
        min_points_per_centroid=1,  # few points per word is fine; silences faiss' warning
        max_points_per_centroid=len(x),  # we sampled already; faiss must not subsample again
    )
    kmeans.train(x)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def nearest_centroid(
    x: np.ndarray | torch.Tensor,
    centroids: np.ndarray | torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    block_elements: int = 2**22,
) -> np.ndarray:
    """int64 [M]: index of the nearest centroid (squared L2; lowest index on ties) of each row.

    One fused matrix product per block of rows, ||c||^2 - 2 x.c (||x||^2 is the same for
    every centroid of a row, so it cannot change the argmin); a block holds at most
    `block_elements` distances, small enough to stay in cache. For integer-valued rows and
    centroids (raw SIFT) the arithmetic is exact, so the answer equals the loop's exactly.
    """
    x = torch.as_tensor(x, dtype=torch.float32, device=device)
    c = torch.as_tensor(centroids, dtype=torch.float32, device=device)
    if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1]:
        raise VitDSIError(
            f"descriptors {tuple(x.shape)} and centroids {tuple(c.shape)} must be 2-d with the same width"
        )
    out = torch.empty(x.shape[0], dtype=torch.int64, device=device)
    c_sq = (c * c).sum(1)
    c_t = c.T.contiguous()
    rows = max(1, block_elements // max(1, c.shape[0]))
    for s in range(0, x.shape[0], rows):
        out[s : s + rows] = torch.addmm(c_sq, x[s : s + rows], c_t, alpha=-2.0).argmin(1)
    return out.cpu().numpy()


def nearest_centroid_loop(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Reference only (tests, benchmark): one descriptor at a time, numpy over the centroids."""
    out = np.empty(len(x), dtype=np.int64)
    for i, d in enumerate(x):
        out[i] = np.argmin(((centroids - d) ** 2).sum(1))
    return out
