"""What a report reads: one study's parent run and its trial runs, from MLflow only.

`load_study_record` finds the newest parent run of a study (optionally at one scale) in any
experiment of the tracking store, and its nested trial runs as one pandas DataFrame in
`mlflow.search_runs`' layout (`StudyRecord.runs`: one row per finished trial, the newest
attempt of a retried trial number); `TrialRecord` is the typed view of one row. Nothing is recomputed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import yaml

from bench.study.tuning import PHASE_TAG
from bench.tracking import PARENT_TAG, VAL_PREFIX, metric_key, metric_name, resolve_tracking_uri
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
    # finished trial runs, one row each, by trial number
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    trials: list[TrialRecord] = field(default_factory=list)  # the same runs, one TrialRecord each
    failed: list[FailedRecord] = field(default_factory=list)  # trial runs that FAILED or were KILLED
    # tuning trial runs (`tune:`), kept out of the above
    tuning: pd.DataFrame = field(default_factory=pd.DataFrame)

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

    @property
    def compare_with(self) -> list[str]:
        """The study file's `report.compare_with` (or `bench report --compare-with`): methods
        (study-file or retriever names) that every other trial is also compared with."""
        return list(self.resolved.get("report", {}).get("compare_with", []))

    def with_compare_with(self, names: list[str]) -> StudyRecord:
        """This record with `names` as its `compare_with` (a store logged before the field, or
        another choice); each must be a method or retriever of some trial."""
        known = {t.method for t in self.trials} | {t.retriever for t in self.trials}
        bad = [n for n in names if n not in known]
        if bad:
            raise VitDSIError(
                f"--compare-with: {', '.join(map(repr, bad))} is no method of study '{self.name}'; "
                f"methods: {', '.join(sorted({t.method for t in self.trials}))}"
            )
        report = {**self.resolved.get("report", {}), "compare_with": list(names)}
        return replace(self, resolved={**self.resolved, "report": report})

    def metric_names(self) -> list[str]:
        """Canonical metric names in the study's order, as far as trials logged them."""
        order = list(self.resolved.get("metrics", []))
        seen = {m for t in self.trials for m in t.metrics}
        return [m for m in order if m in seen] + sorted(seen - set(order))

    def metric_table(self, metric: str, split: str = "test") -> pd.DataFrame:
        """One metric of every trial on the test (or "val") queries, rows in trial order: columns
        mean, ci95, chance, n and ci95_queries, NaN where a trial did not log it."""
        key = f"metrics.{VAL_PREFIX if split == 'val' else ''}{metric_key(metric)}"
        columns = {
            "mean": key,
            "ci95": f"{key}_ci95",
            "chance": f"{key}_chance",
            "n": f"{key}_n",
            "ci95_queries": f"{key}_qci95",
        }
        table = pd.DataFrame({stat: self.column(col) for stat, col in columns.items()}, index=self.runs.index)
        table["ci95_queries"] = table["ci95_queries"].fillna(table["ci95"])  # = ci95 for one seed
        return table

    def column(self, name: str, default: Any = np.nan) -> pd.Series:
        """A column of `runs` (e.g. "params.mode", "metrics.index_seconds"); `default` where it is missing."""
        return self.runs[name] if name in self.runs else pd.Series(default, index=self.runs.index)

    def shared_chance(self, metric: str) -> float | None:
        """The metric's chance level when every trial that logged it has the same one (one split), else
        None."""
        chance = self.metric_table(metric)["chance"].dropna().round(12).unique()
        return float(chance[0]) if len(chance) == 1 else None

    def protocol_of(self, t: TrialRecord) -> str:
        """The evaluation protocol trial `t` ran under (searched per trial or fixed by the study)."""
        return str(
            t.sampled.get("dataset.protocol") or self.resolved.get("dataset", {}).get("protocol") or "class"
        )

    def protocols(self) -> list[str]:
        """The protocols of the finished trials, in the order the study's space lists them."""
        listed = self.resolved.get("space", {}).get("dataset.protocol", {}).get("choices", [])
        seen = {self.protocol_of(t) for t in self.trials}
        return [p for p in listed if p in seen] + sorted(seen - set(listed))

    def for_protocol(self, protocol: str) -> StudyRecord:
        """This record restricted to the trials under `protocol`, which becomes the study's
        protocol (so each section reads the relevance and chance of that protocol alone)."""
        keep = [self.protocol_of(t) == protocol for t in self.trials]
        resolved = {**self.resolved, "dataset": {**self.resolved.get("dataset", {}), "protocol": protocol}}
        return replace(
            self,
            resolved=resolved,
            runs=self.runs[keep],
            trials=[t for t, k in zip(self.trials, keep) if k],
            failed=[f for f in self.failed if (f.sampled.get("dataset.protocol") or protocol) == protocol],
        )

    def tuning_trials(self) -> list[TrialRecord]:
        """The finished tuning trials (a study's `tune:` block), newest attempt first."""
        finished = self.tuning[self.tuning["status"] == "FINISHED"] if len(self.tuning) else self.tuning
        return [_trial_record(row) for _, row in finished.iterrows()]


