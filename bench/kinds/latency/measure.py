"""Query latency against database size: the paper's O(1)-vs-O(N) claim, measured.

For one indexed retriever, `measure_search` times `search` per query at a given batch
size: warm-up calls first, a fixed thread count (`bench.threads`), `time.perf_counter` around each call,
`torch.cuda.synchronize` on a GPU, and p50 / p95 over repeated calls (`timed_calls`, which times
any call the same way). `index_bytes`
measures the saved index. `fit_loglog` fits log(latency) = a + b log(N): b near 0 is
O(1), near 1 is O(N) (or against a DSI's id length L). `crossover` finds the N where one
fitted line falls below another, and `pareto_front` the methods no other one beats on both
latency and quality.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bench.threads import fixed_threads
from vitdsi.retrievers.base import Retriever
from vitdsi.retrievers.persistence import save_retriever


@dataclass(frozen=True)
class SearchTiming:
    batch_size: int  # queries per search call
    p50_ms: float  # median per-query latency (call time / batch size), milliseconds
    p95_ms: float  # 95th percentile per-query latency, milliseconds
    mean_ms: float  # mean per-query latency, milliseconds
    calls: int  # timed calls (after warm-up)
    threads: int  # torch / faiss / OpenCV threads used

    def as_dict(self) -> dict:
        return asdict(self)


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work on `device` (nothing on a CPU), so a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_calls(
    call: Callable[[int], object],
    starts: np.ndarray,
    *,
    batch_size: int,
    warmup: int,
    threads: int,
    device: torch.device,
) -> SearchTiming:
    """Per-item latency of `call(start)` for each of `starts` (one call of `batch_size` items each):
    the first `warmup` calls untimed, under `threads` threads and inference mode, with `device`
    synchronised around each timed call."""
    times = []
    with fixed_threads(threads), torch.inference_mode():
        for i, s in enumerate(starts):
            synchronize(device)
            t = time.perf_counter()
            call(int(s))
            synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - t) / batch_size * 1e3)
    arr = np.asarray(times)
    return SearchTiming(
        batch_size,
        float(np.percentile(arr, 50)),
        float(np.percentile(arr, 95)),
        float(arr.mean()),
        len(arr),
        threads,
    )


def measure_search(
    retriever: Retriever,
    queries: torch.Tensor | list[str],  # images or captions, as the retriever's `search` takes them
    *,
    k: int = 10,
    batch_size: int = 1,
    calls: int = 30,
    warmup: int = 3,
    threads: int = 1,
) -> SearchTiming:
    """Per-query search latency of an indexed retriever; queries are cycled through."""
    if len(queries) < batch_size:
        reps = -(-batch_size // len(queries))
        queries = (
            list(queries) * reps if not isinstance(queries, torch.Tensor) else queries.repeat(reps, 1, 1, 1)
        )
    starts = np.arange(calls + warmup) * batch_size % max(1, len(queries) - batch_size + 1)
    return timed_calls(
        lambda s: retriever.search(queries[s : s + batch_size], k),
        starts,
        batch_size=batch_size,
        warmup=warmup,
        threads=threads,
        device=retriever.device,
    )


def index_bytes(retriever: Retriever) -> int:
    """Bytes of the saved index (weights, features, vocabularies): what must be kept to answer."""
    with tempfile.TemporaryDirectory() as tmp:
        save_retriever(retriever, tmp)
        return sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())


@dataclass(frozen=True)
class LogLogFit:
    slope: float  # d log(latency) / d log(N): ~0 is O(1), ~1 is O(N)
    intercept: float  # log(latency in ms) at N = 1
    n_points: int  # database sizes the fit used
    r2: float  # coefficient of determination of the fit

    def predict(self, n: np.ndarray | float) -> np.ndarray:
        return np.exp(self.intercept + self.slope * np.log(n))


def fit_loglog(ns: Sequence[float], latencies_ms: Sequence[float]) -> LogLogFit:
    """Least-squares line through (log N, log latency)."""
    x, y = np.log(np.asarray(ns, float)), np.log(np.asarray(latencies_ms, float))
    if len(x) < 2:
        raise ValueError("a log-log fit needs at least two database sizes")
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    total = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - (resid**2).sum() / total if total > 0 else 1.0
    return LogLogFit(float(slope), float(intercept), len(x), float(r2))


def crossover(
    ns: Sequence[float], challenger_ms: Sequence[float], baseline_ms: Sequence[float]
) -> float | None:
    """Smallest measured-range N from which the challenger (e.g. DSI) is faster than the
    baseline for good, by linear interpolation of log latency between measured sizes.
    Returns min(ns) if it is faster throughout, None if it never becomes faster in range."""
    ns = np.asarray(ns, float)
    order = np.argsort(ns)
    ns = ns[order]
    diff = np.log(np.asarray(challenger_ms, float)[order]) - np.log(np.asarray(baseline_ms, float)[order])
    faster = diff < 0
    if not faster[-1]:
        return None
    if faster.all():
        return float(ns[0])
    last_slow = int(np.flatnonzero(~faster)[-1])
    x0, x1 = np.log(ns[last_slow]), np.log(ns[last_slow + 1])
    d0, d1 = diff[last_slow], diff[last_slow + 1]
    return float(np.exp(x0 + (x1 - x0) * d0 / (d0 - d1)))


def pareto_front(latency_ms: Sequence[float], quality: Sequence[float]) -> np.ndarray:
    """bool [n]: the points no other point dominates, i.e. none is at least as fast and at least
    as good and strictly better in one of the two. Points with a NaN value are never on the front."""
    t, q = np.asarray(latency_ms, float), np.asarray(quality, float)
    ok = ~(np.isnan(t) | np.isnan(q))
    # dominates[i, j]: point j dominates point i
    no_worse = (t[None, :] <= t[:, None]) & (q[None, :] >= q[:, None])
    better = (t[None, :] < t[:, None]) | (q[None, :] > q[:, None])
    dominates = no_worse & better & ok[None, :]
    return ok & ~dominates.any(axis=1)
