"""Training compute in a report: whether each trial converged, validation quality against
training FLOPs (the learning curves of the chosen trials), and quality at equal compute.

Everything comes from what the trial logged (`bench.convergence`, `bench.curves`): `converged`,
`plateau_reached`, `target_ia_reached`, `ia1_reached`, `ia1_plateau`, `epochs_used`, `epoch_cap`,
`train_flops` and, per seed, the checkpoints `curve/seed<N>/val_<metric>` against `curve/seed<N>/flops`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import plots
from bench.report.choice import best_per_method
from bench.report.data import StudyRecord, TrialRecord, metric_history
from bench.report.markdown import fmt, fmt_ci, label, md_table
from bench.tracking import metric_name

BUDGET_FACTORS = (1, 4, 16)  # the equal-compute budgets, as multiples of the smallest final FLOPs


def convergence_cell(t: TrialRecord) -> str:
    """The trial's training in words, for its row of the results table: 'converged in E of C
    epochs', 'did not converge (...)' naming what failed, or 'no training'."""
    x = t.extra
    if "converged" not in x:
        return "no training" if "train_flops" not in x else "not judged (no validation queries)"
    epochs = f"{x.get('epochs_used', float('nan')):.0f} of {x.get('epoch_cap', float('nan')):.0f} epochs"
    if x["converged"] >= 1.0:
        return f"converged in {epochs}" + _forgotten(t)
    why = []
    if x.get("target_ia_reached", 1.0) < 1.0:
        why.append(_ia_shortfall(x, t.params))
    if x.get("plateau_reached", 1.0) < 1.0:
        why.append(_plateau_shortfall(x, t.params, epochs))
    return f"**did not converge** ({'; '.join(why) or epochs})" + _forgotten(t)


def _forgotten(t: TrialRecord) -> str:
    """A DSI whose indexing reached its IA@1 target on every seed but whose IA@1 on the indexed
    images after all training (the trial's IA@1) is below it: the retrieval phase cost it part
    of its index. '' otherwise, and where the shortfall at indexing is named already."""
    x, ia1 = t.extra, t.value("IA@1")
    target = x.get("ia1_target")
    if ia1 is None or target is None or x.get("target_ia_reached", 0.0) < 1.0 or ia1 >= target:
        return ""
    return f"; IA@1 fell to {fmt(ia1, 3)} after its indexing reached the {fmt(target, 2)} target"


def _plateau_shortfall(x: dict[str, float], params: dict[str, str], epochs: str) -> str:
    """How training missed its validation plateau: within the epochs it used, for one seed; with
    several, how many seeds ran their plateau phase to its cap, beside the mean epochs (a mean
    well below the cap hides the seeds that ran to it)."""
    seeds = int(_number(params.get("repeats")) or 1)
    if seeds <= 1:
        return f"no validation plateau in {epochs}"
    missed = seeds - round(x["plateau_reached"] * seeds)
    return f"no validation plateau for {missed} of {seeds} seeds, mean {epochs}"


def _ia_shortfall(x: dict[str, float], params: dict[str, str]) -> str:
    """How a DSI missed its IA@1 target: the IA@1 reached against the target for one seed; with
    several, how many seeds reached it beside the mean IA@1 (a mean can round to the target, or
    pass it, while one seed falls short)."""
    target = fmt(_number(x.get("ia1_target", params.get("target_ia"))), 2)
    seeds = int(_number(params.get("repeats")) or 1)
    plateaus = round(x.get("ia1_plateau", 0.0) * seeds)
    if seeds <= 1:
        stop = ", indexing stopped on an IA@1 plateau" if plateaus else ""
        return f"IA@1 {fmt(x.get('ia1_reached'), 2)} < target {target}{stop}"
    reached = round(x["target_ia_reached"] * seeds)
    mean = fmt(x.get("ia1_reached"), 3)
    stop = f", {plateaus} stopped on an IA@1 plateau" if plateaus else ""
    return f"IA@1 target {target} reached by {reached} of {seeds} seeds{stop}, mean IA@1 {mean}"


