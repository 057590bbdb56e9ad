"""Quality beside latency in a latency study's report: whether each DSI reached its IA@1
target at each database size N within its training budget, and per N the quality-latency
Pareto front (p50 latency at batch 1 and at the batch size against MAP@10, IA@1 and R@1, as
logged) with a plain statement of the N at which any DSI is on it. Reads the frame of
`bench.kinds.latency.report.latency_frame`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench import plots
from bench.kinds.latency.measure import pareto_front
from bench.report.markdown import fmt, fmt_int, md_table


def target_section(runs: pd.DataFrame) -> str | None:
    """From `latency_frame`'s rows (their `target` status), a row per DSI trial with a
    `target_ia`: its model, id length, the IA@1 its indexing phase stopped at and after how many
    of its budgeted epochs, the IA@1 of the trial (every indexed image, after all training), and
    whether that reached the target; then one line per DSI."""
    dsi = runs[runs["dsi"] & runs["target_ia"].notna()]
    if dsi.empty:
        return None
    rows, lines = [], []
    for method, g in dsi.groupby("method", sort=True):
        reached, missed = [], []
        for r in g.to_dict("records"):
            final = _final_ia1(r)
            status = r["target"]  # target_status, computed once per row in latency_frame
            n = f"{int(r['N']):,}"
            if status == "reached":
                reached.append(n)
            else:
                missed.append(f"{n} (IA@1 {fmt(final, 3)}{', ' + status if status != 'missed' else ''})")
            model = ", ".join(f"{p} {int(r[p])}" for p in ("dim", "depth") if not np.isnan(r[p])) or "n/a"
            rows.append(
                [
                    method,
                    n,
                    model,
                    fmt_int(r["id_length"]),
                    fmt(r["target_ia"], 2),
                    f"{fmt(r['index_ia1'], 3)} after {fmt_int(r['index_epochs_run'])} / "
                    f"{fmt_int(r['index_epochs'])}",
                    fmt(r["IA@1"], 3),
                    fmt(r["MAP@10"], 4),
                    status,
                ]
            )
        target = fmt(g["target_ia"].iloc[0], 2)
        if not missed:
            lines.append(
                f"- **{method}** reached IA@1 ≥ {target} at every measured N ({', '.join(reached)})."
            )
        elif not reached:
            lines.append(
                f"- **{method}** did not reach IA@1 ≥ {target} at any measured N: {', '.join(missed)}."
            )
        else:
            lines.append(
                f"- **{method}** reached IA@1 ≥ {target} at N = {', '.join(reached)}; "
                f"not at N = {', '.join(missed)}."
            )
    header = [
        "DSI",
        "N",
        "model",
        "L",
        "target IA@1",
        "indexing IA@1 after epochs / budget",
        "IA@1",
        "MAP@10",
        "target",
    ]
    return (
        "**Trained to target.** Each DSI indexes until its IA@1 stop test reaches `target_ia` or its epoch "
        "budget (`index_epochs`) ends, then trains its retrieval phase. *Indexing IA@1* is the stop test's "
        "last reading (greedy, on `ia_sample` images when set); *IA@1* is the trial's, on every indexed "
        "image after all training, and decides whether the target was reached (*lost in retrieval training*: "
        "the indexing phase reached it, the retrieval phase that followed brought IA@1 below it).\n\n"
        + md_table(header, rows)
        + "\n\n"
        + "\n".join(lines)
    )


def target_status(r: dict) -> str | None:
    """A trial row's `_status` for a DSI with a `target_ia`, None for any other row."""
    if not r["dsi"] or np.isnan(r["target_ia"]):
        return None
    return _status(_final_ia1(r), r["index_ia1"], r["target_ia"])


def _final_ia1(r: dict) -> float:
    """The IA@1 a DSI row's target is judged on: the trial's, else its indexing phase's last."""
    return r["IA@1"] if not np.isnan(r["IA@1"]) else r["index_ia1"]


def _status(final: float, indexing: float, target: float) -> str:
    """'reached', 'lost in retrieval training' (the indexing phase reached the target, the trial's
    IA@1 is below it), 'missed' or 'not measured'."""
    if np.isnan(final):
        return "not measured"
    if final >= target:
        return "reached"
    return "lost in retrieval training" if not np.isnan(indexing) and indexing >= target else "missed"


def pareto_section(
    name: str, runs: pd.DataFrame, timings, quality: list[str], out: Path, rel: str
) -> str | None:
    """Per N a figure of quality against p50 latency (one panel per timing x quality metric) with its
    Pareto front, a table of the methods on each front, and the N at which any DSI is on one."""
    if not quality:
        return None
    views = [(key, title, m) for key, title in timings for m in quality]
    on_front: dict[tuple[str, str], list[float]] = {(title, m): [] for _, title, m in views}
    figures, rows = [], []
    for n, g in runs.groupby("N", sort=True):
        panels, row = [], [f"{int(n):,}"]
        for key, title, m in views:
            front = pareto_front(g[key], g[m])
            if (front & g["dsi"].to_numpy()).any():
                on_front[(title, m)].append(n)
            row.append(", ".join(g["method"][front]) or "n/a")
            panels.append(
                (
                    f"p50 ms per query, {title}",
                    m,
                    dict(zip(g["method"], zip(g[key], g[m], strict=True), strict=True)),
                    set(g["method"][front]),
                )
            )
        rows.append(row)
        fig = plots.pareto_plot(
            panels,
            len(quality),
            set(g["method"][g["dsi"]]),
            out / f"pareto_N{int(n)}.png",
            f"{name}: quality against latency, N = {int(n):,} (line: Pareto front)",
        )
        figures.append(f"![Pareto front N = {int(n)}]({rel}/{fig.name})")
    measured = sorted(runs["N"].unique())
    span = f"{int(measured[0]):,}–{int(measured[-1]):,}"
    anywhere = sorted({n for ns in on_front.values() for n in ns})
    if anywhere:
        summary = (
            f"**A DSI is on the quality-latency Pareto front at N = {_ns(anywhere)}** (in at least one of "
            f"the views below; measured N: {span}); at no other measured N."
        )
    else:
        summary = (
            f"**No DSI is on the quality-latency Pareto front at any measured N ({span})**, "
            "in any view below."
        )
    lines = [
        f"- p50 latency at {title} against {m}: "
        + (f"a DSI is on the front at N = {_ns(ns)}" if ns else "no DSI is on the front at any measured N")
        for (title, m), ns in on_front.items()
    ]
    header = ["N"] + [f"front: {title} vs {m}" for _, title, m in views]
    return (
        "**Quality against latency.** A method is on the Pareto front when no other method at the same N is "
        "both at least as fast and at least as good, and strictly one of the two.\n\n"
        + summary
        + "\n\n"
        + "\n".join(lines)
        + "\n\n"
        + md_table(header, rows)
        + "\n\n"
        + "\n\n".join(figures)
    )


def _ns(ns: list[float]) -> str:
    """'256, 512, 1,024 (256–1,024)': the sizes, and their range when there are several."""
    text = ", ".join(f"{int(n):,}" for n in ns)
    return text if len(ns) == 1 else f"{text} (range {int(ns[0]):,}–{int(ns[-1]):,})"
