"""The worker loop of `bench run`: open (or create) the study, then claim and run trials until
`n_trials` are COMPLETE, nothing is left for this worker, or Ctrl-C. Safe to run again (it
resumes) and in several processes at once (docs/design.md, "Optuna and MLflow")."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from rich.markup import escape

from bench.config import Study, check_data
from bench.study.objective import Objective
from bench.study.queue import GridQueue, optimize_one
from bench.study.samplers import make_sampler
from bench.study.storage import ClaimLock, make_storage
from bench.study.summary import RunOutcome, count_states
from bench.study.tuning import tune_methods
from bench.threads import fixed_threads
from bench.tracking import Tracker, default_storage, redact
from bench.trial import forget_built, prepare
from vitdsi import interrupt
from vitdsi.data import DATASETS
from vitdsi.errors import DatasetNotFoundError, VitDSIError
from vitdsi.log import console, get_logger, progress

log = get_logger("bench.study")

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
    reuse: bool = False  # copy the result of a finished run with the same configuration (bench.reuse)


class StudyMismatchError(RuntimeError):
    pass


def run(study: Study, options: RunOptions | None = None) -> RunOutcome:
    """Work on `study` until `n_trials` trials are COMPLETE, nothing is left for this worker, or
    Ctrl-C. Threads are pinned for the run when the options or the study file ask for it."""
    options = options or RunOptions()
    threads = options.threads or study.threads
    if threads is None:
        return _run(study, options)
    with fixed_threads(threads):
        return _run(study, options)


def _check_data(study: Study) -> list[str]:
    """Fail before any trial on data that is not there or too small (every trial's dataset,
    cheaply), then load the first trial's dataset and split."""
    notes = check_data(study)
    try:
        prepare(study.dataset)
    except VitDSIError as e:
        # the "where is it" hint only when the data are missing, not for e.g. too few images
        hint = (
            "; give its location with `dataset: {root: PATH}` in the study or `bench run --set "
            "dataset.root=PATH`"
            if isinstance(e, DatasetNotFoundError) and "root" in DATASETS[study.dataset.name].params()
            else ""
        )
        raise type(e)(f"dataset '{study.dataset.name}' (scale {study.scale}): {e}{hint}") from None
    return notes


def _run(study: Study, options: RunOptions) -> RunOutcome:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    tracker = Tracker(options.tracking_uri)
    storage_url = options.storage or default_storage(tracker.uri)
    study_name = options.study_name or study.default_study_name
    grid = GridQueue(study.grid()) if study.sampler == "grid" else None
    target = options.n_trials or study.n_trials
    if grid is not None:
        target = min(target, len(grid.points))
    notes = _check_data(study)
    forget_built()  # indexes are shared by the trials of one run only

    storage = make_storage(storage_url, options.heartbeat, tracker)
    claim = ClaimLock(storage_url, study_name)
    ostudy, parent_id, experiment_id = _open(study, study_name, storage, storage_url, tracker, options)
    if grid is not None:  # the creator queues the grid; a resume re-queues failed / interrupted points
        with claim:
            optuna.storages.fail_stale_trials(ostudy)
            grid.enqueue_free(ostudy, ostudy.get_trials(deepcopy=False))
            grid.retries_first(ostudy, storage, ostudy.get_trials(deepcopy=False))
    tracker.set_status(parent_id, "RUNNING")

    _announce(study, study_name, target, notes)
    outcome = RunOutcome(
        study_name,
        redact(storage_url),
        tracker.uri,
        study.experiment,
        experiment_id,
        parent_id,
        {},
        target,
        None,
        0,
        metric=study.metric,
    )
    objective = Objective(
        study,
        ostudy,
        tracker,
        experiment_id=experiment_id,
        parent_id=parent_id,
        study_name=study_name,
        options=options,
        outcome=outcome,
        grid=grid,
        claim=claim,
    )
    try:
        objective.study = tune_methods(
            study,
            study_name=study_name,
            storage=storage,
            storage_url=storage_url,
            tracker=tracker,
            options=options,
            experiment_id=experiment_id,
            parent_id=parent_id,
            max_failures=MAX_CONSECUTIVE_FAILURES,
        )
        _trial_loop(ostudy, storage, objective, study_name, target, grid, claim, options)
    except KeyboardInterrupt:
        outcome.interrupted = True
        console.print(
            "[yellow]interrupted[/]: the running trial is recorded as failed; run the same command again to "
            "resume"
        )
    finally:
        _close(study, ostudy, tracker, parent_id, outcome)
    return outcome


