"""MLflow logging of studies and trials, by hand with the MLflow client (the Optuna MLflow
callback is deprecated): one parent run per study, one nested run per trial. What a run holds,
where the store is and how metric names are written: docs/design.md, "MLflow".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import yaml

from bench import provenance
from bench.config import Study, TrialConfig
from bench.kinds import kind_of
from bench.rankings_file import rankings_arrays
from vitdsi.data.protocols import get_protocol
from vitdsi.retrievers.persistence import save_retriever

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PARENT_TAG = "mlflow.parentRunId"
VAL_PREFIX = "val_"  # validation-query metrics: "val_MAP_at_10" (test metrics carry no prefix)
ARTIFACT_FOLDER = "mlartifacts"  # a local store's artifacts, beside its mlflow.db
OVERRIDES_TAG = "study.overrides"  # on a parent run: the `bench run --set` overrides (JSON list)
_MAX_BATCH = 100  # params / metrics per log_batch call (MLflow limits a batch)
# no tqdm bar per artifact download (a resumed trial's checkpoints) in a worker's log; a user's setting wins
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


# ---- names and locations --------------------------------------------------------------
def metric_key(name: str) -> str:
    """'MAP@10' -> 'MAP_at_10' (MLflow metric names may not contain '@')."""
    return name.replace("@", "_at_")


def metric_name(key: str) -> str:
    """'MAP_at_10' -> 'MAP@10'."""
    return key.replace("_at_", "@")


def resolve_tracking_uri(uri: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working dir
    (made absolute, so every process of a study writes the same file)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute():
        uri = f"sqlite:///{path.resolve()}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite:/// URI (None for anything else)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


def local_store_dir(tracking_uri: str) -> Path | None:
    """The folder of a local (sqlite) tracking store; None for a server."""
    path = sqlite_path(tracking_uri)
    if path is not None:
        return path.parent
    if urlparse(tracking_uri).scheme in ("", "file"):
        return Path(urlparse(tracking_uri).path or tracking_uri)
    return None


def store_lock(uri: str):
    """An exclusive, re-entrant lock per sqlite database file (`filelock`; a no-op context for
    other URLs), for first-time table creation and for claiming trials, which concurrent
    processes must not do at once. sqlite is local to one machine, so the lock file lives in
    the temp folder rather than beside the database."""
    from filelock import FileLock

    path = sqlite_path(uri)
    if path is None:
        return contextlib.nullcontext()
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    return FileLock(Path(tempfile.gettempdir()) / f"bench-sqlite-{digest}.lock", is_singleton=True)


def default_storage(tracking_uri: str) -> str:
    """Optuna storage beside the MLflow store: <store dir>/optuna.db, or ./optuna.db for a server."""
    folder = local_store_dir(tracking_uri) or Path.cwd()
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def redact(url: str) -> str:
    """A storage URL without its password, for tags and logs."""
    p = urlparse(url)
    if p.password:
        return url.replace(f":{p.password}@", ":***@")
    return url


# ---- the tracker ----------------------------------------------------------------------
class Tracker:
    """Writes one study's runs; every call goes through an explicit MlflowClient."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        import logging

        from mlflow import MlflowClient

        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.uri = resolve_tracking_uri(tracking_uri)
        # a new sqlite store is created (migrated) under a file lock: workers starting together
        # would otherwise run the same schema migration twice and one would crash
        with store_lock(self.uri):
            self.client = MlflowClient(tracking_uri=self.uri)
            self.client.search_experiments(max_results=1)

    # experiments and parent runs
    def experiment_id(self, name: str) -> str:
        """Get or create experiment `name`; a local store keeps artifacts in mlartifacts/ beside it."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        folder = local_store_dir(self.uri)
        location = (folder / ARTIFACT_FOLDER).resolve().as_uri() if folder is not None else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another worker created it first
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def run_exists(self, run_id: str | None) -> bool:
        from mlflow.exceptions import MlflowException

        if not run_id:
            return False
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    def start_parent(
        self,
        study: Study,
        *,
        study_name: str,
        storage: str,
        experiment_id: str,
        study_file: str | None,
        device: str | None,
    ) -> str:
        tags = {
            "mlflow.runName": study_name,
            "vitdsi.kind": "study",
            "optuna.study_name": study_name,
            "optuna.storage": redact(storage),
            "study.name": study.name,
            "study.fingerprint": study.fingerprint(),
            "study.scale": study.scale,
            "study.sampler": study.sampler,
            "study.file": str(study_file or ""),
            "dataset": study.dataset.name,
            **self._common_tags(device),
        }
        if study.description:
            tags["mlflow.note.content"] = study.description
        run = self.client.create_run(experiment_id, tags=tags)
        run_id = run.info.run_id
        params = {
            "scale": study.scale,
            "sampler": study.sampler,
            "sampler_seed": study.sampler_seed,
            "n_trials": study.n_trials,
            "objective": study.metric,
            "direction": study.direction,
            "repeats": study.repeats,
            "seed": study.seed,
            "methods": ",".join(study.methods),
            "space": ",".join(study.space) or "-",
            **{f"dataset.{k}": v for k, v in _dataset_params(study.dataset).items()},
        }
        self._log_params(run_id, params)
        self._log_text(
            run_id, yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False), "study_resolved.yaml"
        )
        if study_file and Path(study_file).exists():
            self.client.log_artifact(run_id, study_file)
        return run_id

    def set_overrides(self, run_id: str, overrides: list[str]) -> None:
        """Record the `bench run --set` overrides of this invocation on the study's parent run
        (a JSON list; the report's Set-up prints them)."""
        self.client.set_tag(run_id, OVERRIDES_TAG, json.dumps(list(overrides)))

    def set_status(self, run_id: str, status: str) -> None:
        """RUNNING / FINISHED / FAILED / KILLED."""
        if status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.client.set_terminated(run_id, status=status)

    def log_study_summary(
        self, run_id: str, metric: str, best: dict[str, Any] | None, counts: dict[str, int]
    ) -> None:
        metrics = {f"n_{state.lower()}": float(n) for state, n in counts.items()}
        if best is not None:
            metrics[f"best_{metric_key(metric)}"] = float(best["value"])
            self.client.set_tag(run_id, "best.trial_number", str(best["number"]))
            self.client.set_tag(run_id, "best.params", json.dumps(best["params"], default=str))
            if best.get("run_id"):
                self.client.set_tag(run_id, "best.run_id", best["run_id"])
        self._log_metrics(run_id, metrics)

    # trial runs
    def start_trial(
        self,
        *,
        experiment_id: str,
        parent_run_id: str,
        study_name: str,
        number: int,
        cfg: TrialConfig,
        device: str | None,
        extra_tags: dict[str, str] | None = None,
    ) -> str:
        sampled = ", ".join(f"{k}={v}" for k, v in cfg.sampled.items())
        tags = {
            PARENT_TAG: parent_run_id,
            "mlflow.runName": f"{study_name}#{number}" + (f" {sampled}" if sampled else ""),
            "vitdsi.kind": "trial",
            "optuna.study_name": study_name,
            "optuna.trial_number": str(number),
            "optuna.sampled": json.dumps(cfg.sampled, default=str),
            "study.name": cfg.study,
            "study.scale": cfg.scale,
            "method": cfg.method,
            "retriever": cfg.retriever,
            "dataset": cfg.dataset.name,
            "trial.fingerprint": cfg.fingerprint(),  # the build (TrialConfig.fingerprint)
            "trial.result_fingerprint": cfg.result_fingerprint(),  # the build and the query arguments
            "worker": worker_id(),
            **self._common_tags(device),
            **(extra_tags or {}),
        }
        run_id = self.client.create_run(experiment_id, tags=tags).info.run_id
        self._log_params(run_id, trial_params(cfg))
        self._log_text(run_id, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "config.yaml")
        return run_id

    def finish_trial(self, run_id: str, result, *, log_index: bool) -> None:
        """Final metrics, timings, split, rankings and (optionally) the index; status FINISHED."""
        metrics: dict[str, float] = {}
        for prefix, summary in (("", result.summary), (VAL_PREFIX, result.val_summary)):
            for name, s in summary.items():
                key = prefix + metric_key(name)
                metrics[key] = s.mean
                metrics[f"{key}_ci95"] = s.ci95
                metrics[f"{key}_qci95"] = s.ci95_queries
                metrics[f"{key}_chance"] = s.chance
                metrics[f"{key}_n"] = float(s.n_queries)
        metrics.update({k: float(v) for k, v in result.timings.items()})
        self._log_metrics(run_id, metrics)
        if len(result.repeats) > 1:  # each seed's value as a step of `<metric>_per_seed`
            for i, rep in enumerate(result.repeats):
                per_seed = {f"{metric_key(n)}_per_seed": v.mean for n, v in rep.metrics.items()}
                per_seed.update(
                    {f"{VAL_PREFIX}{metric_key(n)}_per_seed": v.mean for n, v in rep.val_metrics.items()}
                )
                self._log_metrics(run_id, per_seed, step=i)
        study_kind = kind_of(result.config)
        if result.repeats[0].steps and study_kind is not None:  # a kind that indexes in steps (continual):
            key = study_kind[0].key  # each step's mean over seeds, and every seed's records
            for step, records in enumerate(zip(*(rep.steps for rep in result.repeats))):
                keys = set.intersection(*(set(r) for r in records)) - {"step"}
                self._log_metrics(
                    run_id,
                    {f"{key}/{metric_key(k)}": float(np.mean([r[k] for r in records])) for k in sorted(keys)},
                    step=step,
                )
            self._log_text(run_id, json.dumps([rep.steps for rep in result.repeats], indent=1), f"{key}.json")
        self.client.set_tag(run_id, "device", result.device)
        if result.index_reused:
            self.client.set_tag(run_id, "index.reused", "true")  # built by an earlier trial of this worker
        supervision = result.retriever.supervision_used()
        self.client.set_tag(run_id, "supervision", supervision.describe())
        self.client.set_tag(run_id, "supervision.uses_labels", str(supervision.uses_labels).lower())
        self.client.set_tag(run_id, "split.fingerprint", result.split.fingerprint())
        self._log_text(run_id, result.split.to_json(), "split.json")
        with tempfile.TemporaryDirectory() as tmp:
            np.savez_compressed(Path(tmp) / "rankings.npz", **rankings_arrays(result))
            self.client.log_artifact(run_id, str(Path(tmp) / "rankings.npz"))
            if log_index:
                save_retriever(result.retriever, Path(tmp) / "index")
                self.client.log_artifacts(run_id, str(Path(tmp) / "index"), "index")
        self.client.set_terminated(run_id, status="FINISHED")

    def fail_trial(self, run_id: str, error: str, *, status: str = "FAILED") -> None:
        """Record why a trial stopped (error text as tag and artifact); status FAILED or KILLED."""
        try:
            self.client.set_tag(
                run_id, "error", error.strip().splitlines()[-1][:4000] if error.strip() else status
            )
            self._log_text(run_id, error, "error.txt")
        finally:
            self.client.set_terminated(run_id, status=status)

    # helpers
    def _common_tags(self, device: str | None) -> dict[str, str]:
        git = provenance.git_info()
        tags = {"git.sha": git["sha"], "git.dirty": git["dirty"], "mlflow.source.git.commit": git["sha"]}
        if git["changed"]:
            tags["git.changed"] = git["changed"]  # which files made the tree dirty
        tags.update({f"version.{k}": v for k, v in provenance.package_versions().items()})
        tags.update(
            {
                f"device.{k}" if k != "device" else "device": v
                for k, v in provenance.device_info(device).items()
            }
        )
        return tags

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), _param_value(v)) for k, v in params.items()]
        for s in range(0, len(items), _MAX_BATCH):
            self.client.log_batch(run_id, params=items[s : s + _MAX_BATCH])

    def _log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and np.isfinite(v)
        ]
        for s in range(0, len(items), _MAX_BATCH):
            self.client.log_batch(run_id, metrics=items[s : s + _MAX_BATCH])

    def _log_text(self, run_id: str, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text)
            self.client.log_artifact(run_id, str(path))


