"""`bench run --reuse`: a trial whose configuration already finished in this tracking store
copies that run's numbers instead of training again, as ann-benchmarks keys results by
dataset, build and query arguments. Runs match on their `trial.result_fingerprint` tag
(`TrialConfig.result_fingerprint`); the copy is tagged `reused_from` with the source run id."""

from __future__ import annotations

import math
import tempfile
from typing import Any

from bench.config import TrialConfig
from bench.kinds import KINDS
from bench.tracking import VAL_PREFIX, Tracker, metric_key

REUSED_TAG = "reused_from"  # on a reused run: the run that measured its numbers
_COPIED_TAGS = ("device", "supervision", "supervision.uses_labels", "split.fingerprint")
_SUMMARY_FIELDS = (("ci95", "_ci95"), ("chance", "_chance"), ("n_queries", "_n"), ("ci95_queries", "_qci95"))
# the index stays in the source run; a study kind that indexes in steps logs them as `<key>.json`
_COPIED_ARTIFACTS = (
    "split.json",
    "rankings.npz",
    *(f"{kind.key}.json" for kind in KINDS.values() if kind.indexes),
)


def find_source(tracker: Tracker, cfg: TrialConfig):
    """The oldest FINISHED trial run, in any experiment of the store, with this trial's result
    fingerprint and every metric it asks for; None when there is none."""
    client = tracker.client
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments,
        order_by=["attributes.start_time ASC"],
        max_results=200,
        filter_string=f"tags.`trial.result_fingerprint` = '{cfg.result_fingerprint()}' and attributes.status "
        "= 'FINISHED'",
    )
    wanted = [metric_key(m) for m in cfg.metrics]
    return next(
        (
            r
            for r in runs
            if r.data.tags.get("vitdsi.kind") == "trial" and all(k in r.data.metrics for k in wanted)
        ),
        None,
    )


def copy_result(tracker: Tracker, source, run_id: str) -> None:
    """Copy the source run's metrics (every step), result tags and artifacts into `run_id`,
    tag it `reused_from` and mark it FINISHED."""
    from mlflow.artifacts import download_artifacts

    client, src = tracker.client, source.info.run_id
    history = [m for key in source.data.metrics for m in client.get_metric_history(src, key)]
    for s in range(0, len(history), 1000):
        client.log_batch(run_id, metrics=history[s : s + 1000])
    tags = {k: source.data.tags[k] for k in _COPIED_TAGS if k in source.data.tags}
    tags[REUSED_TAG] = source.data.tags.get(REUSED_TAG, src)
    tags["reused.git.sha"] = source.data.tags.get("reused.git.sha", source.data.tags.get("git.sha", ""))
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    present = {a.path for a in client.list_artifacts(src)}
    with tempfile.TemporaryDirectory() as tmp:
        for name in _COPIED_ARTIFACTS:
            if name in present:
                client.log_artifact(
                    run_id,
                    download_artifacts(
                        run_id=src, artifact_path=name, dst_path=tmp, tracking_uri=tracker.uri
                    ),
                )
    client.set_terminated(run_id, status="FINISHED")


def summaries(metrics: dict[str, float], names, *, val: bool, n_seeds: int) -> dict[str, dict[str, float]]:
    """`bench.trial.Summary.to_dict()` of each metric in `names`, read back from logged MLflow metrics."""
    out = {}
    for name in names:
        key = (VAL_PREFIX if val else "") + metric_key(name)
        if key in metrics:
            out[name] = {
                "mean": metrics[key],
                "n_seeds": n_seeds,
                **{field: metrics.get(key + suffix, math.nan) for field, suffix in _SUMMARY_FIELDS},
            }
    return out


def reuse(tracker: Tracker, source, run_id: str, cfg: TrialConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copy `source` into `run_id`; the test and validation summaries of the copied metrics."""
    copy_result(tracker, source, run_id)
    metrics = source.data.metrics
    return (
        summaries(metrics, cfg.metrics, val=False, n_seeds=cfg.repeats),
        summaries(metrics, cfg.metrics, val=True, n_seeds=cfg.repeats),
    )
