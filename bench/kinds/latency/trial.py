"""What a latency trial measures besides its quality numbers (docs/design.md, "Latency").

Search latency at batch 1 and at a batch size, at the k quality was scored at (and so with the
same beam); build time; saved-index and model bytes, each also per indexed image, and the peak
resident set of the process during the timed searches (`memory`); for an atomic-id DSI its output
layer alone at batch 1 (`atomic_head`); the per-image cost of `Retriever.add`, timed on a copy of
the index after the timed searches, so neither the quality numbers nor the kept index change; and,
for a retriever trained with an indexing phase (the DSI), the IA@1 that phase reached and the
epochs it took.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from bench.kinds.latency.atomic_head import atomic_head_timing
from bench.kinds.latency.measure import index_bytes, measure_search, synchronize
from bench.kinds.latency.memory import model_bytes, peak_rss_bytes, reset_peak_rss
from vitdsi.data import ImageSet, SplitSets
from vitdsi.errors import VitDSIError
from vitdsi.retrievers.base import Retriever


def latency_record(
    retriever: Retriever,
    sets: SplitSets,
    opts: dict[str, Any],
    build_s: float,
    k: int,
    history: list[dict[str, Any]],
) -> dict[str, float]:
    """The latency metrics of one indexed retriever: p50 / p95 ms per test query at batch 1 and at
    opts['batch_size'] with k results (the k quality is scored at), build seconds, memory
    (`memory_record`), an atomic DSI's head time, add ms per image (held-out source images: the
    split's validation part, or `held_out` under the instance protocol; when `add_images` asks and
    the retriever adds) and the indexing phase's summary."""
    if opts.get("k") not in (None, k):
        raise VitDSIError(
            f"latency.k={opts['k']} differs from the k={k} quality is scored at; quality and latency "
            "use one k (remove latency.k)"
        )
    queries = sets.queries("test")
    k = min(k, retriever.corpus_size)
    timing = {"k": k, "warmup": opts["warmup"], "threads": opts["threads"]}
    reset = reset_peak_rss()
    one = measure_search(retriever, queries, batch_size=1, calls=opts["calls"], **timing)
    many = measure_search(
        retriever,
        queries,
        batch_size=opts["batch_size"],
        calls=opts["batch_calls"],
        **{**timing, "warmup": min(opts["warmup"], 1)},
    )
    peak = peak_rss_bytes() if reset else None
    out = {
        "n_indexed": float(retriever.corpus_size),
        "latency_b1_p50_ms": one.p50_ms,
        "latency_b1_p95_ms": one.p95_ms,
        "latency_batch_p50_ms": many.p50_ms,
        "latency_batch_p95_ms": many.p95_ms,
        "latency_k": float(k),
        "latency_batch_size": float(opts["batch_size"]),
        "latency_threads": float(opts["threads"]),
        "index_build_s": float(build_s),
        **memory_record(retriever, peak),
    }
    head = atomic_head_timing(retriever, queries, calls=opts["calls"], **timing)
    if head is not None:
        out.update(atomic_head_b1_ms=head.p50_ms, atomic_head_b1_p95_ms=head.p95_ms)
    if opts.get("add_images"):
        added = sets.held_out if sets.held_out is not None else sets.val
        add_ms = add_ms_per_image(retriever, added)
        if add_ms is not None:
            out.update(add_ms_per_image=add_ms, add_images=float(len(added)))
    return {**out, **indexing_summary(history)}


def memory_record(retriever: Retriever, search_peak: int | None) -> dict[str, float]:
    """Saved-index bytes, model bytes (when the retriever answers with a torch model), the peak
    resident set of the searches (when measured) and the first two per indexed image."""
    n = max(retriever.corpus_size, 1)
    saved = index_bytes(retriever)
    out = {"index_bytes": float(saved), "index_bytes_per_image": saved / n}
    model = model_bytes(retriever)
    if model is not None:
        out.update(model_bytes=float(model), model_bytes_per_image=model / n)
    if search_peak is not None:
        out["search_peak_rss_bytes"] = float(search_peak)
    return out


def add_ms_per_image(retriever: Retriever, images: ImageSet) -> float | None:
    """Wall milliseconds per image of `add(images)` on a deep copy of `retriever` (the original is
    untouched); None when there is nothing to add or the retriever cannot add. It runs under the
    worker's threads, like the build, not the pinned search threads."""
    if len(images) == 0 or not retriever.supports_add:
        return None
    clone = copy.deepcopy(retriever)
    synchronize(clone.device)
    t0 = time.perf_counter()
    clone.add(images)
    synchronize(clone.device)
    return (time.perf_counter() - t0) / len(images) * 1e3


def indexing_summary(history: list[dict[str, Any]]) -> dict[str, float]:
    """`index_epochs_run` (epochs of the indexing phase) and `index_ia1` (the last IA@1 it measured,
    which is where it stopped: at its target or at the end of its budget) from a training log;
    empty for a retriever without an indexing phase."""
    phase = [e for e in history if e.get("phase") == "index" and "add_step" not in e]
    if not phase:
        return {}
    out = {"index_epochs_run": float(len(phase))}
    measured = [e["ia1"] for e in phase if e.get("ia1") is not None]
    if measured:
        out["index_ia1"] = float(measured[-1])
    return out
