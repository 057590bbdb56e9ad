"""Figures are written as real PNGs that open, for every kind the report uses."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bench.plots import latency_plot, pareto_plot, precision_curve, retrieval_grid, training_curves


def _opens(path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_all_figures_are_pngs(tmp_path):
    ns = 2 ** np.arange(8, 13)
    assert (
        _opens(latency_plot({"dsi": (ns, np.ones(5)), "bovw": (ns, ns * 1e-3)}, tmp_path / "lat.png", "t"))[0]
        > 100
    )
    curves = {"a": np.linspace(1, 0.2, 100)}
    assert _opens(precision_curve(curves, {"a": np.full(100, 0.1)}, tmp_path / "pk.png", "t"))
    assert _opens(
        training_curves(
            {"run": {"loss": [(0, 2.0), (1, 1.0)], "ia1": [(0, 0.1), (1, 0.5)]}}, tmp_path / "tc.png", "t"
        )
    )
    rng = np.random.default_rng(0)
    q = rng.integers(0, 255, (2, 3, 8, 8), dtype=np.uint8)
    res = rng.integers(0, 255, (2, 5, 3, 8, 8), dtype=np.uint8)
    assert _opens(retrieval_grid(q, res, rng.random((2, 5)) < 0.5, tmp_path / "grid.png", "t"))
    points = {"dsi": (2.0, 0.4), "flat": (0.5, 0.9), "hnsw": (0.1, float("nan"))}  # a NaN point is left out
    panels = [
        ("ms, batch 1", "MAP@10", points, {"flat"}),
        ("ms, batch 256", "IA@1", points, {"flat", "dsi"}),
        ("ms, batch 1", "R@1", points, set()),
    ]
    w, h = _opens(pareto_plot(panels, 2, {"dsi"}, tmp_path / "pareto.png", "t"))
    assert w > h  # two panels a row, two rows (the fourth cell hidden)
