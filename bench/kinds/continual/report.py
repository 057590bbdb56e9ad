"""The continual-indexing section of a report (DSI++, Mehta et al. 2022): per method and step,
IA@1 of the original images and of the added ones, the ranked objective and the cost of
the step; forgetting curves; and the cost of adding an image to a DSI against each
index-then-retrieve baseline. Reads the `continual/*` step metrics `bench.tracking` logs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import plots
from bench.report.data import StudyRecord, TrialRecord, metric_history
from bench.report.markdown import md_table
from bench.tracking import metric_key

PREFIX = "continual/"
GOAL_IA, GOAL_COST = (
    0.95,
    0.25,
)  # the replay goal: IA@1 >= 0.95 on old and new, < 1/4 of full retraining's cost


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _steps(t: TrialRecord, record: StudyRecord) -> dict[str, np.ndarray]:
    """Each continual metric as an array over steps (mean over seeds)."""
    hist = metric_history(t.run_id, record.tracking_uri, prefix=PREFIX)
    n = 1 + max((s for h in hist.values() for s, _ in h), default=-1)
    out = {}
    for key, points in hist.items():
        values = np.full(n, np.nan)
        for step, v in points:
            values[step] = v
        out[key] = values
    return out


def _add_cost(steps: dict[str, np.ndarray]) -> float:
    """Mean wall seconds per added image over the add steps (step 0 is the first index)."""
    per = steps.get("seconds_per_image")
    return float(np.nanmean(per[1:])) if per is not None and len(per) > 1 else float("nan")


def replay_goal(low_old: float, low_new: float, cost_share: float) -> str:
    """The replay goal's verdict from the lowest IA@1 after an add step on the original and on the
    added images, and the cost as a share of full retraining (NaN: no `full` trial to compare with)."""
    kept = low_old >= GOAL_IA and low_new >= GOAL_IA
    if kept and not np.isfinite(cost_share):
        return "IA@1 part met, cost part not measured here"
    return "met" if kept and cost_share < GOAL_COST else "not met"


def continual_section(record: StudyRecord, out: Path, rel: str) -> str | None:
    trials = {t.method: t for t in record.trials}  # one trial per method in a continual study
    data = {m: _steps(t, record) for m, t in trials.items()}
    data = {m: s for m, s in data.items() if "ia_original" in s}
    if not data:
        return None
    objective = metric_key(record.objective)
    rows = []
    for method, s in data.items():
        for i in range(len(s["ia_original"])):
            added = s.get("ia_added", np.full(i + 1, np.nan))
            rows.append(
                [
                    f"`{method}`" if i == 0 else "",
                    str(i),
                    f"{s['n_indexed'][i]:.0f}",
                    _fmt(s["ia_original"][i]),
                    _fmt(added[i] if i < len(added) else None),
                    _fmt(s.get(objective, [np.nan] * (i + 1))[i]),
                    _fmt(s["seconds"][i], 1),
                    _fmt(s["seconds_per_image"][i], 4),
                ]
            )
    header = [
        "method",
        "step",
        "indexed",
        "IA@1 original images",
        "IA@1 added images",
        record.objective,
        "step s",
        "s per image",
    ]
    table = md_table(header, rows)

    curves = {
        method: {
            "IA@1 of the original images": list(enumerate(s["ia_original"])),
            "IA@1 of the first added batch": [
                (i, v) for i, v in enumerate(s.get("ia_batch1", [])) if np.isfinite(v)
            ],
            f"{record.objective} (test)": [
                (i, v) for i, v in enumerate(s.get(objective, [])) if np.isfinite(v)
            ],
        }
        for method, s in data.items()
    }
    fig = plots.training_curves(
        curves,
        out / "forgetting.png",
        f"{record.name}: after each indexing step",
        xlabel="step (0 = first index)",
    )

    lines = _cost_lines(trials, data)
    return "\n\n".join(
        [
            "Each trial indexes the first share of the indexed images, then adds the rest in batches "
            "(`Retriever.add`); every number is the mean over seeds after that step. IA@1 queries indexed "
            f"images with themselves; {record.objective} is on the test queries that have a relevant image "
            "indexed by then.",
            table,
            f"![forgetting curves]({rel}/{fig.name})",
            *lines,
        ]
    )


def _cost_lines(trials: dict, data: dict) -> list[str]:
    """The cost of adding an image per DSI method against the baselines, and the goal verdict of each
    replay DSI."""
    cost = {m: _add_cost(s) for m, s in data.items()}
    dsis = [m for m, t in trials.items() if m in data and t.retriever == "dsi-vit"]
    others = [m for m in data if m not in dsis]
    lines = []
    if dsis and others:
        ratio_header = ["DSI method", "s per added image"] + [f"x `{m}`" for m in others]
        ratio_rows = [
            [f"`{d}`", _fmt(cost[d], 4)]
            + [_fmt(cost[d] / cost[o], 0) if cost[o] > 0 else "-" for o in others]
            for d in dsis
        ]
        lines += [
            "Cost of adding one image (wall seconds per added image, mean over the add steps and seeds) and "
            "how many times a baseline's add it costs:",
            md_table(ratio_header, ratio_rows),
        ]
    full = next((d for d in dsis if trials[d].params.get("add_strategy") == "full"), None)
    for d in dsis:
        if trials[d].params.get("add_strategy") != "replay":
            continue
        s = data[d]
        low_old = float(np.nanmin(s["ia_original"][1:])) if len(s["ia_original"]) > 1 else float("nan")
        low_new = float(np.nanmin(s["ia_added"][1:])) if "ia_added" in s else float("nan")
        share = cost[d] / cost[full] if full and cost[full] > 0 else float("nan")
        verdict = replay_goal(low_old, low_new, share)
        if np.isfinite(share):
            cost_text = f"cost {_fmt(share, 2)} of `{full}`"
        else:
            cost_text = (
                f"{_fmt(cost[d], 4)} s per added image; no `full` retraining in this study to compare "
                "with (a study of the same set-up that has one gives its cost per added image)"
            )
        lines.append(
            f"Goal for `{d}` (IA@1 >= {GOAL_IA} on old and on new images after every step, at less than "
            f"{GOAL_COST:.0%} of full retraining's cost): **{verdict}**; lowest IA@1 after an "
            f"add step {_fmt(low_old)} (original images) and {_fmt(low_new)} (added images), {cost_text}."
        )
    return lines
