"""The parameter importances of a report (bench.report): fANOVA over the finished trials of a
study that searches at least two parameters."""

from __future__ import annotations

from typing import Any

from bench.report.data import StudyRecord
from bench.report.markdown import fmt, md_table


def importance_section(record: StudyRecord) -> str | None:
    space = record.resolved.get("space", {})
    if len(space) < 2 or len(record.trials) < 4:
        return None
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists = {}
    for key, spec in space.items():
        kind = spec.get("type")
        if kind == "categorical":
            dists[key] = CategoricalDistribution([json_safe(c) for c in spec["choices"]])
        elif kind == "int":
            dists[key] = IntDistribution(
                spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step") or 1
            )
        elif kind == "float":
            dists[key] = FloatDistribution(
                spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step")
            )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=record.direction)
    for t in record.trials:
        value = t.value(record.objective)
        params = {k: json_safe(t.sampled[k]) for k in dists if k in t.sampled}
        if value is None or len(params) != len(dists):
            continue
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    if len(study.trials) < 4:
        return None
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except (RuntimeError, ValueError) as e:
        return f"Parameter importances could not be computed: {e}"
    rows = [[k, fmt(v, 3)] for k, v in imp.items()]
    return (
        md_table(["parameter", f"importance for {record.objective} (fANOVA)"], rows)
        + f"\n\nFrom {len(study.trials)} finished trials; importances sum to 1."
    )


def json_safe(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v
