"""Running a study with Optuna: resumable, fault tolerant, shareable by several workers.

- Storage: an Optuna RDB storage, sqlite beside the MLflow store by default, or any
  `--storage` URL (postgresql://... lets workers on several machines share one study).
  Every trial sends a heartbeat; a trial whose worker died (SIGKILL, OOM, lost machine) goes
  stale, is marked FAIL and re-queued once as a WAITING trial with the same parameters
  (`RetryHeartbeatStaleTrialCallback`), and its MLflow run is marked KILLED.
- Resume: re-running a study loads it (the stored config fingerprint must match) and works
  until `n_trials` trials are COMPLETE; failed trials do not count.
- Grid studies use `GridPointSampler` rather than Optuna's GridSampler, whose random pick of
  an unvisited point lets two workers run the same point and which counts failed points as
  done. Here trial number i < n runs grid point i (trial numbers are unique across workers,
  so the first pass is race-free), later trials take a point that is neither COMPLETE nor
  claimed by a RUNNING/WAITING trial, and a trial that finds its point already taken by a
  smaller-numbered running trial or a finished one is PRUNED with the reason, unrun.
  A point that failed in an earlier session (an error, or Ctrl-C) is retried first, before
  new points; a point that failed in this session is not retried until the next `bench run`.
- Waiting: every decision of the worker loop reads one snapshot of the trials; with `--wait`
  a worker leaves only when no point is running, waiting or free.
- A failed trial is recorded FAIL with its error (Optuna user attr `error`, MLflow tag and
  error.txt) and the study goes on. Ctrl-C (or SIGTERM) marks the running trial FAIL and
  its MLflow run KILLED, so the stored study stays consistent and the next run retries it.
- Samplers are seeded per trial number (TPE, random), so a single worker is reproducible
  and parallel workers draw different points.
"""

from __future__ import annotations

import json
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch
from optuna.samplers import BaseSampler
from optuna.trial import TrialState
from rich.markup import escape

from bench.config import Categorical, FloatRange, IntRange, Study, check_data
from bench.tracking import EpochLogger, Tracker, default_storage, redact, store_lock, worker_id
from vitdsi.data import DATASETS
from vitdsi.errors import DatasetNotFoundError, VitDSIError
from vitdsi.log import console, get_logger, progress

log = get_logger("bench.study")

GRID_ATTR = "grid_id"  # trial system attr: index of the grid point the trial runs
MAX_CONSECUTIVE_FAILURES = 5  # TPE / random: stop a session after this many failures in a row
ATTR_WAIT_S = 60.0  # how long a joining worker waits for the creator to describe the study


@dataclass
class RunOptions:
    storage: str | None = None  # Optuna storage URL; default sqlite beside the MLflow store
    tracking_uri: str | None = None  # MLflow; default MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    study_name: str | None = None  # default "<study>-<scale>"
    n_trials: int | None = None  # COMPLETE trials wanted (overrides the file)
    device: str | None = None  # retriever device; default CUDA when present
    heartbeat: int = 10  # seconds between trial heartbeats; stale after 3 missed
    wait_for_others: bool = True  # when only other workers' trials remain, wait for them
    threads: int | None = None  # torch / FAISS / OpenCV threads of this worker; None = the study's `threads`


@dataclass
class RunOutcome:
    study_name: str
    storage: str
    tracking_uri: str
    experiment: str
    experiment_id: str
    parent_run_id: str
    counts: dict[str, int]  # trials by state, whole study
    target: int  # COMPLETE trials wanted
    best: dict[str, Any] | None  # number, value, params, run_id
    ran: int  # trials this worker ran
    metric: str = "MAP@10"  # the objective
    trials: list[dict[str, Any]] = field(default_factory=list)  # every trial: number, state, params, metrics, error
    failed: list[int] = field(default_factory=list)  # trial numbers that failed in this session
    interrupted: bool = False

    @property
    def complete(self) -> int:
        return self.counts.get("COMPLETE", 0)

    @property
    def done(self) -> bool:
        return self.complete >= self.target


