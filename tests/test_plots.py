"""Figures are written as real PNGs that open, for every kind the report uses."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bench.plots import latency_plot, precision_curve, retrieval_grid, training_curves


def _opens(path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_all_figures_are_pngs(tmp_path):
    ns = 2 ** np.arange(8, 13)
    assert _opens(latency_plot({"dsi": (ns, np.ones(5)), "bovw": (ns, ns * 1e-3)}, tmp_path / "lat.png", "t"))[0] > 100
    curves = {"a": np.linspace(1, 0.2, 100)}
    assert _opens(precision_curve(curves, {"a": np.full(100, 0.1)}, tmp_path / "pk.png", "t"))
    assert _opens(training_curves({"run": {"loss": [(0, 2.0), (1, 1.0)], "ia1": [(0, 0.1), (1, 0.5)]}},
                                  tmp_path / "tc.png", "t"))
    rng = np.random.default_rng(0)
    q = rng.integers(0, 255, (2, 3, 8, 8), dtype=np.uint8)
    res = rng.integers(0, 255, (2, 5, 3, 8, 8), dtype=np.uint8)
    assert _opens(retrieval_grid(q, res, rng.random((2, 5)) < 0.5, tmp_path / "grid.png", "t"))
