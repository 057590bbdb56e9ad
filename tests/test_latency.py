"""Latency measurement helpers: fits, crossover and a real (tiny) measurement."""

from __future__ import annotations

import numpy as np
import pytest

from bench.latency import crossover, fit_loglog, index_bytes, measure_search
from vitdsi.retrievers import create


def test_loglog_slope_recovers_constant_and_linear_scaling():
    ns = 2.0 ** np.arange(8, 17)
    assert fit_loglog(ns, np.full_like(ns, 3.0)).slope == pytest.approx(0.0, abs=1e-9)
    fit = fit_loglog(ns, 1e-4 * ns)
    assert fit.slope == pytest.approx(1.0) and fit.r2 == pytest.approx(1.0)
    assert fit.predict(1024.0) == pytest.approx(1e-4 * 1024)
    with pytest.raises(ValueError):
        fit_loglog([256], [1.0])


def test_crossover_between_constant_and_linear():
    ns = 2.0 ** np.arange(8, 17)
    dsi = np.full_like(ns, 2.0)  # O(1): 2 ms
    brute = 1e-3 * ns  # O(N): 2 ms at N = 2000
    assert crossover(ns, dsi, brute) == pytest.approx(2000.0, rel=1e-6)
    assert crossover(ns, dsi, brute * 1e3) == ns[0]  # faster everywhere
    assert crossover(ns, dsi, brute * 1e-6) is None  # never faster in range


def test_measure_search_on_a_real_index(tiny_split):
    r = create("pixels-knn", device="cpu")
    r.index(tiny_split.corpus)
    one = measure_search(r, tiny_split.test.images, k=5, batch_size=1, calls=5, warmup=1)
    many = measure_search(r, tiny_split.test.images, k=5, batch_size=16, calls=3, warmup=1)
    assert one.calls == 5 and many.calls == 3 and many.batch_size == 16
    assert 0 < one.p50_ms <= one.p95_ms
    assert index_bytes(r) > len(tiny_split.corpus) * 3 * 32 * 32 * 4  # float32 features at least