def worker_id() -> str:
    """host:pid of this process, to tell the workers of a shared study apart."""
    return f"{socket.gethostname()}:{os.getpid()}"


def trial_params(cfg: TrialConfig) -> dict[str, Any]:
    """Every parameter of a trial, flat: build parameters by name, `query.*`, `dataset.*`."""
    out: dict[str, Any] = {
        "method": cfg.method,
        "retriever": cfg.retriever,
        "scale": cfg.scale,
        "repeats": cfg.repeats,
        "seed": cfg.seed,
    }
    out.update(cfg.params)
    out.update({f"query.{k}": v for k, v in cfg.query.items()})
    out.update({f"dataset.{k}": v for k, v in _dataset_params(cfg.dataset).items()})
    return out


def _dataset_params(data) -> dict[str, Any]:
    out = {
        "name": data.name,
        "size": data.size,
        "n_total": data.n_total,
        "split_ratio": data.split_ratio,
        "query_fractions": data.query_fractions,
        "seed": data.seed,
    }
    if data.root is not None:
        out["root"] = data.root
    if data.limit is not None:
        out["limit"] = data.limit
    out.update({f"options.{k}": v for k, v in data.options.items()})
    out["protocol"] = data.protocol
    block = get_protocol(data.protocol).block
    out.update({f"{block}.{k}": v for k, v in data.protocol_args.get(block or "", {}).items()})
    return out


def _param_value(v: Any) -> str:
    s = json.dumps(v, default=str) if isinstance(v, list | tuple | dict) else str(v)
    return s[:6000]
