"""Model choice in a report: the trial with the best objective on the validation queries.

Choice compares trials that answer one task. A study whose grid varies the database itself
(`dataset.n_total`: the latency and scale studies, `table1`) asks a question per size, and a
trial at 1,024 images beats any at 65,536 for reasons that say nothing about the method, so
such a study gets one chosen trial per size, never one across sizes (as the Table 1 layout
of the DSI paper compares methods within each database size)."""

from __future__ import annotations

from bench.report.data import StudyRecord, TrialRecord
from bench.report.markdown import fmt, fmt_ci, label

# sampled settings that change the task a trial answers, not the method answering it
TASK_AXES = ("dataset.n_total",)
MAX_CURVES = 8  # methods per figure before it stops being readable


def task_of(t: TrialRecord) -> tuple[tuple[str, str], ...]:
    """The values of the task axes trial `t` sampled (empty when the grid varies none)."""
    return tuple((k, str(t.sampled[k])) for k in TASK_AXES if k in t.sampled)


def _best_by(record: StudyRecord, trials: list[TrialRecord], key) -> dict:
    """Per `key(trial)`, in the order the trials first reach it: the trial with the best
    validation objective; of equal ones the first. Trials without one are left out."""
    sign = 1 if record.direction == "maximize" else -1
    best: dict = {}
    for t in trials:
        value = t.choice_value(record.objective)
        if value is None:
            continue
        held = best.get(key(t))
        if held is None or sign * value > sign * held.choice_value(record.objective):
            best[key(t)] = t
    return best


def ranked(record: StudyRecord, trials: list[TrialRecord]) -> list[TrialRecord]:
    """The trials with a validation objective, best first (of equal ones, the earlier first, as
    `_best_by` picks them)."""
    sign = 1 if record.direction == "maximize" else -1
    scored = [t for t in trials if t.choice_value(record.objective) is not None]
    return sorted(scored, key=lambda t: -sign * t.choice_value(record.objective))


def chosen_per_task(record: StudyRecord) -> dict[tuple[tuple[str, str], ...], TrialRecord]:
    """Model choice per task (the values of the task axes): the trial each one picks."""
    return _best_by(record, record.trials, task_of)


def best_per_method(record: StudyRecord) -> list[TrialRecord]:
    """The trial of each method that model choice picks, best first, at most MAX_CURVES (the
    curves, example queries and per-method tables of a report). Where the grid varies the
    database size, among the trials at its largest size, where the study's question is sharpest."""
    trials = record.trials
    sizes = {int(t.sampled[TASK_AXES[0]]) for t in trials if TASK_AXES[0] in t.sampled}
    if sizes:
        trials = [t for t in trials if int(t.sampled.get(TASK_AXES[0], -1)) == max(sizes)]
    several = len({t.method for t in trials}) > 1
    best = _best_by(record, trials, lambda t: t.method if several else label(t, record))
    return ranked(record, list(best.values()))[:MAX_CURVES]


def chosen_trials(record: StudyRecord) -> set[int]:
    """Trial numbers that model choice picks (one per task)."""
    return {t.number for t in chosen_per_task(record).values()}


def _chosen_line(t: TrialRecord, record: StudyRecord) -> str:
    m = t.metrics[record.objective]
    return (
        f"**#{t.number} {label(t, record)}** with {fmt(t.choice_value(record.objective))} there; its test "
        f"{record.objective} = {fmt_ci(m.mean, m.ci95)} (chance {fmt(m.chance)}). Run `{t.run_id}`"
    )


def chosen_section(record: StudyRecord) -> str:
    """The chosen trial, or one per task when the study's grid varies the task."""
    chosen = chosen_per_task(record)
    if not chosen:
        return "No finished trial has the objective metric."
    first = next(iter(chosen.values()))
    split = first.choice_split(record.objective)
    search = '--text "CAPTION"`.' if first.params.get("dataset.protocol") == "text" else "IMAGE...`."
    if len(chosen) == 1:
        return (
            f"Chosen trial (best {record.objective} on the {split}): {_chosen_line(first, record)}; "
            f"query its index with `bench search --run {first.run_id} " + search
        )
    axes = ", ".join(f"`{k}`" for k, _ in next(iter(chosen)))  # every task names the same axes
    lines = [
        f"Chosen trial per task (best {record.objective} on the {split} at each value of {axes}: "
        "trials that index different databases answer different tasks, so none is chosen across them):"
    ]
    for task, t in chosen.items():
        where = ", ".join(f"{k}={v}" for k, v in task)
        lines.append(f"- {where}: {_chosen_line(t, record)}.")
    lines.append(f"\nQuery a chosen trial's index with `bench search --run RUN_ID {search}")
    return "\n".join(lines)
