"""Report figures with matplotlib (Agg, no network): latency vs N on log-log axes with
fitted slopes, quality against latency with its Pareto front, Precision@K curves, training
curves, validation quality against training FLOPs, and a query -> top-k image grid (image
queries, or captions printed above each row).

Each function takes plain arrays and writes one PNG; the report module decides what to plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from bench.kinds.latency.measure import fit_loglog  # noqa: E402


def _save(fig, path: Path, *, layout: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def latency_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    title: str,
    *,
    ylabel: str = "search latency per query (ms)",
    loglog: bool = True,
) -> Path:
    """series: label -> (N values, per-query latency in ms, or what `ylabel` says); one line per
    label, with its fitted log-log slope when `loglog` (else a linear y axis and no fit)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (ns, ms) in series.items():
        ns, ms = np.asarray(ns, float), np.asarray(ms, float)
        order = np.argsort(ns)
        ns, ms = ns[order], ms[order]
        (line,) = ax.plot(ns, ms, "o-", label=label)
        if loglog and len(ns) >= 2:
            fit = fit_loglog(ns, ms)
            ax.plot(ns, fit.predict(ns), "--", color=line.get_color(), alpha=0.5)
            line.set_label(f"{label} (slope {fit.slope:.2f})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log" if loglog else "linear")
    ax.set_xlabel("indexed images N")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def pareto_plot(
    panels: Sequence[tuple[str, str, Mapping[str, tuple[float, float]], set[str]]],
    n_cols: int,
    highlight: set[str],
    path: Path,
    title: str,
) -> Path:
    """panels: (x label, y label, label -> (latency, quality), labels on the Pareto front), laid out
    n_cols a row; latency on a log axis, one colour per label in every panel, `highlight`ed labels
    (the DSIs) as stars, and the front as a step line from the fastest front point."""
    labels = sorted({label for _, _, points, _ in panels for label in points})
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    rows = -(-len(panels) // n_cols)
    fig, axes = plt.subplots(rows, n_cols, figsize=(4.2 * n_cols, 3.4 * rows), squeeze=False)
    for ax, (xlabel, ylabel, points, front) in zip(axes.flat, panels):
        for label, (x, y) in points.items():
            if np.isfinite(x) and np.isfinite(y):
                ax.scatter(
                    x,
                    y,
                    color=colours[label],
                    marker="*" if label in highlight else "o",
                    s=90 if label in highlight else 36,
                    edgecolors="black" if label in front else "none",
                    zorder=3,
                )
        on = sorted((points[label] for label in front), key=lambda p: p[0])
        if on:
            ax.step([p[0] for p in on], [p[1] for p in on], where="post", color="black", alpha=0.5, lw=1)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels crowd a narrow range
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    handles = [
        plt.Line2D(
            [], [], color=colours[label], marker="*" if label in highlight else "o", linestyle="", label=label
        )
        for label in labels
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(handles) - 1) // 4), 1, 1))  # room for the legend
    return _save(fig, path, layout=False)


def precision_curve(
    curves: Mapping[str, np.ndarray], chance: Mapping[str, np.ndarray] | None, path: Path, title: str
) -> Path:
    """curves: label -> mean P@K for K = 1..len; dotted chance lines when given."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, values in curves.items():
        ks = np.arange(1, len(values) + 1)
        (line,) = ax.plot(ks, values, label=label)
        if chance and label in chance:
            ax.plot(ks, chance[label], ":", color=line.get_color(), alpha=0.7)
    ax.set_xlabel("K")
    ax.set_ylabel("mean Precision@K (test queries)")
    ax.set_title(title + "  (dotted: chance)")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def training_curves(
    histories: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
    path: Path,
    title: str,
    xlabel: str = "epoch",
) -> Path:
    """histories: run label -> metric name -> [(epoch, value)]; one panel per metric name,
    at most three panels a row, and one colour per run across every panel."""
    names = list(dict.fromkeys(m for h in histories.values() for m in h))  # first-seen order
    if not names:
        raise ValueError("no training curves to plot")
    colours = {label: f"C{i % 10}" for i, label in enumerate(histories)}
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for label, h in histories.items():
            if name in h and h[name]:
                steps, values = zip(*h[name])
                ax.plot(steps, values, label=label, color=colours[label])
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=c, label=label) for label, c in colours.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05 + 0.03 * (len(handles) > 4), 1, 1))  # room for the legend
    return _save(fig, path, layout=False)


def quality_flops_plot(
    series: Mapping[str, Mapping[str, np.ndarray]],
    path: Path,
    title: str,
    ylabel: str,
    budgets: Sequence[float] = (),
) -> Path:
    """series: label -> its seeds on one FLOPs axis (`bench.report.compute.seed_band`: `flops`,
    `mean`, `low`, `high`, `ends`); one colour per label, the mean a line over the band of the
    seeds' range, each seed's end a dot; `budgets` within the curves dotted verticals; FLOPs on a
    log axis."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, band) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        ax.fill_between(band["flops"], band["low"], band["high"], color=colour, alpha=0.2, lw=0)
        ax.plot(band["flops"], band["mean"], "-", color=colour, lw=1.5, label=label)
        ax.plot(band["ends"][:, 0], band["ends"][:, 1], "o", color=colour, ms=3.5)
    reach = max((band["flops"][-1] for band in series.values()), default=0.0)
    for budget in budgets:
        if budget <= reach:  # a budget beyond every curve would only stretch the axis
            ax.axvline(budget, color="0.5", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (counted on real steps)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def retrieval_grid(
    queries: np.ndarray,
    results: np.ndarray,
    relevant: np.ndarray,
    path: Path,
    title: str,
    query_labels: list[str] | None = None,
    result_labels: list[list[str]] | None = None,
) -> Path:
    """queries uint8 [Q, 3, H, W]; results uint8 [Q, k, 3, H, W] (zeros where missing);
    relevant bool [Q, k]; optional class names of the queries [Q] and results [Q][k], printed
    under each image. Relevant results get a green frame, others red."""
    n_q, k = results.shape[:2]
    fig, axes = plt.subplots(n_q, k + 1, figsize=(1.3 * (k + 1), 1.4 * n_q), squeeze=False)
    for q in range(n_q):
        axes[q][0].imshow(queries[q].transpose(1, 2, 0))
        axes[q][0].set_title("query" if q == 0 else "", fontsize=8)
        if query_labels is not None:
            axes[q][0].set_xlabel(query_labels[q], fontsize=6)
        for j in range(k):
            ax = axes[q][j + 1]
            ax.imshow(results[q, j].transpose(1, 2, 0))
            color = "#1a9850" if relevant[q, j] else "#d73027"
            for side in ax.spines.values():
                side.set_edgecolor(color)
                side.set_linewidth(3)
            if q == 0:
                ax.set_title(f"#{j + 1}", fontsize=8)
            if result_labels is not None:
                ax.set_xlabel(result_labels[q][j], fontsize=6)
        for ax in axes[q]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title + "  (green: relevant)", fontsize=9)
    return _save(fig, path)


def caption_grid(
    captions: list[str],
    own: np.ndarray,
    results: np.ndarray,
    relevant: np.ndarray,
    is_own: np.ndarray,
    path: Path,
    title: str,
    result_labels: list[list[str]] | None = None,
) -> Path:
    """Caption queries: each row prints its caption above, then the caption's own image (blue frame)
    and its top-k results. own uint8 [Q, 3, H, W]; results uint8 [Q, k, 3, H, W] (zeros where
    missing); relevant / is_own bool [Q, k]: green frames for relevant results, red for others,
    and '(own)' under the caption's own image among them."""
    import textwrap

    n_q, k = results.shape[:2]
    fig, axes = plt.subplots(n_q, k + 1, figsize=(1.3 * (k + 1), 1.75 * n_q + 0.3), squeeze=False)
    for q in range(n_q):
        caption = textwrap.shorten(f"“{captions[q]}”", width=12 * (k + 1))
        axes[q][0].set_title(caption, loc="left", fontsize=7, fontstyle="italic")
        axes[q][0].imshow(own[q].transpose(1, 2, 0))
        axes[q][0].set_xlabel("own image", fontsize=6)
        for side in axes[q][0].spines.values():
            side.set_edgecolor("#1f77b4")
            side.set_linewidth(3)
        for j in range(k):
            ax = axes[q][j + 1]
            ax.imshow(results[q, j].transpose(1, 2, 0))
            for side in ax.spines.values():
                side.set_edgecolor("#1a9850" if relevant[q, j] else "#d73027")
                side.set_linewidth(3)
            text = (result_labels[q][j] if result_labels is not None else f"#{j + 1}") + (
                " (own)" if is_own[q, j] else ""
            )
            ax.set_xlabel(text, fontsize=6)
        for ax in axes[q]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title + "  (blue: the caption's own image; green: relevant)", fontsize=9)
    fig.subplots_adjust(
        left=0.02, right=0.98, top=1 - 0.5 / (1.75 * n_q + 0.3), bottom=0.04, hspace=0.55, wspace=0.08
    )
    return _save(fig, path, layout=False)
