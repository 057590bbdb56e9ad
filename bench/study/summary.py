"""What a worker hands back after `bench run`: the trials by state, the best one, a table of
the trials and where the results are."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState
from rich.markup import escape

from bench.study.objective import fmt
from bench.study.queue import MOVED_ATTR


@dataclass
class RunOutcome:
    study_name: str
    storage: str
    tracking_uri: str
    experiment: str
    experiment_id: str
    parent_run_id: str
    counts: dict[str, int]  # trials that started, by state, whole study (queued points not counted)
    target: int  # COMPLETE trials wanted
    best: dict[str, Any] | None  # number, value, params, run_id
    ran: int  # trials this worker ran
    metric: str = "MAP@10"  # the objective
    # every trial: number, state, params, metrics, error
    trials: list[dict[str, Any]] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)  # trial numbers that failed in this session
    interrupted: bool = False
    queued: int = 0  # grid points waiting in the queue

    @property
    def complete(self) -> int:
        return self.counts.get("COMPLETE", 0)

    @property
    def done(self) -> bool:
        return self.complete >= self.target

    def read(self, trials, direction: str) -> None:
        """Fill counts, queued, trials and best from a list of the study's FrozenTrials."""
        self.queued = sum(t.state == TrialState.WAITING for t in trials)
        started = [t for t in trials if t.state != TrialState.WAITING and not t.user_attrs.get(MOVED_ATTR)]
        self.counts = count_states(started)
        self.trials = [
            {
                "number": t.number,
                "state": t.state.name,
                "params": t.params,
                "metrics": t.user_attrs.get("metrics", {}),
                "error": t.user_attrs.get("error") or t.user_attrs.get("skipped"),
                "seconds": t.user_attrs.get("seconds"),
                "run_id": t.user_attrs.get("mlflow_run_id"),
            }
            for t in started
        ]
        complete = [t for t in started if t.state == TrialState.COMPLETE]
        self.best = None
        if complete:
            best = (max if direction == "maximize" else min)(complete, key=lambda t: t.value)
            self.best = {
                "number": best.number,
                "value": best.value,
                "params": best.params,
                "run_id": best.user_attrs.get("mlflow_run_id"),
            }


def count_states(trials) -> dict[str, int]:
    """Trials by state name; queued points (WAITING, or queued again behind retries) are left out."""
    out: dict[str, int] = {}
    for t in trials:
        if t.state != TrialState.WAITING and not t.user_attrs.get(MOVED_ATTR):
            out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def trials_table(outcome: RunOutcome, limit: int = 30):
    """A rich table of the study's trials: parameters, objective ± 95% CI, chance, IA@1."""
    from rich.table import Table

    rows = outcome.trials
    if len(rows) > limit:  # the best finished ones, then the most recent others
        done = sorted(
            (r for r in rows if r["state"] == "COMPLETE"),
            key=lambda r: -r["metrics"].get(outcome.metric, {}).get("mean", float("-inf")),
        )
        rows = sorted(done[:limit], key=lambda r: r["number"])
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    table = Table(
        title=f"trials of {outcome.study_name}"
        + (f" (best {limit} of {len(outcome.trials)})" if len(outcome.trials) > limit else "")
    )
    for col in ["#", *keys, outcome.metric, "chance", "IA@1", "s", "state"]:
        table.add_column(col, justify="right" if col not in keys else "left", overflow="fold")
    for r in rows:
        m = r["metrics"].get(outcome.metric)
        ia = r["metrics"].get("IA@1")
        table.add_row(
            str(r["number"]),
            *[escape(str(r["params"].get(k, ""))) for k in keys],
            f"{m['mean']:.4f} ± {fmt(m['ci95'])}" if m else "-",
            f"{m['chance']:.4f}" if m else "-",
            f"{ia['mean']:.3f}" if ia else "-",
            f"{r['seconds']:.1f}" if r.get("seconds") else "-",
            r["state"] if r["state"] == "COMPLETE" else f"[red]{r['state']}[/]",
        )
    return table


def describe(outcome: RunOutcome) -> str:
    """Where the results are, for the end of `bench run` and `make demo`."""
    queued = f", {outcome.queued} queued" if outcome.queued else ""
    lines = [
        f"Optuna study  {outcome.study_name} in {outcome.storage}",
        f"  trials      {json.dumps(outcome.counts)} ({outcome.complete}/{outcome.target} complete{queued})",
    ]
    if outcome.best:
        lines.append(
            f"  best        trial {outcome.best['number']}: {outcome.best['value']:.4f} "
            f"{outcome.best['params']}"
        )
    lines += [
        f"MLflow        {outcome.tracking_uri}",
        f"  experiment  {outcome.experiment} (id {outcome.experiment_id}), study run {outcome.parent_run_id}",
    ]
    if outcome.best and outcome.best.get("run_id"):
        lines.append(
            f"  best run    {outcome.best['run_id']}  (bench search --run {outcome.best['run_id']} IMAGE...)"
        )
    lines.append("Browse        bench ui")
    return "\n".join(lines)
