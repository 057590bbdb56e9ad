"""The Optuna storage of a study and the claim lock its workers share.

An RDB storage (sqlite or PostgreSQL) with heartbeats: a trial whose worker died goes stale,
is failed by `optuna.storages.fail_stale_trials` and re-queued once with its point
(`RetryHeartbeatStaleTrialCallback`), and its MLflow run is marked KILLED.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import time
import warnings

import optuna

from bench.tracking import Tracker, store_lock
from vitdsi.log import get_logger

log = get_logger("bench.study")


def make_storage(url: str, heartbeat: int, tracker: Tracker | None = None):
    """RDB storage with heartbeats; a stale trial is failed, re-queued once, its MLflow run KILLED."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=3)

    def on_stale(study, trial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        log.warning(f"trial {trial.number} stopped sending heartbeats (its worker died); re-queued")
        if tracker is not None and run_id and tracker.run_exists(run_id):
            try:
                tracker.fail_trial(
                    run_id, "worker died (no heartbeat); the trial was re-queued", status="KILLED"
                )
            except Exception as e:  # the re-queue below matters more than this mark
                log.warning(f"could not mark MLflow run {run_id} killed: {e}")
        # the copy keeps the trial's point and names the trial it retries; the rest is the dead run's
        queued = copy.copy(trial)
        queued.user_attrs = {
            **{k: v for k, v in trial.user_attrs.items() if k == "grid_id"},
            "retry_of": trial.number,
        }
        retry(study, queued)

    url = with_driver(url)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}

    def create():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=on_stale,
            )

    with store_lock(url):  # sqlite: one process creates the tables at a time
        try:
            return create()
        except Exception as e:  # a server database: another worker created the tables at the same moment
            from sqlalchemy.exc import SQLAlchemyError

            if not isinstance(e, SQLAlchemyError) or url.startswith("sqlite"):
                raise
            time.sleep(1.0)
            return create()


def with_driver(url: str) -> str:
    """`postgresql://` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only it is installed."""
    if (
        url.startswith(("postgresql://", "postgres://"))
        and importlib.util.find_spec("psycopg") is None
        and importlib.util.find_spec("psycopg2") is not None
    ):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


class ClaimLock:
    """Held by a worker from reading the trials until `study.ask()` has popped its trial, so
    the workers of one storage never pop the same WAITING trial, never make a new trial when
    the last one was just taken, and never queue the same point twice. sqlite: a file lock
    (`filelock`) per database file; PostgreSQL: an advisory lock per study, released with its
    connection; other servers: no lock (the grid's duplicate check prunes a doubled point)."""

    def __init__(self, storage_url: str, study_name: str) -> None:
        url = with_driver(storage_url)
        self._lock = store_lock(url)
        self._pg = None
        if url.startswith(("postgresql", "postgres")):
            import sqlalchemy

            self._pg = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
            self._key = int(hashlib.sha1(study_name.encode()).hexdigest()[:15], 16)  # fits a bigint
        self._conn = None
        self._held = False

    def acquire(self) -> None:
        if self._held:
            return
        if self._pg is not None:
            import sqlalchemy

            self._conn = self._pg.connect()
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
        else:
            self._lock.__enter__()
        self._held = True

    def release(self) -> None:
        """Idempotent: the objective releases the lock once its trial is popped, the loop after."""
        if not self._held:
            return
        self._held = False
        if self._pg is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # closing the session frees its advisory locks
                conn.close()
        else:
            self._lock.__exit__(None, None, None)

    def __enter__(self) -> ClaimLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