# ---- samplers ---------------------------------------------------------------------------------
def _trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class GridPointSampler(BaseSampler):
    """Deterministic grid for ablations that is safe with several workers (module docstring)."""

    def __init__(self, points: list[dict[str, Any]]) -> None:
        self.points = points
        self.session_failed: set[int] = set()  # points that failed in this process: not retried now

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def before_trial(self, study, trial) -> None:
        if GRID_ATTR in trial.system_attrs:  # a re-queued stale trial keeps its point
            return
        gid = self.choose(study, trial.number, trial._trial_id)
        study._storage.set_trial_system_attr(trial._trial_id, GRID_ATTR, gid)
        trial.system_attrs[GRID_ATTR] = gid

    def choose(self, study, number: int, trial_id: int | None = None) -> int:
        """A point that failed in an earlier session and is free is retried first (after Ctrl-C the
        interrupted point runs before new ones); otherwise trial number i < n runs point i, and later
        ones take a free point (-1: none left)."""
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        retry = self.retry_points(trials, exclude_trial_id=trial_id)
        if retry:
            return retry[number % len(retry)]
        if number < len(self.points):
            return number
        free = self.free_points(study, exclude_trial_id=trial_id, trials=trials)
        return free[number % len(free)] if free else -1

    def free_points(self, study, exclude_trial_id: int | None = None, trials=None) -> list[int]:
        """Points not COMPLETE nor claimed by a RUNNING / WAITING trial (nor failed in this session),
        from `trials` (one snapshot of the study) when given."""
        if trials is None:
            trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        taken = set()
        for t in trials:
            if t._trial_id != exclude_trial_id and t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING):
                taken.add(t.system_attrs.get(GRID_ATTR))
        return [g for g in range(len(self.points)) if g not in taken and g not in self.session_failed]

    def retry_points(self, trials, exclude_trial_id: int | None = None) -> list[int]:
        """Free points with a FAIL trial (failed or interrupted in an earlier session), lowest first."""
        failed = {t.system_attrs.get(GRID_ATTR) for t in trials if t.state == TrialState.FAIL}
        return [g for g in self.free_points(None, exclude_trial_id, trials) if g in failed]

    def sample_independent(self, study, trial, param_name, param_distribution):
        gid = study._storage.get_trial_system_attrs(trial._trial_id)[GRID_ATTR]
        return self.points[gid][param_name]

    def after_trial(self, study, trial, state, values) -> None:
        gid = study._storage.get_trial_system_attrs(trial._trial_id).get(GRID_ATTR, -1)
        if state != TrialState.COMPLETE and gid >= 0:
            self.session_failed.add(gid)


def _seeded(sampler_cls, seed: int, **kwargs):
    """A TPE / random sampler whose RNG is reseeded from (seed, trial number) before each trial."""

    class PerTrialSeeded(sampler_cls):
        def before_trial(self, study, trial):
            s = _trial_seed(seed, trial.number)
            self._rng.rng.seed(s)
            if hasattr(self, "_random_sampler"):
                self._random_sampler._rng.rng.seed(s)
            super().before_trial(study, trial)

    PerTrialSeeded.__name__ = f"Seeded{sampler_cls.__name__}"
    return PerTrialSeeded(seed=seed, **kwargs)


def make_sampler(study: Study):
    if study.sampler == "grid":
        return GridPointSampler(study.grid())
    if study.sampler == "random":
        return _seeded(optuna.samplers.RandomSampler, study.sampler_seed)
    kwargs = {"n_startup_trials": study.n_startup_trials} if study.n_startup_trials is not None else {}
    return _seeded(optuna.samplers.TPESampler, study.sampler_seed, **kwargs)


# ---- storage ----------------------------------------------------------------------------------
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
                tracker.fail_trial(run_id, "worker died (no heartbeat); the trial was re-queued", status="KILLED")
            except Exception as e:  # the re-queue below matters more than this mark
                log.warning(f"could not mark MLflow run {run_id} killed: {e}")
        retry(study, trial)

    url = _with_driver(url)
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    def create():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
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


def _with_driver(url: str) -> str:
    """`postgresql://` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only it is installed."""
    import importlib.util

    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