def _trial_loop(
    ostudy, storage, objective: Objective, study_name: str, target: int, grid, claim, options: RunOptions
) -> None:
    """Run trials until `target` are done, nothing is left for this worker or too many failed in a row,
    waiting for other workers' running trials (`options.wait_for_others`)."""
    with progress(transient=False) as bar:
        task = bar.add_task(f"trials of {study_name}", total=target)
        consecutive_failures = 0
        while True:
            interrupt.check()  # between trials
            # every decision below reads one snapshot, taken under the claim lock, which is held
            # until `optimize` has popped (or made) this worker's trial
            claim.acquire()
            try:
                optuna.storages.fail_stale_trials(ostudy)
                trials = ostudy.get_trials(deepcopy=False)
                # a stale trial's retry
                if grid is not None and grid.retries_first(ostudy, storage, trials):
                    trials = ostudy.get_trials(deepcopy=False)
                done = grid.done(trials) if grid else sum(t.state == TrialState.COMPLETE for t in trials)
                bar.update(task, completed=min(done, target))
                running = [t for t in trials if t.state == TrialState.RUNNING]
                if done >= target:
                    break
                if grid is not None:
                    has_work = any(t.state == TrialState.WAITING for t in trials)
                else:
                    has_work = consecutive_failures < MAX_CONSECUTIVE_FAILURES
                if has_work and done + len(running) < target:
                    failed = optimize_one(ostudy, objective, storage, trials)
                    consecutive_failures = consecutive_failures + 1 if failed else 0
                    continue
            finally:
                claim.release()
            if running and options.wait_for_others:
                bar.update(
                    task,
                    description=f"trials of {study_name} (waiting for {len(running)} in other workers)",
                )
                time.sleep(min(options.heartbeat, 5))
                continue
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                log.error(f"{consecutive_failures} trials failed in a row; stopping (see the errors above)")
            break


def _close(study: Study, ostudy, tracker: Tracker, parent_id: str, outcome: RunOutcome) -> None:
    """Read the outcome and record it on the study's MLflow run, whatever ended the run."""
    forget_built()
    outcome.read(ostudy.get_trials(deepcopy=False), study.direction)
    try:
        tracker.log_study_summary(parent_id, study.metric, outcome.best, outcome.counts)
        tracker.set_status(parent_id, "KILLED" if outcome.interrupted else "FINISHED")
    except Exception as e:  # never hide the interrupt or the real error behind a logging one
        log.warning(f"could not update the study's MLflow run: {e}")


def _announce(study: Study, study_name: str, target: int, notes: list[str]) -> None:
    """The run's header line and the data check's notes (warnings in yellow)."""
    console.print(
        f"[bold]study[/] {study_name}: {study.sampler} over {', '.join(study.space) or 'one configuration'}, "
        f"{target} trials, objective {study.metric} ({study.direction}), scale {study.scale}, "
        f"{torch.get_num_threads()} torch thread(s)"
    )
    for note in notes:
        console.print(
            ("[yellow]" if note.startswith("warning") else "")
            + escape(note)
            + ("[/]" if note.startswith("warning") else "")
        )


