"""How each method scales with the database size N, in a latency study's report: quality against
N, an atomic DSI's output layer against N (the O(N) scan inside an "O(1)" model), memory per
indexed image (model, saved index, peak resident set of the searches), and build time (from
cold: bench.build_cost) and training FLOPs against N with fitted log-log slopes. Reads the frame of
`bench.kinds.latency.report.latency_frame`; a DSI row that missed its IA@1 target says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench import plots
from bench.kinds.latency.measure import fit_loglog
from bench.report.markdown import fmt, md_table

MIB = 2**20


def _series(runs: pd.DataFrame, key: str) -> dict[str, tuple[list[float], list[float]]]:
    """method -> (N values, values of `key`) over the rows where `key` was logged (and is > 0 when a
    log-log fit reads it)."""
    rows = runs[runs[key].notna()]
    return {m: (g["N"].tolist(), g[key].tolist()) for m, g in rows.groupby("method", sort=True)}


def _slope(ns: list[float], values: list[float]) -> str:
    """The fitted log-log slope of values against N, or n/a (one N, or a value not above zero)."""
    if len(set(ns)) < 2 or min(values) <= 0:
        return "n/a"
    return fmt(fit_loglog(ns, values).slope, 3)


def _marked(value: str, target: str) -> str:
    """A DSI's value with its IA@1 target status when it did not reach it (`target`: the frame's
    column, "" for a row without a target)."""
    return value if target in ("", "reached") else f"{value} ({target} IA@1 target)"


def quality_section(name: str, runs: pd.DataFrame, quality: list[str], out: Path, rel: str) -> str | None:
    """A figure per quality metric against N (one line per method) and a table of every trial's
    quality, DSI rows marked where they missed their IA@1 target."""
    if not quality:
        return None
    figures = []
    for m in quality:
        fig = plots.latency_plot(
            _series(runs, m),
            out / f"quality_{m.replace('@', '_at_')}.png",
            f"{name}: {m} against N",
            ylabel=m,
            loglog=False,
        )
        figures.append(f"![{m} against N]({rel}/{fig.name})")
    rows = [
        [r["method"], f"{int(r['N']):,}", *[_marked(fmt(r[m], 4), r["target"]) for m in quality]]
        for r in runs.to_dict("records")
    ]
    return (
        "**Quality against N.** Test-query quality of every trial (IA@1: the indexed images queried with "
        "themselves); a DSI that did not reach its IA@1 target is marked in its row.\n\n"
        + md_table(["method", "N", *quality], rows)
        + "\n\n"
        + "\n\n".join(figures)
    )


def atomic_head_section(runs: pd.DataFrame) -> str | None:
    """An atomic DSI's output layer timed alone at batch 1 against N, beside its whole search, and
    the fitted slope: the softmax over N ids is a dense N x D layer, a scan of every id per query."""
    atomic = runs[runs["atomic_head_b1_ms"].notna()]
    if atomic.empty:
        return None
    rows = [
        [
            _marked(r["method"], r["target"]),
            f"{int(r['N']):,}",
            fmt(r["atomic_head_b1_ms"], 4),
            fmt(r["latency_b1_p50_ms"], 3),
            fmt(r["atomic_head_b1_ms"] / r["latency_b1_p50_ms"], 3),
        ]
        for r in atomic.to_dict("records")
    ]
    fits = [
        f"- **{method}**: head time against N, log-log slope {_slope(ns, ms)} (1: O(N))"
        for method, (ns, ms) in _series(atomic, "atomic_head_b1_ms").items()
    ]
    return (
        "**An atomic DSI's output layer is an O(N) scan.** Atomic ids rank the N indexed images with one "
        "softmax: the output layer holds an N x D weight matrix, and every query multiplies it whole "
        "before top-k, the same work as a flat index scanning N D-dimensional vectors. Timed alone at "
        "batch 1 (p50 ms per query: pooling, the N x D layer, log-softmax, top-k), beside the whole "
        "search:\n\n"
        + md_table(["DSI", "N", "head b1 ms", "search b1 p50 ms", "head share"], rows)
        + "\n\n"
        + "\n".join(fits)
    )


def memory_section(runs: pd.DataFrame) -> str | None:
    """Per trial the model and saved-index bytes per indexed image and the peak resident set of
    the process while it searched."""
    if runs["index_bytes"].isna().all():
        return None
    rows = [
        [
            _marked(r["method"], r["target"]),
            f"{int(r['N']):,}",
            fmt(r["model_bytes"] / MIB, 2),
            fmt(r["model_bytes_per_image"], 1),
            fmt(r["index_bytes"] / MIB, 2),
            fmt(r["index_bytes_per_image"], 1),
            fmt(r["search_peak_rss_bytes"] / MIB, 1),
        ]
        for r in runs.to_dict("records")
    ]
    fits = [
        f"- **{method}**: (model + index) bytes per indexed image against N, log-log slope "
        f"{_slope(ns, b)} (0: constant per image, -1: a fixed size shared by every image)"
        for method, (ns, b) in _series(runs.assign(total=_total_per_image(runs)), "total").items()
    ]
    return (
        "**Memory per indexed image.** Model bytes are the parameters and buffers of the network a "
        "retriever answers with (n/a: none, e.g. pixels or BoVW); index bytes the saved index; peak RSS "
        "the process's peak resident set while the timed searches ran (reset before them; n/a where the "
        "OS cannot reset it), which includes the loaded data and everything else the process holds.\n\n"
        + md_table(
            ["method", "N", "model MiB", "model B/image", "index MiB", "index B/image", "peak RSS MiB"], rows
        )
        + "\n\n"
        + "\n".join(fits)
    )


def _total_per_image(runs: pd.DataFrame) -> pd.Series:
    """Model plus index bytes per indexed image (index only where there is no model)."""
    return runs["index_bytes_per_image"] + runs["model_bytes_per_image"].fillna(0.0)


def cost_section(name: str, runs: pd.DataFrame, out: Path, rel: str) -> str | None:
    """Build seconds from cold and training FLOPs against N: a log-log figure each, their fitted
    slopes per method and a table of every trial, cold beside wall build seconds."""
    if runs["index_build_s"].isna().all():
        return None
    runs = runs.assign(build_s=_cold_build(runs))
    figures, fits = [], []
    for key, label, file in (
        ("build_s", "cold build seconds", "cold_build_s"),
        ("train_flops", "training FLOPs", "train_flops"),
    ):
        series = {m: s for m, s in _series(runs, key).items() if min(s[1]) > 0}
        if not series:
            continue
        fig = plots.latency_plot(series, out / f"cost_{file}.png", f"{name}: {label} against N", ylabel=label)
        figures.append(f"![{label} against N]({rel}/{fig.name})")
        fits += [f"- {method}, {label}: log-log slope {_slope(ns, v)}" for method, (ns, v) in series.items()]
    rows = [
        [
            _marked(r["method"], r["target"]),
            f"{int(r['N']):,}",
            _cold_cell(r),
            fmt(r["index_build_s"], 1),
            "unknown" if r["extraction_unknown"] > 0 else fmt(r["extraction_s"], 1),
            fmt(r["train_seconds"], 1),
            "n/a" if np.isnan(r["train_flops"]) else f"{r['train_flops']:.3g}",
        ]
        for r in runs.to_dict("records")
    ]
    return (
        "**Build time and training FLOPs against N.** Build seconds from cold (*cold build s*, plotted "
        "and fitted) are the wall seconds of `index` (feature extraction, training, index construction) "
        "with the frozen encoder's feature extraction charged per image set at the seconds measured when "
        "its feature-cache entry was built (*extraction s*), whether this trial built the entry or read it, "
        "so they do not depend on which trial ran first; *wall build s* is the trial's own wall time, "
        "short of the extraction where it read a cached entry. *(wall)*: the trial logged no extraction "
        "seconds (a method without a frozen encoder, or a trial logged before they were), so its wall "
        "seconds stand in; *unknown*: a cache entry it read predates the recorded build seconds (`bench "
        "cache remove` it to measure them again). Training FLOPs are the counted forward and backward FLOPs "
        "of training, the frozen encoder's pass charged per image set too (n/a: the method does not "
        "train). Slopes are log-log fits against N (1: linear in N).\n\n"
        + md_table(
            ["method", "N", "cold build s", "wall build s", "extraction s", "train s", "train FLOPs"], rows
        )
        + "\n\n"
        + "\n".join(fits)
        + "\n\n"
        + "\n\n".join(figures)
    )


def _cold_build(runs: pd.DataFrame) -> pd.Series:
    """The build seconds the cost section plots: `cold_build_s`, else the wall seconds of a trial
    that logged no extraction seconds; NaN where they are unknown (`extraction_unknown`)."""
    return runs["cold_build_s"].fillna(runs["index_build_s"].where(runs["extraction_s"].isna()))


def _cold_cell(r: dict) -> str:
    """A trial's cold build seconds as the table prints them (see `cost_section`)."""
    if not np.isnan(r["cold_build_s"]):
        return fmt(r["cold_build_s"], 1)
    if np.isnan(r["extraction_s"]):
        return f"{fmt(r['index_build_s'], 1)} (wall)"
    return "unknown"