# ---- running ----------------------------------------------------------------------------------
class StudyMismatchError(RuntimeError):
    pass


def run(study: Study, options: RunOptions | None = None) -> RunOutcome:
    """Work on `study` until `n_trials` trials are COMPLETE, nothing is left for this worker, or
    Ctrl-C. Safe to run again (resumes) and to run in several processes at once. Threads are
    pinned for the run when the options or the study file ask for it (restored after)."""
    from bench.latency import fixed_threads

    options = options or RunOptions()
    threads = options.threads or study.threads
    if threads is None:
        return _run(study, options)
    with fixed_threads(threads):
        return _run(study, options)


def _run(study: Study, options: RunOptions) -> RunOutcome:
    from bench import trial as trial_mod

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    tracker = Tracker(options.tracking_uri)
    storage_url = options.storage or default_storage(tracker.uri)
    study_name = options.study_name or study.default_study_name
    target = options.n_trials or study.n_trials
    if study.sampler == "grid":
        target = min(target, len(study.grid()))

    # fail before any trial on data that is not there or too small (every trial's dataset, cheaply),
    # then load the first trial's dataset and split
    notes = check_data(study)
    try:
        trial_mod.prepare(study.dataset)
    except VitDSIError as e:
        # the "where is it" hint only when the data are missing, not for e.g. too few images
        hint = ("; give its location with `dataset: {root: PATH}` in the study or `bench run --set dataset.root=PATH`"
                if isinstance(e, DatasetNotFoundError) and "root" in DATASETS[study.dataset.name].params() else "")
        raise type(e)(f"dataset '{study.dataset.name}' (scale {study.scale}): {e}{hint}") from None

    storage = make_storage(storage_url, options.heartbeat, tracker)
    sampler = make_sampler(study)
    ostudy, parent_id, experiment_id = _open(study, study_name, storage, storage_url, sampler, tracker, options)
    tracker.set_status(parent_id, "RUNNING")

    console.print(f"[bold]study[/] {study_name}: {study.sampler} over {', '.join(study.space) or 'one configuration'}, "
                  f"{target} trials, objective {study.metric} ({study.direction}), scale {study.scale}, "
                  f"{torch.get_num_threads()} torch thread(s)")
    for note in notes:
        console.print(("[yellow]" if note.startswith("warning") else "") + escape(note) + ("[/]" if note.startswith("warning") else ""))
    outcome = RunOutcome(study_name, redact(storage_url), tracker.uri, study.experiment, experiment_id,
                         parent_id, {}, target, None, 0)
    objective = _Objective(study, ostudy, tracker, experiment_id, parent_id, study_name, options, outcome)
    try:
        with progress(transient=False) as bar:
            task = bar.add_task(f"trials of {study_name}", total=target)
            consecutive_failures = 0
            while True:
                optuna.storages.fail_stale_trials(ostudy)
                # one snapshot for every decision below: reading "running" and "free" from two reads
                # let a worker see neither another worker's just-claimed point nor its trial, and quit
                trials = ostudy._storage.get_all_trials(ostudy._study_id, deepcopy=False)
                done = _complete_count(trials, study.sampler == "grid")
                bar.update(task, completed=min(done, target))
                running = [t for t in trials if t.state == TrialState.RUNNING]
                waiting = [t for t in trials if t.state == TrialState.WAITING]
                if done >= target:
                    break
                if study.sampler == "grid":
                    has_work = (bool(waiting) or bool(sampler.free_points(ostudy, trials=trials))
                                or len(trials) < len(sampler.points))
                else:
                    has_work = consecutive_failures < MAX_CONSECUTIVE_FAILURES
                if has_work and done + len(running) < target:
                    before = objective.failures
                    ostudy.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
                    consecutive_failures = consecutive_failures + 1 if objective.failures > before else 0
                    continue
                if running and options.wait_for_others:
                    bar.update(task, description=f"trials of {study_name} (waiting for {len(running)} in other workers)")
                    time.sleep(min(options.heartbeat, 5))
                    continue
                if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                    log.error(f"{consecutive_failures} trials failed in a row; stopping (see the errors above)")
                break
    except KeyboardInterrupt:
        outcome.interrupted = True
        console.print("[yellow]interrupted[/]: the running trial is recorded as failed; run the same command again to resume")
    finally:
        outcome.counts = _counts(ostudy)
        outcome.best = _best(ostudy, study, tracker)
        outcome.metric = study.metric
        outcome.trials = [
            {"number": t.number, "state": t.state.name, "params": t.params, "metrics": t.user_attrs.get("metrics", {}),
             "error": t.user_attrs.get("error") or t.user_attrs.get("skipped"), "seconds": t.user_attrs.get("seconds"),
             "run_id": t.user_attrs.get("mlflow_run_id")}
            for t in ostudy._storage.get_all_trials(ostudy._study_id, deepcopy=False)
        ]
        try:
            tracker.log_study_summary(parent_id, study.metric, outcome.best, outcome.counts)
            tracker.set_status(parent_id, "KILLED" if outcome.interrupted else "FINISHED")
        except Exception as e:  # never hide the interrupt or the real error behind a logging one
            log.warning(f"could not update the study's MLflow run: {e}")
    return outcome


