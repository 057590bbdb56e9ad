"""Benchmark of the foundation: dataset loading and metric throughput.

    python scripts/bench_foundation.py [--repeats 3]

Reports (a) loading all 70,000 Fashion-MNIST images into a uint8 tensor (target < 5 s)
and (b) every metric for 10,000 queries at k = 100 (target < 1 s), single- and
multi-label. Times are the best and median of `--repeats` runs, in one process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from vitdsi.data import Relevance, load_dataset
from vitdsi.metrics import DEFAULT_METRICS, INDEXING_METRICS, evaluate, indexing_accuracy


def timed(fn, repeats: int) -> tuple[float, float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    console = Console()
    table = Table(
        title=f"foundation benchmark (torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )
    for col in ("what", "best s", "median s", "target", "detail"):
        table.add_column(col)

    for fit, size in (("resize", 32), ("pad", 32), ("resize", 28)):
        best, med, ds = timed(
            lambda fit=fit, size=size: load_dataset("fashion-mnist", size=size, fit=fit), args.repeats
        )
        table.add_row(
            f"load fashion-mnist ({fit} to {size}px)",
            f"{best:.2f}",
            f"{med:.2f}",
            "< 5 s",
            f"{tuple(ds.images.shape)} {ds.images.dtype}",
        )

    rng = np.random.default_rng(0)
    n_q, n_c, k = 10_000, 70_000, 100
    ids = np.argsort(rng.random((n_q, 1000)), axis=1)[:, :k] * 70  # distinct ids per row in [0, 70000)
    names = [*DEFAULT_METRICS, "P@1", "P@100", "MAP@100", "nDCG@100", "R@10", "FPR@100"]
    # a fresh Relevance each call, so its cached relevant counts are part of the time
    single = (rng.integers(0, 10, n_q), rng.integers(0, 10, n_c))
    best, med, _ = timed(lambda: evaluate(ids, Relevance(*single), names), args.repeats)
    table.add_row(
        f"{len(names)} metrics, 10k queries, k=100, single-label",
        f"{best:.3f}",
        f"{med:.3f}",
        "< 1 s",
        ", ".join(names),
    )
    multi = (rng.random((n_q, 80)) < 0.05, rng.random((n_c, 80)) < 0.05)
    best, med, _ = timed(lambda: evaluate(ids, Relevance(*multi), names), args.repeats)
    table.add_row(
        f"{len(names)} metrics, 10k queries, k=100, multi-label (80 cats)",
        f"{best:.3f}",
        f"{med:.3f}",
        "< 1 s",
        "relevance via shared categories",
    )
    own = np.argsort(rng.random((n_q, n_q)), axis=1)[:, :k]
    best, med, _ = timed(lambda: indexing_accuracy(own, n_q, ks=(1, 5)), args.repeats)
    table.add_row(
        "IA@1, IA@5, 10k indexed images", f"{best:.3f}", f"{med:.3f}", "", ", ".join(INDEXING_METRICS)
    )
    console.print(table)


if __name__ == "__main__":
    main()