def _is_metric_base(key: str) -> bool:
    try:
        parse_metric(metric_name(key))
        return True
    except VitDSIError:
        return False


def _trial_metrics(
    raw: dict[str, float],
) -> tuple[dict[str, MetricRecord], dict[str, MetricRecord], dict[str, float]]:
    """Test metrics, validation metrics and the other final values of a trial run."""
    metrics, val, extra = {}, {}, {}
    suffixes = ("_ci95", "_qci95", "_chance", "_n", "_per_seed")
    for key, value in raw.items():
        if key.startswith(("train/", "curve/")) or key.endswith(suffixes):
            continue
        is_val = key.startswith(VAL_PREFIX) and _is_metric_base(key[len(VAL_PREFIX) :])
        if is_val or _is_metric_base(key):
            record = MetricRecord(
                value,
                raw.get(f"{key}_ci95"),
                raw.get(f"{key}_chance"),
                int(raw[f"{key}_n"]) if f"{key}_n" in raw else None,
                raw.get(f"{key}_qci95", raw.get(f"{key}_ci95")),
            )
            if is_val:
                val[metric_name(key[len(VAL_PREFIX) :])] = record
            else:
                metrics[metric_name(key)] = record
        else:
            extra[key] = value
    return metrics, val, extra


def runs_frame(client: Any, experiment_ids: list[str], filter_string: str) -> pd.DataFrame:
    """Runs as a DataFrame in `mlflow.search_runs`' layout (run_id, status, start_time and
    metrics.* / params.* / tags.* columns), newest first. Built from `client` so that the
    tracking store stays the report's own (`mlflow.search_runs` reads the process-wide one)."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string,
            order_by=["attributes.start_time DESC"],
            max_results=5000,
            page_token=token,
        )
        runs += page
        token = page.token
        if not token:
            break
    frame = pd.DataFrame.from_records(
        [
            {
                "run_id": r.info.run_id,
                "status": r.info.status,
                "start_time": r.info.start_time,
                **{f"metrics.{k}": v for k, v in r.data.metrics.items()},
                **{f"params.{k}": v for k, v in r.data.params.items()},
                **{f"tags.{k}": v for k, v in r.data.tags.items()},
            }
            for r in runs
        ],
        columns=["run_id", "status", "start_time"] if not runs else None,
    )
    number = pd.to_numeric(frame.get("tags.optuna.trial_number", pd.Series(index=frame.index, dtype=float)))
    return frame.assign(number=number.fillna(-1).astype(int))


def _trial_record(row: pd.Series) -> TrialRecord:
    """The typed view of one finished trial run (a row of `runs_frame`)."""

    def prefixed(prefix: str) -> dict[str, Any]:
        return {k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix) and not _missing(v)}

    tags = prefixed("tags.")
    metrics, val, extra = _trial_metrics(prefixed("metrics."))
    return TrialRecord(
        run_id=row["run_id"],
        number=int(row["number"]),
        method=tags.get("method", ""),
        retriever=tags.get("retriever", ""),
        params=prefixed("params."),
        sampled=json.loads(tags.get("optuna.sampled", "{}")),
        metrics=metrics,
        extra=extra,
        tags=tags,
        val_metrics=val,
    )


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _text(row: pd.Series, column: str, default: str = "") -> str:
    v = row.get(column)
    return default if _missing(v) else str(v)


def load_study_record(
    study: str, tracking_uri: str | None = None, scale: str | None = None, study_name: str | None = None
) -> StudyRecord:
    """The newest parent run of study `study` (optionally at `scale`, optionally of the Optuna /
    MLflow study `study_name` that `bench run --study-name` gave), with its trial runs."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from mlflow.entities import ViewType

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    filt = f"tags.`vitdsi.kind` = 'study' AND tags.`study.name` = '{study}'"
    if scale:
        filt += f" AND tags.`study.scale` = '{scale}'"
    if study_name:
        filt += f" AND tags.`optuna.study_name` = '{study_name}'"
    parents = (
        client.search_runs(experiments, filt, order_by=["attributes.start_time DESC"], max_results=1)
        if experiments
        else []
    )
    if not parents:
        named = f" (Optuna study '{study_name}')" if study_name else ""
        hint = _study_names_hint(client, experiments, study) if study_name else ""
        raise VitDSIError(
            f"no study '{study}'{named}{f' at scale {scale}' if scale else ''} in the tracking store {uri}; "
            + (hint or f"run `bench run studies/{study}.yaml` first (or pass --tracking-uri)")
        )
    parent = parents[0]
    resolved_path = download_artifacts(
        run_id=parent.info.run_id, artifact_path="study_resolved.yaml", tracking_uri=uri
    )
    with open(resolved_path) as f:
        resolved = yaml.safe_load(f)
    record = StudyRecord(
        study,
        parent.info.run_id,
        parent.info.experiment_id,
        uri,
        dict(parent.data.params),
        dict(parent.data.tags),
        resolved,
    )
    runs = runs_frame(client, [parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    tuning = runs.get(f"tags.{PHASE_TAG}", pd.Series("", index=runs.index)) == "tune"
    record.tuning, runs = runs[tuning], runs[~tuning]  # a tuning trial is never a result of the study
    # for a trial number run more than once (retried after a crash), the newest finished attempt
    finished = (
        runs[runs["status"] == "FINISHED"].drop_duplicates("number").sort_values("number", kind="stable")
    )
    record.runs = finished.set_index("number", drop=False).rename_axis(None)
    record.trials = [_trial_record(row) for _, row in record.runs.iterrows()]
    stopped = runs[runs["status"].isin(["FAILED", "KILLED"]) & ~runs["number"].isin(finished["number"])]
    record.failed = [
        FailedRecord(
            row["run_id"],
            int(row["number"]),
            row["status"],
            json.loads(_text(row, "tags.optuna.sampled", "{}")),
            _text(row, "tags.error"),
        )
        for _, row in stopped.sort_values("number", kind="stable").iterrows()
    ]
    return record


def _study_names_hint(client: Any, experiments: list[str], study: str) -> str:
    """The Optuna study names the store holds for `study`, for an error that named another one."""
    runs = (
        client.search_runs(
            experiments, f"tags.`vitdsi.kind` = 'study' AND tags.`study.name` = '{study}'", max_results=200
        )
        if experiments
        else []
    )
    names = sorted({r.data.tags.get("optuna.study_name", "") for r in runs} - {""})
    return f"its Optuna studies there: {', '.join(names)}" if names else ""


def metric_history(
    run_id: str, tracking_uri: str, prefix: str = "train/"
) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch curves a trial logged (metric keys under `prefix`), as (step, value) lists."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    out = {}
    for key in run.data.metrics:
        if key.startswith(prefix):
            hist = client.get_metric_history(run_id, key)
            out[key[len(prefix) :]] = sorted((m.step, m.value) for m in hist)
    return out
