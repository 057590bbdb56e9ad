"""The latency section of a report (latency studies, `bench.kinds.latency.measure`): quality against
N (report_scale.py); p50 latency against database size per method with fitted log-log slopes and
the crossover N from which each DSI answers faster than each baseline; an atomic DSI's output
layer against N (report_scale.py); each DSI's latency against its id length L; whether each
DSI reached its IA@1 target and the quality-latency Pareto front per N (report_quality.py);
memory per indexed image, build time and training FLOPs against N (report_scale.py); and every
measurement beside the quality, k and beam it was measured with."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench import plots
from bench.kinds.latency.measure import crossover, fit_loglog
from bench.kinds.latency.report_quality import pareto_section, target_section, target_status
from bench.kinds.latency.report_scale import (
    atomic_head_section,
    cost_section,
    memory_section,
    quality_section,
)
from bench.report.data import StudyRecord
from bench.report.markdown import fmt, fmt_int, md_table
from bench.tracking import metric_key

MEASURED = (
    "latency_b1_p50_ms",
    "latency_b1_p95_ms",
    "latency_batch_p50_ms",
    "latency_batch_p95_ms",
    "index_build_s",
    "index_bytes",
    "latency_batch_size",
    "add_ms_per_image",
    "search_k",
    "search_beam",
    "id_length",
    "index_ia1",
    "index_epochs_run",
    "model_bytes",
    "model_bytes_per_image",
    "index_bytes_per_image",
    "search_peak_rss_bytes",
    "atomic_head_b1_ms",
    "train_flops",
    "train_seconds",
    "cold_build_s",
    "extraction_s",
    "extraction_unknown",
)  # final metrics of a latency trial
QUALITY = ("IA@1", "MAP@10", "R@1", "MRR", "MRR@10")  # quality beside latency, where the study logged it
PARAMS = ("target_ia", "index_epochs", "dim", "depth")  # build parameters the training table reads


def latency_frame(record: StudyRecord) -> pd.DataFrame:
    """One row per latency trial, ordered by method and N: method, retriever, N, whether it is a
    DSI, the MEASURED metrics, the QUALITY metrics (by their names) and the PARAMS."""
    runs = pd.DataFrame(
        {
            "method": record.column("tags.method", "").fillna(""),
            "retriever": record.column("tags.retriever", "").fillna(""),
            "N": record.column("metrics.n_indexed"),
            **{k: record.column(f"metrics.{k}") for k in MEASURED},
            **{m: record.column(f"metrics.{metric_key(m)}") for m in QUALITY},
            **{p: pd.to_numeric(record.column(f"params.{p}"), errors="coerce") for p in PARAMS},
        }
    )
    runs["dsi"] = runs["method"].str.startswith("dsi") | runs["retriever"].str.startswith("dsi")
    runs = runs[runs["N"].notna() & runs["latency_b1_p50_ms"].notna()].copy()
    runs["target"] = [target_status(r) or "" for r in runs.to_dict("records")]  # "": not a DSI with a target
    return runs.sort_values(["method", "N"], kind="stable").reset_index(drop=True)


def latency_section(record: StudyRecord, out: Path, rel: str) -> str | None:
    runs = latency_frame(record)
    if runs.empty:
        return None
    batch = (
        int(runs["latency_batch_size"].dropna().iloc[0]) if runs["latency_batch_size"].notna().any() else 256
    )
    timings = (("latency_b1_p50_ms", "batch 1"), ("latency_batch_p50_ms", f"batch {batch}"))
    quality = [m for m in QUALITY if runs[m].notna().any()]
    parts = [quality_section(record.name, runs, quality, out, rel)]
    for key, title in timings:
        parts += _scaling(record.name, runs, key, title, out, rel)
    parts.append(atomic_head_section(runs))
    parts.append(_id_length(runs, timings))
    parts.append(target_section(runs))
    parts.append(pareto_section(record.name, runs, timings, quality, out, rel))
    parts.append(memory_section(runs))
    parts.append(cost_section(record.name, runs, out, rel))
    parts.append(_measurements(runs, batch))
    return "\n\n".join(p for p in parts if p)


MIN_FIT_SIZES = 3  # database sizes a slope needs before it is read as a scaling law


def _scaling(name: str, runs: pd.DataFrame, key: str, title: str, out: Path, rel: str) -> list[str]:
    """The log-log plot against N, its fits per method and the crossovers of each DSI with each baseline."""
    series = {
        method: (g["N"].tolist(), g[key].tolist())
        for method, g in runs[runs[key].notna()].groupby("method", sort=True)
    }
    fig = plots.latency_plot(
        series, out / f"latency_{key}.png", f"{name}: p50 search latency per query, {title}"
    )
    parts = [f"![latency {title}]({rel}/{fig.name})"]
    rows = []
    for method, (ns, ms) in series.items():
        if len(ns) < 2:
            rows.append([method, str(len(ns)), "n/a", "n/a", "", ""])
            continue
        f = fit_loglog(ns, ms)
        if len(ns) < MIN_FIT_SIZES:  # a line through two points has R² 1 whatever the noise
            kind, r2 = f"none: {len(ns)} sizes, within one p50's run-to-run spread", "n/a"
        else:
            r2 = fmt(f.r2, 3)
            kind = (
                "≈ O(1)"
                if abs(f.slope) < 0.25
                else ("≈ O(N)" if abs(f.slope - 1) < 0.25 else f"≈ O(N^{f.slope:.2f})")
            )
        rows.append(
            [method, str(len(ns)), fmt(f.slope, 3), r2, kind, f"{fmt(min(ms), 3)} – {fmt(max(ms), 3)}"]
        )
    parts.append(
        f"**{title}**: log-log fit of p50 latency against N (slope ~0: O(1), ~1: O(N)); a scaling "
        f"verdict and a crossover need at least {MIN_FIT_SIZES} sizes.\n\n"
        + md_table(["method", "sizes", "slope", "R²", "scaling", "p50 ms range"], rows)
    )
    dsi = set(runs.loc[runs["dsi"], "method"])
    cross = []
    for d in sorted(dsi & set(series)):
        for base in (b for b in series if b not in dsi):
            (n_d, t_d), (n_b, t_b) = series[d], series[base]
            common = sorted(set(n_d) & set(n_b))
            if len(common) < MIN_FIT_SIZES:
                continue
            c = crossover(common, [t_d[n_d.index(n)] for n in common], [t_b[n_b.index(n)] for n in common])
            if c is None:
                text = f"none in the measured range {int(common[0])}–{int(common[-1])}: {d} stays slower"
            elif c <= common[0]:
                text = f"{d} is faster at every measured N ({int(common[0])}–{int(common[-1])})"
            else:
                text = f"N ≈ {c:,.0f}: {d} is faster from there on"
            cross.append([d, base, text])
    if cross:
        parts.append(
            f"Crossover ({title}): the database size from which the DSI answers faster than each "
            "baseline.\n\n" + md_table(["DSI", "baseline", "crossover"], cross)
        )
    return parts


def _id_length(runs: pd.DataFrame, timings) -> str | None:
    """Each DSI's id length L at every N and log-log fits of its p50 latency against L: decoding
    takes one step per id token, so a DSI's latency follows L, which grows as log N."""
    dsi = runs[runs["dsi"] & runs["id_length"].notna()]
    if dsi.empty:
        return None
    rows = []
    for method, g in dsi.groupby("method", sort=True):
        row = [
            method,
            ", ".join(f"{int(n)}: {int(length)}" for n, length in zip(g["N"], g["id_length"], strict=True)),
        ]
        for key, _ in timings:
            ok = g[key].notna()
            if g.loc[ok, "id_length"].nunique() < 2:
                row += ["n/a (one L)", ""]
                continue
            f = fit_loglog(g.loc[ok, "id_length"], g.loc[ok, key])
            row += [fmt(f.slope, 3), fmt(f.r2, 3)]
        rows.append(row)
    header = ["DSI", "N: L"] + [h for _, title in timings for h in (f"slope vs L ({title})", "R²")]
    return (
        "**Latency against id length L** (tokens per id, one decoding step each; L grows as log N): log-log "
        "fit of p50 latency against L (slope 1: linear in L).\n\n" + md_table(header, rows)
    )


