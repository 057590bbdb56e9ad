"""The Tuning section: for a study with a `tune:` block, each tuned method's knobs and ranges,
its tuning trials (finished / failed), the recipe chosen on the validation queries and whether
the study's trials ran with it. Tuning trials appear here only, never among the results."""

from __future__ import annotations

from typing import Any

from bench.report.data import StudyRecord, TrialRecord
from bench.report.markdown import fmt, md_table
from bench.report.methods import range_text
from bench.study.tuning import METHOD_TAG


def tuning_section(record: StudyRecord) -> str:
    """The section's markdown; "" for a study without a `tune:` block."""
    tune = record.resolved.get("tune")
    if not tune:
        return ""
    objective = record.objective
    finished = record.tuning_trials()
    rows = []
    for method, knobs in tune["methods"].items():
        runs = (
            record.tuning[record.tuning[f"tags.{METHOD_TAG}"] == method]
            if len(record.tuning)
            else record.tuning
        )
        n_done = int((runs["status"] == "FINISHED").sum()) if len(runs) else 0
        n_failed = int(runs["status"].isin(["FAILED", "KILLED"]).sum()) if len(runs) else 0
        best = chosen(record, [t for t in finished if t.tags.get(METHOD_TAG) == method])
        recipe = {k: best.sampled[k] for k in knobs if k in best.sampled} if best is not None else {}
        rows.append(
            [
                method,
                "; ".join(f"{k}: {range_text(v)}" for k, v in knobs.items()),
                f"{n_done} / {n_failed}",
                ", ".join(f"{k}={v}" for k, v in recipe.items()) or "none (no finished tuning trial)",
                fmt(best.choice_value(objective)) if best is not None else "n/a",
                _used(record, method, recipe) if best is not None else "n/a",
            ]
        )
    methods = record.resolved.get("methods", {})
    untuned = [m for m in methods if m not in tune["methods"]]
    intro = (
        f"Every tuned method had the same budget: {tune['trials_per_method']} finished trials drawn by "
        f"{tune['sampler']} (seed {tune['seed']}) over its own knobs, each trial one seed (the first), "
        f"scored by {objective} on the validation queries. The best of them (ties: the first) is the "
        "method's recipe, merged into its parameters for the study's trials, which ran every seed and "
        "are reported on test; tuning trials are left out of every other section."
    )
    if untuned:
        intro += f" Not tuned (run with their own parameters): {', '.join(untuned)}."
    table = md_table(
        [
            "method",
            "knobs searched",
            "trials finished / failed",
            "chosen recipe",
            f"validation {objective}",
            "the study's trials ran it",
        ],
        rows,
    )
    return intro + "\n\n" + table


def chosen(record: StudyRecord, trials: list[TrialRecord]) -> TrialRecord | None:
    """The tuning trial with the best validation objective; of equal ones the first."""
    scored = sorted(
        (t for t in trials if t.choice_value(record.objective) is not None), key=lambda t: t.number
    )
    if not scored:
        return None
    sign = 1 if record.direction == "maximize" else -1
    return max(scored, key=lambda t: sign * t.choice_value(record.objective))


def _used(record: StudyRecord, method: str, recipe: dict[str, Any]) -> str:
    """Whether every finished trial of `method` logged the recipe's values as its parameters."""
    trials = [t for t in record.trials if t.method == method]
    if not trials:
        return "no finished trial"
    same = all(t.params.get(k) == str(v) for t in trials for k, v in recipe.items())
    return "yes" if same else "**no**"
