"""The latency section of a report (latency studies, bench/latency.py): p50 latency against
database size per method with fitted log-log slopes, the crossover N from which each DSI
answers faster than each baseline, and every measurement."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench import plots
from bench.report.data import StudyRecord
from bench.report.markdown import fmt, md_table

MEASURED = ("latency_b1_p50_ms", "latency_b1_p95_ms", "latency_batch_p50_ms", "latency_batch_p95_ms",
            "index_build_s", "index_bytes", "latency_batch_size")  # final metrics of a latency trial


def latency_section(record: StudyRecord, out: Path, rel: str) -> str | None:
    from bench.latency import crossover, fit_loglog

    runs = pd.DataFrame({"method": record.column("tags.method", "").fillna(""), "N": record.column("metrics.n_indexed"),
                         **{k: record.column(f"metrics.{k}") for k in MEASURED}})
    runs = runs[runs["N"].notna() & runs["latency_b1_p50_ms"].notna()].sort_values(["method", "N"], kind="stable")
    if runs.empty:
        return None
    parts = []
    first = runs["latency_batch_size"].sort_index().iloc[0]  # the first latency trial's
    batch = 256 if pd.isna(first) else int(first)
    for key, title in (("latency_b1_p50_ms", "batch 1"), ("latency_batch_p50_ms", f"batch {batch}")):
        series = {method: (g["N"].tolist(), g[key].tolist())
                  for method, g in runs[runs[key].notna()].groupby("method", sort=True)}
        fig = plots.latency_plot(series, out / f"latency_{key}.png", f"{record.name}: p50 search latency per query, {title}")
        parts.append(f"![latency {title}]({rel}/{fig.name})")
        rows = []
        dsi = [m for m in series if m.startswith("dsi")]
        for method, (ns, ms) in series.items():
            if len(ns) < 2:
                rows.append([method, str(len(ns)), "n/a", "n/a", "", ""])
                continue
            f = fit_loglog(ns, ms)
            kind = "≈ O(1)" if abs(f.slope) < 0.25 else ("≈ O(N)" if abs(f.slope - 1) < 0.25 else f"≈ O(N^{f.slope:.2f})")
            rows.append([method, str(len(ns)), fmt(f.slope, 3), fmt(f.r2, 3), kind,
                         f"{fmt(min(ms), 3)} – {fmt(max(ms), 3)}"])
        parts.append(f"**{title}**: log-log fit of p50 latency against N (slope ~0: O(1), ~1: O(N)).\n\n"
                     + md_table(["method", "sizes", "slope", "R²", "scaling", "p50 ms range"], rows))
        cross = []
        for d in dsi:
            for base in series:
                if base in dsi:
                    continue
                n_d, t_d = series[d]
                n_b, t_b = series[base]
                common = sorted(set(n_d) & set(n_b))
                if len(common) < 2:
                    continue
                td = [t_d[n_d.index(n)] for n in common]
                tb = [t_b[n_b.index(n)] for n in common]
                c = crossover(common, td, tb)
                if c is None:
                    text = f"none in the measured range {int(common[0])}–{int(common[-1])}: {d} stays slower"
                elif c <= common[0]:
                    text = f"{d} is faster at every measured N ({int(common[0])}–{int(common[-1])})"
                else:
                    text = f"N ≈ {c:,.0f}: {d} is faster from there on"
                cross.append([d, base, text])
        if cross:
            parts.append(f"Crossover ({title}): the database size from which the DSI answers faster than each baseline.\n\n"
                         + md_table(["DSI", "baseline", "crossover"], cross))
    rows = [[r.method, str(int(r.N)), fmt(r.latency_b1_p50_ms, 3), fmt(r.latency_b1_p95_ms, 3),
             fmt(r.latency_batch_p50_ms, 4), fmt(r.latency_batch_p95_ms, 4), fmt(r.index_build_s, 1),
             fmt(r.index_bytes / 2**20, 2)] for r in runs.itertuples()]
    parts.append("All measurements (ms per query; p50 / p95 over repeated timed calls after warm-up, fixed threads):\n\n"
                 + md_table(["method", "N", "b1 p50", "b1 p95", f"b{batch} p50", f"b{batch} p95", "build s", "index MiB"], rows))
    return "\n\n".join(parts)