def _open(study: Study, study_name: str, storage, storage_url: str, tracker: Tracker, options: RunOptions):
    """Create the Optuna study (and its MLflow parent run) or join the existing one.

    Creating the study is the election: the one worker whose create succeeds describes it
    (config, grid, MLflow parent run) and sets the fingerprint last, as a "ready" mark; the
    others wait for that mark. A study left without it (its creator died) is adopted."""
    experiment_id = tracker.experiment_id(study.experiment)
    fingerprint = study.fingerprint()
    sampler = make_sampler(study)
    try:
        ostudy = optuna.create_study(
            study_name=study_name, storage=storage, sampler=sampler, direction=study.direction
        )
        return (
            ostudy,
            _describe(ostudy, study, study_name, storage_url, experiment_id, tracker, options),
            experiment_id,
        )
    except optuna.exceptions.DuplicatedStudyError:
        pass
    ostudy = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    attrs = _wait_for_attrs(ostudy, "fingerprint")
    if "fingerprint" not in attrs:
        log.warning(
            f"study '{study_name}' was left half-created (no fingerprint after {ATTR_WAIT_S:.0f} s); "
            "adopting it"
        )
        return (
            ostudy,
            _describe(ostudy, study, study_name, storage_url, experiment_id, tracker, options),
            experiment_id,
        )
    if attrs["fingerprint"] != fingerprint:
        raise StudyMismatchError(
            f"study '{study_name}' in {redact(storage_url)} was made from a different configuration "
            f"(fingerprint {attrs['fingerprint']} vs {fingerprint} now); its trials would not be comparable. "
            f"Restore the file, or start a new study with --study-name {study_name}-v2"
        )
    if ostudy.direction.name.lower() != study.direction:
        raise StudyMismatchError(
            f"study '{study_name}' optimises {ostudy.direction.name.lower()}, the file says {study.direction}"
        )
    parent_id = attrs.get("mlflow_parent_run_id")
    if not tracker.run_exists(parent_id):  # e.g. a different tracking store than the first worker's
        parent_id = _start_parent(tracker, study, study_name, storage_url, experiment_id, options)
        log.warning(
            f"the study's MLflow run is not in {tracker.uri}; its trials from now on go under run {parent_id}"
        )
        ostudy.set_user_attr("mlflow_parent_run_id", parent_id)
    console.print(
        f"resuming study {study_name}: {count_states(ostudy.get_trials(deepcopy=False))}", markup=False
    )
    return ostudy, parent_id, experiment_id


def _start_parent(
    tracker: Tracker, study: Study, study_name: str, storage_url: str, experiment_id: str, options: RunOptions
) -> str:
    """A new MLflow parent run for the study (a new study, or a resume in another tracking store)."""
    return tracker.start_parent(
        study,
        study_name=study_name,
        storage=storage_url,
        experiment_id=experiment_id,
        study_file=study.file,
        device=options.device,
    )


def _describe(
    ostudy,
    study: Study,
    study_name: str,
    storage_url: str,
    experiment_id: str,
    tracker: Tracker,
    options: RunOptions,
) -> str:
    """Store the study's description and MLflow parent run; the fingerprint goes last."""
    ostudy.set_user_attr("config", study.model_dump(mode="json"))
    ostudy.set_user_attr("file", study.file)
    if study.sampler == "grid":
        ostudy.set_user_attr("grid", study.grid())
    parent_id = _start_parent(tracker, study, study_name, storage_url, experiment_id, options)
    ostudy.set_user_attr("mlflow_parent_run_id", parent_id)
    ostudy.set_user_attr("mlflow_experiment", study.experiment)
    ostudy.set_user_attr("fingerprint", study.fingerprint())
    return parent_id


def _wait_for_attrs(ostudy, key: str) -> dict[str, Any]:
    """A worker that joins a study being created waits until the creator has described it."""
    deadline = time.monotonic() + ATTR_WAIT_S
    while True:
        attrs = ostudy.user_attrs
        if key in attrs or time.monotonic() > deadline:
            return attrs
        time.sleep(0.2)