def _number(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def seed_curves(t: TrialRecord, tracking_uri: str) -> tuple[str | None, list[list[tuple[float, float]]]]:
    """The validation metric's key and each seed's checkpoints as (training FLOPs, value)."""
    history = metric_history(t.run_id, tracking_uri, prefix="curve/")
    seeds = sorted({k.split("/")[0] for k in history})
    metric, curves = None, []
    for seed in seeds:
        val = next((k for k in history if k.startswith(f"{seed}/val_")), None)
        if val is None or f"{seed}/flops" not in history:
            continue
        metric = metric_name(val.split("/val_", 1)[1])
        flops = dict(history[f"{seed}/flops"])
        curves.append([(flops[step], v) for step, v in history[val] if step in flops])
    return metric, curves


def _checkpoints(curve: list[tuple[float, float]]) -> np.ndarray:
    """One seed's (FLOPs, value) checkpoints as a [C, 2] array in FLOPs order (ties as logged)."""
    return np.asarray(sorted(curve, key=lambda point: point[0]), dtype=float).reshape(-1, 2)


def _last_at_or_below(checkpoints: np.ndarray, budgets):
    """The row of the last checkpoint at or below each budget; -1 before the first."""
    return np.searchsorted(checkpoints[:, 0], budgets, side="right") - 1


def value_at(curves: list[list[tuple[float, float]]], budget: float) -> float | None:
    """Mean over seeds of each seed's last checkpoint at or below `budget` FLOPs; None when a
    seed's first checkpoint is already above it (not reached)."""
    values = []
    for curve in curves:
        points = _checkpoints(curve)
        row = _last_at_or_below(points, budget)
        if row < 0:
            return None
        values.append(points[row, 1])
    return float(np.mean(values)) if values else None


def seed_band(curves: list[list[tuple[float, float]]], points: int = 64) -> dict[str, np.ndarray] | None:
    """One method's seeds on one FLOPs axis: at `points` log-spaced budgets from the first at which
    every seed has a checkpoint to the last checkpoint of any, `value_at` of each budget (`mean`: a
    seed that stopped earlier counts with its final checkpoint) and the range over seeds (`low`,
    `high`); `ends`: each seed's last checkpoint [S, 2]. None without positive FLOPs."""
    seeds = [_checkpoints([(f, v) for f, v in curve if f > 0]) for curve in curves]
    seeds = [c for c in seeds if len(c)]
    if not seeds:
        return None
    start, stop = max(c[0, 0] for c in seeds), max(c[-1, 0] for c in seeds)
    budgets = np.geomspace(start, stop, points) if stop > start else np.array([start])
    values = np.stack([c[_last_at_or_below(c, budgets), 1] for c in seeds])  # [S, points]
    return {
        "flops": budgets,
        "mean": values.mean(0),
        "low": values.min(0),
        "high": values.max(0),
        "ends": np.stack([c[-1] for c in seeds]),
    }


def compute_section(record: StudyRecord, out: Path, rel: str) -> str | None:
    trained = {}
    for t in best_per_method(record):
        metric, curves = seed_curves(t, record.tracking_uri)
        if curves:
            trained[label(t, record)] = (t, metric, curves)
    if not trained:
        return None
    metric = next(iter(trained.values()))[1]
    base = min(t.extra.get("train_flops", curves[0][-1][0]) for t, _, curves in trained.values())
    budgets = [f * base for f in BUDGET_FACTORS]
    bands = {name: seed_band(curves) for name, (_, _, curves) in trained.items()}
    fig = plots.quality_flops_plot(
        {name: band for name, band in bands.items() if band is not None},
        out / "quality_vs_flops.png",
        f"{record.name}: validation quality against training FLOPs",
        f"validation {metric}",
        budgets=budgets,
    )
    objective = record.objective
    rows = []
    for name, (t, _, curves) in trained.items():
        at = [value_at(curves, b) for b in budgets]
        final = t.metrics.get(objective)
        rows.append(
            [
                name,
                *("not reached" if v is None else fmt(v) for v in at),
                "n/a" if final is None else fmt_ci(final.mean, final.ci95),
                f"{t.extra.get('train_flops', float('nan')):.3g}",
                convergence_cell(t),
            ]
        )
    headers = [
        "method",
        *(f"val {metric} at {f}x ({b:.3g} FLOPs)" for f, b in zip(BUDGET_FACTORS, budgets)),
        f"at convergence: test {objective}",
        "training FLOPs",
        "training",
    ]
    return (
        "Validation quality against training FLOPs of the chosen trial of each trained method "
        "(checkpoints at epochs 1, 2, 4, 8, ... and every `val_every` epochs of the phase that stops on a "
        "plateau): at each budget every seed counts with its last checkpoint at or below it (a seed whose "
        "training stopped earlier, with its final one), the line is the mean over seeds and the band "
        "their range, from the budget at which every seed has a checkpoint; dots mark where each seed's "
        "training stopped, dotted verticals the budgets of the table below that the curves reach. FLOPs "
        "are counted with `torch.utils.flop_counter.FlopCounterMode` on the first real training step "
        "of each phase and batch size (forward and backward) and charged per example for the others; a "
        "frozen encoder's features count once.\n\n![quality against "
        f"FLOPs]({rel}/{fig.name})\n\n**Quality at equal compute.** Each method's validation metric at the "
        "smallest final training FLOPs of any method shown and "
        f"{', '.join(f'{f}x' for f in BUDGET_FACTORS[1:])} that: its last checkpoint at or below the budget "
        "(mean over seeds), *not reached* when its first checkpoint already costs more; beside "
        "it the test metric and FLOPs where its training stopped.\n\n" + md_table(headers, rows)
    )