def _measurements(runs: pd.DataFrame, batch: int) -> str:
    quality = [m for m in QUALITY if runs[m].notna().any()]
    rows = [
        [
            r["method"],
            str(int(r["N"])),
            fmt_int(r["id_length"]),
            fmt_int(r["search_k"]),
            fmt_int(r["search_beam"]),
            *[fmt(r[m], 4) for m in quality],
            fmt(r["latency_b1_p50_ms"], 3),
            fmt(r["latency_b1_p95_ms"], 3),
            fmt(r["latency_batch_p50_ms"], 4),
            fmt(r["latency_batch_p95_ms"], 4),
            fmt(r["index_build_s"], 1),
            fmt(r["index_bytes"] / 2**20, 2),
            fmt(r["add_ms_per_image"], 3),
            r["target"],
        ]
        for r in runs.to_dict("records")
    ]
    header = [
        "method",
        "N",
        "L",
        "k",
        "beam",
        *quality,
        "b1 p50",
        "b1 p95",
        f"b{batch} p50",
        f"b{batch} p95",
        "build s",
        "index MiB",
        "add ms/image",
        "IA@1 target",
    ]
    return (
        "All measurements (ms per query; p50 / p95 over repeated timed calls after warm-up, fixed threads). "
        "Quality (test queries; IA@1: the indexed images) was scored with the k and beam given, the same the "
        "searches were timed with; L is a DSI's id length; beam is the hypotheses a DSI keeps per decoding "
        "step (n/a where nothing is beam-searched: atomic ids are ranked by one softmax over the N ids); add "
        "ms/image is `Retriever.add` of held-out images on a copy of the index, n/a where a retriever "
        "cannot add; *IA@1 target* is whether a DSI reached its `target_ia` (see the training table):\n\n"
        + md_table(header, rows)
    )