def _open(study: Study, study_name: str, storage, storage_url: str, sampler, tracker: Tracker, options: RunOptions):
    """Create the Optuna study (and its MLflow parent run) or join the existing one.

    Creating the study is the election: the one worker whose create succeeds describes it
    (config, grid, MLflow parent run) and sets the fingerprint last, as a "ready" mark; the
    others wait for that mark. A study left without it (its creator died) is adopted."""
    experiment_id = tracker.experiment_id(study.experiment)
    fingerprint = study.fingerprint()
    try:
        ostudy = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, direction=study.direction)
        return ostudy, _describe(ostudy, study, study_name, storage_url, experiment_id, tracker, options), experiment_id
    except optuna.exceptions.DuplicatedStudyError:
        pass
    ostudy = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    attrs = _wait_for_attrs(ostudy, "fingerprint")
    if "fingerprint" not in attrs:
        log.warning(f"study '{study_name}' was left half-created (no fingerprint after {ATTR_WAIT_S:.0f} s); adopting it")
        return ostudy, _describe(ostudy, study, study_name, storage_url, experiment_id, tracker, options), experiment_id
    if attrs["fingerprint"] != fingerprint:
        raise StudyMismatchError(
            f"study '{study_name}' in {redact(storage_url)} was made from a different configuration "
            f"(fingerprint {attrs['fingerprint']} vs {fingerprint} now); its trials would not be comparable. "
            f"Restore the file, or start a new study with --study-name {study_name}-v2"
        )
    if ostudy.direction.name.lower() != study.direction:
        raise StudyMismatchError(f"study '{study_name}' optimises {ostudy.direction.name.lower()}, the file says {study.direction}")
    parent_id = attrs.get("mlflow_parent_run_id")
    if not tracker.run_exists(parent_id):  # e.g. a different tracking store than the first worker's
        parent_id = tracker.start_parent(study, study_name=study_name, storage=storage_url, experiment_id=experiment_id,
                                         study_file=study.file, device=options.device)
        log.warning(f"the study's MLflow run is not in {tracker.uri}; its trials from now on go under run {parent_id}")
        ostudy.set_user_attr("mlflow_parent_run_id", parent_id)
    console.print(f"resuming study {study_name}: {_counts(ostudy)}", markup=False)
    return ostudy, parent_id, experiment_id


def _describe(ostudy, study: Study, study_name: str, storage_url: str, experiment_id: str, tracker: Tracker,
              options: RunOptions) -> str:
    """Store the study's description and MLflow parent run; the fingerprint goes last."""
    ostudy.set_user_attr("config", study.model_dump(mode="json"))
    ostudy.set_user_attr("file", study.file)
    if study.sampler == "grid":
        ostudy.set_user_attr("grid", study.grid())
    parent_id = tracker.start_parent(study, study_name=study_name, storage=storage_url, experiment_id=experiment_id,
                                     study_file=study.file, device=options.device)
    ostudy.set_user_attr("mlflow_parent_run_id", parent_id)
    ostudy.set_user_attr("mlflow_experiment", study.experiment)
    ostudy.set_user_attr("fingerprint", study.fingerprint())
    return parent_id


