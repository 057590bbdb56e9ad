"""Seeded, class-stratified sampling of image positions, shared by sources and splits."""

from __future__ import annotations

import numpy as np

from vitdsi.errors import VitDSIError


def stratified_sample(labels: np.ndarray, n: int, seed: int, what: str = "images") -> np.ndarray:
    """`n` positions drawn without replacement so each class keeps its share (largest
    remainder rounding), in random order. `labels` are one class per item (-1 allowed)."""
    labels = np.asarray(labels)
    total = labels.shape[0]
    if n > total:
        raise VitDSIError(
            f"asked for {n} {what} but only {total} are available; lower the number to at most {total}"
        )
    if n < 0:
        raise VitDSIError(f"number of {what} must be non-negative, got {n}")
    if n == 0:
        return np.empty(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = counts * (n / total)
    quota = np.floor(exact).astype(np.int64)
    short = n - quota.sum()
    if short:
        # largest remainders first; ties broken at random (seeded) rather than by class order
        order = np.lexsort((rng.random(len(classes)), -(exact - quota)))
        quota[order[:short]] += 1
    # random key per item; within each class keep the `quota` smallest keys
    keys = rng.random(total)
    order = np.lexsort((keys, inverse))  # grouped by class, random within class
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_class = np.empty(total, dtype=np.int64)
    rank_in_class[order] = np.arange(total) - np.repeat(starts, counts)
    chosen = np.flatnonzero(rank_in_class < quota[inverse])
    return rng.permutation(chosen).astype(np.int64)
