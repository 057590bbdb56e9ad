"""What a report reads: one study's parent run and its finished trial runs, from MLflow only.

`load_study_record` finds the newest parent run of a study (optionally at one scale) in
any experiment of the tracking store and its nested FINISHED trial runs (for a trial
number logged more than once, e.g. retried after a crash, the newest finished run), with
their parameters, metrics (mean, 95% CI, chance, n) and tags. Nothing is recomputed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from bench.tracking import PARENT_TAG, VAL_PREFIX, metric_name, resolve_tracking_uri
from vitdsi.errors import VitDSIError
from vitdsi.metrics import parse_metric


@dataclass(frozen=True)
class MetricRecord:
    mean: float  # as logged
    ci95: float | None  # half-width of the 95% CI (None when not logged, e.g. one query)
    chance: float | None  # chance level of the same split
    n: int | None  # queries averaged
    ci95_queries: float | None = None  # CI over the pooled queries of all seeds (= ci95 for one seed)


@dataclass
class TrialRecord:
    run_id: str
    number: int  # Optuna trial number
    method: str  # method name (retriever name for single-retriever studies)
    retriever: str
    params: dict[str, str]  # every logged parameter (strings, as MLflow stores them)
    sampled: dict[str, Any]  # the values Optuna chose
    metrics: dict[str, MetricRecord]  # test queries (IA@K: indexed images), by canonical name, e.g. "MAP@10"
    extra: dict[str, float]  # other final metrics (timings, latencies, sizes)
    tags: dict[str, str]
    val_metrics: dict[str, MetricRecord] = field(default_factory=dict)  # validation queries (model choice)

    def value(self, metric: str) -> float | None:
        """The test value of `metric` (what a report prints)."""
        m = self.metrics.get(metric)
        return None if m is None else m.mean

    def choice_value(self, metric: str) -> float | None:
        """What model choice reads: the validation value (IA@K and runs logged before validation
        metrics existed fall back to the logged value, see `choice_split`)."""
        m = self.val_metrics.get(metric) or self.metrics.get(metric)
        return None if m is None else m.mean

    def choice_split(self, metric: str) -> str:
        """Which queries `choice_value` came from: validation queries, the indexed images or test queries."""
        if metric in self.val_metrics:
            return "validation queries"
        return "indexed images" if metric.startswith("IA@") else "test queries"

    @property
    def supervision(self) -> str:
        """What the retriever learned from ('label-free', 'corpus labels + query pairs', ...)."""
        return self.tags.get("supervision", "not recorded")


@dataclass(frozen=True)
class FailedRecord:
    """A trial run that did not finish: what it was, how it ended and why."""

    run_id: str
    number: int  # Optuna trial number
    status: str  # FAILED (an error) or KILLED (Ctrl-C / SIGTERM)
    sampled: dict[str, Any]  # the values Optuna chose
    error: str  # last line of the error


@dataclass
class StudyRecord:
    name: str
    run_id: str  # the parent run
    experiment_id: str
    tracking_uri: str
    params: dict[str, str]
    tags: dict[str, str]
    resolved: dict[str, Any]  # study_resolved.yaml
    trials: list[TrialRecord] = field(default_factory=list)
    failed: list[FailedRecord] = field(default_factory=list)  # trial runs that FAILED or were KILLED

    @property
    def objective(self) -> str:
        return self.params.get("objective", "MAP@10")

    @property
    def direction(self) -> str:
        return self.params.get("direction", "maximize")

    @property
    def scale(self) -> str:
        return self.tags.get("study.scale", "?")

    @property
    def paper_table(self) -> bool:
        """The study file's `report.paper_table`; a store written before the `report:` block
        existed had the paper's table for the study named `table1` only."""
        if "report" in self.resolved:
            return bool(self.resolved["report"].get("paper_table"))
        return self.name == "table1"

    def metric_names(self) -> list[str]:
        """Canonical metric names in the study's order, as far as trials logged them."""
        order = list(self.resolved.get("metrics", []))
        seen = {m for t in self.trials for m in t.metrics}
        return [m for m in order if m in seen] + sorted(seen - set(order))

    def best(self) -> TrialRecord | None:
        """The trial model choice picks: best objective on the validation queries."""
        scored = [t for t in self.trials if t.choice_value(self.objective) is not None]
        if not scored:
            return None
        sign = 1 if self.direction == "maximize" else -1
        return max(scored, key=lambda t: sign * t.choice_value(self.objective))