def _wait_for_attrs(ostudy, key: str) -> dict[str, Any]:
    """A worker that joins a study being created waits until the creator has described it."""
    deadline = time.monotonic() + ATTR_WAIT_S
    while True:
        attrs = ostudy._storage.get_study_user_attrs(ostudy._study_id)
        if key in attrs or time.monotonic() > deadline:
            return attrs
        time.sleep(0.2)


def _complete_count(trials, grid: bool) -> int:
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if grid:
        return len({t.system_attrs.get(GRID_ATTR) for t in complete})
    return len(complete)


def _counts(ostudy) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in ostudy._storage.get_all_trials(ostudy._study_id, deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _best(ostudy, study: Study, tracker: Tracker) -> dict[str, Any] | None:
    complete = [t for t in ostudy._storage.get_all_trials(ostudy._study_id, deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    pick = max if study.direction == "maximize" else min
    best = pick(complete, key=lambda t: t.value)
    return {"number": best.number, "value": best.value, "params": best.params, "run_id": best.user_attrs.get("mlflow_run_id")}


class _Objective:
    """One Optuna trial: choose parameters, run, log to MLflow, return the objective."""

    def __init__(self, study: Study, ostudy, tracker: Tracker, experiment_id: str, parent_id: str,
                 study_name: str, options: RunOptions, outcome: RunOutcome) -> None:
        self.study, self.ostudy, self.tracker = study, ostudy, tracker
        self.experiment_id, self.parent_id, self.study_name = experiment_id, parent_id, study_name
        self.options, self.outcome = options, outcome
        self.failures = 0

    def suggest(self, trial) -> dict[str, Any]:
        out = {}
        for key, dist in self.study.space.items():
            if isinstance(dist, Categorical):
                out[key] = trial.suggest_categorical(key, dist.choices)
            elif isinstance(dist, IntRange):
                out[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
            elif isinstance(dist, FloatRange):
                out[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
        return out

    def _skip_reason(self, trial) -> str | None:
        """Grid only: why this trial must not run its point (taken by another trial)."""
        gid = self.ostudy._storage.get_trial_system_attrs(trial._trial_id).get(GRID_ATTR, -1)
        if gid < 0:
            return "no grid point left"
        if trial.number >= len(self.study.grid()) or gid != trial.number:
            time.sleep(0.2)  # lets a concurrent claim of the same point (free or retried) land before we look
        for t in self.ostudy._storage.get_all_trials(self.ostudy._study_id, deepcopy=False):
            if t.number == trial.number or t.system_attrs.get(GRID_ATTR) != gid:
                continue
            if t.state == TrialState.COMPLETE:
                return f"grid point {gid} was completed by trial {t.number}"
            if t.state == TrialState.RUNNING and t.number < trial.number:
                return f"grid point {gid} is being run by trial {t.number}"
        return None

    def __call__(self, trial) -> float:
        from bench.trial import run_trial

        if self.study.sampler == "grid":
            reason = self._skip_reason(trial)
            if reason:
                trial.set_user_attr("skipped", reason)
                raise optuna.TrialPruned(reason)
        sampled = self.suggest(trial)
        cfg = self.study.trial_config(sampled)
        retry_of = self.ostudy._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        tags = {"optuna.retry_of": str(retry_of)} if retry_of is not None else None
        run_id = self.tracker.start_trial(experiment_id=self.experiment_id, parent_run_id=self.parent_id,
                                          study_name=self.study_name, number=trial.number, cfg=cfg,
                                          device=self.options.device, extra_tags=tags)
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.set_user_attr("method", cfg.method)
        trial.set_user_attr("worker", worker_id())
        label = escape("[" + (", ".join(f"{k}={v}" for k, v in sampled.items()) or cfg.method) + "]")
        console.print(f"trial {trial.number} {label} started (MLflow run {run_id[:8]})")
        self.outcome.ran += 1
        t0 = time.perf_counter()
        curves = EpochLogger(self.tracker, run_id, seeds=cfg.repeats > 1, first_seed=cfg.seed)
        try:
            try:
                result = run_trial(cfg, device=self.options.device, on_epoch=curves)
            finally:
                curves.flush()
            value = result.objective(self.study.metric)  # validation queries: model choice never reads test
            if not np.isfinite(value):
                raise ValueError(f"objective {self.study.metric} is {value} on the validation queries "
                                 "(no validation query has a relevant image?)")
            self.tracker.finish_trial(run_id, result, log_index=self.study.log_index)
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted (Ctrl-C / SIGTERM)")
            self.tracker.fail_trial(run_id, "interrupted (Ctrl-C / SIGTERM)", status="KILLED")
            raise
        except Exception as e:
            self.failures += 1
            self.outcome.failed.append(trial.number)
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            self.tracker.fail_trial(run_id, traceback.format_exc())
            console.print(f"[red]trial {trial.number} failed[/]: {escape(f'{type(e).__name__}: {e}')}")
            raise
        trial.set_user_attr("metrics", {k: v.to_dict() for k, v in result.summary.items()})
        trial.set_user_attr("val_metrics", {k: v.to_dict() for k, v in result.val_summary.items()})
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        s = result.summary[self.study.metric]
        console.print(f"trial {trial.number} {label} {self.study.metric} validation {value:.4f} (objective), "
                      f"test {s.mean:.4f} ± {_fmt(s.ci95)} (chance {s.chance:.4f}) in {time.perf_counter() - t0:.1f} s")
        return value


def _fmt(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.4f}"


def trials_table(outcome: RunOutcome, limit: int = 30):
    """A rich table of the study's trials: parameters, objective ± 95% CI, chance, IA@1."""
    from rich.table import Table

    rows = outcome.trials
    if len(rows) > limit:  # the best finished ones, then the most recent others
        done = sorted((r for r in rows if r["state"] == "COMPLETE"),
                      key=lambda r: -r["metrics"].get(outcome.metric, {}).get("mean", float("-inf")))
        rows = sorted(done[:limit], key=lambda r: r["number"])
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    table = Table(title=f"trials of {outcome.study_name}" + (f" (best {limit} of {len(outcome.trials)})" if len(outcome.trials) > limit else ""))
    for col in ["#", *keys, outcome.metric, "chance", "IA@1", "s", "state"]:
        table.add_column(col, justify="right" if col not in keys else "left", overflow="fold")
    for r in rows:
        m = r["metrics"].get(outcome.metric)
        ia = r["metrics"].get("IA@1")
        table.add_row(
            str(r["number"]), *[escape(str(r["params"].get(k, ""))) for k in keys],
            f"{m['mean']:.4f} ± {_fmt(m['ci95'])}" if m else "-",
            f"{m['chance']:.4f}" if m else "-",
            f"{ia['mean']:.3f}" if ia else "-",
            f"{r['seconds']:.1f}" if r.get("seconds") else "-",
            r["state"] if r["state"] == "COMPLETE" else f"[red]{r['state']}[/]",
        )
    return table


def describe(outcome: RunOutcome) -> str:
    """Where the results are, for the end of `bench run` and `make demo`."""
    lines = [
        f"Optuna study  {outcome.study_name} in {outcome.storage}",
        f"  trials      {json.dumps(outcome.counts)} ({outcome.complete}/{outcome.target} complete)",
    ]
    if outcome.best:
        lines.append(f"  best        trial {outcome.best['number']}: {outcome.best['value']:.4f} {outcome.best['params']}")
    lines += [
        f"MLflow        {outcome.tracking_uri}",
        f"  experiment  {outcome.experiment} (id {outcome.experiment_id}), study run {outcome.parent_run_id}",
    ]
    if outcome.best and outcome.best.get("run_id"):
        lines.append(f"  best run    {outcome.best['run_id']}  (bench search --run {outcome.best['run_id']} IMAGE...)")
    lines.append("Browse        bench ui")
    return "\n".join(lines)