def _is_metric_base(key: str) -> bool:
    try:
        parse_metric(metric_name(key))
        return True
    except VitDSIError:
        return False


def _trial_metrics(raw: dict[str, float]) -> tuple[dict[str, MetricRecord], dict[str, MetricRecord], dict[str, float]]:
    """Test metrics, validation metrics and the other final values of a trial run."""
    metrics, val, extra = {}, {}, {}
    suffixes = ("_ci95", "_qci95", "_chance", "_n", "_per_seed")
    for key, value in raw.items():
        if key.startswith("train/") or key.endswith(suffixes):
            continue
        is_val = key.startswith(VAL_PREFIX) and _is_metric_base(key[len(VAL_PREFIX):])
        if is_val or _is_metric_base(key):
            record = MetricRecord(
                value, raw.get(f"{key}_ci95"), raw.get(f"{key}_chance"),
                int(raw[f"{key}_n"]) if f"{key}_n" in raw else None,
                raw.get(f"{key}_qci95", raw.get(f"{key}_ci95")),
            )
            if is_val:
                val[metric_name(key[len(VAL_PREFIX):])] = record
            else:
                metrics[metric_name(key)] = record
        else:
            extra[key] = value
    return metrics, val, extra


def load_study_record(study: str, tracking_uri: str | None = None, scale: str | None = None) -> StudyRecord:
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from mlflow.entities import ViewType

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    filt = f"tags.`vitdsi.kind` = 'study' AND tags.`study.name` = '{study}'"
    if scale:
        filt += f" AND tags.`study.scale` = '{scale}'"
    parents = client.search_runs(experiments, filt, order_by=["attributes.start_time DESC"], max_results=1) if experiments else []
    if not parents:
        raise VitDSIError(
            f"no study '{study}'{f' at scale {scale}' if scale else ''} in the tracking store {uri}; "
            f"run `bench run studies/{study}.yaml` first (or pass --tracking-uri)"
        )
    parent = parents[0]
    resolved_path = download_artifacts(run_id=parent.info.run_id, artifact_path="study_resolved.yaml", tracking_uri=uri)
    with open(resolved_path) as f:
        resolved = yaml.safe_load(f)
    record = StudyRecord(study, parent.info.run_id, parent.info.experiment_id, uri,
                         dict(parent.data.params), dict(parent.data.tags), resolved)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=5000,
    )
    by_number: dict[int, TrialRecord] = {}
    for run in children:
        tags = run.data.tags
        number = int(tags.get("optuna.trial_number", -1))
        if number in by_number:  # an older attempt of the same trial
            continue
        metrics, val, extra = _trial_metrics(run.data.metrics)
        by_number[number] = TrialRecord(
            run_id=run.info.run_id, number=number, method=tags.get("method", ""), retriever=tags.get("retriever", ""),
            params=dict(run.data.params), sampled=json.loads(tags.get("optuna.sampled", "{}")),
            metrics=metrics, extra=extra, tags=dict(tags), val_metrics=val,
        )
    record.trials = [by_number[n] for n in sorted(by_number)]
    stopped = client.search_runs(
        [parent.info.experiment_id],
        f"tags.`{PARENT_TAG}` = '{parent.info.run_id}' AND attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=5000,
    )
    record.failed = sorted(
        (FailedRecord(run.info.run_id, int(run.data.tags.get("optuna.trial_number", -1)), run.info.status,
                      json.loads(run.data.tags.get("optuna.sampled", "{}")), run.data.tags.get("error", ""))
         for run in stopped if run.info.status in ("FAILED", "KILLED")
         and int(run.data.tags.get("optuna.trial_number", -1)) not in by_number),
        key=lambda f: f.number,
    )
    return record


def metric_history(run_id: str, tracking_uri: str, prefix: str = "train/") -> dict[str, list[tuple[int, float]]]:
    """Per-epoch curves a trial logged (metric keys under `prefix`), as (step, value) lists."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    out = {}
    for key in run.data.metrics:
        if key.startswith(prefix):
            hist = client.get_metric_history(run_id, key)
            out[key[len(prefix):]] = sorted((m.step, m.value) for m in hist)
    return out
