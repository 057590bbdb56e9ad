"""Tuning before the comparison: a study's `tune:` block gives each method it names the same
budget, `trials_per_method` finished trials drawn by the block's seeded sampler over that
method's knobs, each trial one seed (repeat 0) scored on the validation queries (the objective).
The best trial's knobs are the method's recipe, merged into its parameters for the study's own
trials, which run every seed and are reported on test.

Each method's tuning is an Optuna study of its own (`<study>-tune-<method>`, bench.config.tune)
in the study's storage, so a later `bench run` continues it and never redoes a finished trial;
its trials are MLflow runs under the study's parent run, tagged `vitdsi.phase = tune` and
`tune.method`, which reports keep apart from the study's results.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.markup import escape

from bench.config import Study
from bench.config.tune import tuning_fingerprint, tuning_name, tuning_study, with_recipes
from bench.study.objective import Objective
from bench.study.queue import optimize_one
from bench.study.samplers import make_sampler
from bench.study.storage import ClaimLock
from bench.study.summary import RunOutcome
from bench.tracking import Tracker, redact
from vitdsi import interrupt
from vitdsi.errors import VitDSIError
from vitdsi.log import console, progress

PHASE_TAG = "vitdsi.phase"  # on a tuning trial's run: "tune"
METHOD_TAG = "tune.method"  # on a tuning trial's run: the method it tunes
RECIPES_TAG = "tune.recipes"  # on the study's parent run: the chosen recipe of every tuned method (JSON)


class TuningError(VitDSIError):
    """A method's tuning cannot give a recipe (too many failures, or a stored tuning of another
    configuration)."""


def tune_methods(
    study: Study,
    *,
    study_name: str,
    storage,
    storage_url: str,
    tracker: Tracker,
    options,
    experiment_id: str,
    parent_id: str,
    max_failures: int,
) -> Study:
    """Tune every method of the study's `tune:` block (continuing earlier sessions' tuning) and
    return the study whose methods carry their chosen recipes; `study` itself when nothing is tuned."""
    if study.tune is None:
        return study
    recipes: dict[str, dict[str, Any]] = {}
    for method in study.tune.methods:
        tstudy = tuning_study(study, method)
        name = tuning_name(study_name, method)
        ostudy = _open(tstudy, name, storage, tuning_fingerprint(study, method))
        outcome = RunOutcome(
            name,
            redact(storage_url),
            tracker.uri,
            study.experiment,
            experiment_id,
            parent_id,
            {},
            tstudy.n_trials,
            None,
            0,
            metric=study.metric,
        )
        claim = ClaimLock(storage_url, name)
        objective = Objective(
            tstudy,
            ostudy,
            tracker,
            experiment_id=experiment_id,
            parent_id=parent_id,
            study_name=name,
            options=options,
            outcome=outcome,
            claim=claim,
            tags={PHASE_TAG: "tune", METHOD_TAG: method},
        )
        console.print(
            f"[bold]tuning[/] {escape(method)}: {tstudy.n_trials} trials ({tstudy.sampler}, seed "
            f"{tstudy.sampler_seed}) over {', '.join(tstudy.space)}, one seed each, {study.metric} on "
            "the validation queries"
        )
        with progress(transient=False) as bar:
            task = bar.add_task(f"tuning {method}", total=tstudy.n_trials)
            done = _work(
                ostudy,
                objective,
                claim,
                storage,
                tstudy.n_trials,
                options,
                max_failures,
                functools.partial(bar.update, task),
            )
        if done < tstudy.n_trials:
            raise TuningError(
                f"tuning of method '{method}' has {done}/{tstudy.n_trials} finished trials "
                f"(trials failed this session: {outcome.failed or 'none'}); the study's trials need "
                "every method's recipe: fix the cause and run again to continue the tuning"
            )
        best = best_trial(ostudy.get_trials(deepcopy=False), study.direction)
        recipes[method] = dict(best.params)
        console.print(
            f"tuned {escape(method)}: {escape(json.dumps(recipes[method], default=str))} "
            f"({study.metric} validation {best.value:.4f}, trial {best.number})"
        )
    tracker.client.set_tag(parent_id, RECIPES_TAG, json.dumps(recipes, default=str))
    return with_recipes(study, recipes)


def best_trial(trials, direction: str):
    """The COMPLETE trial with the best objective; of equal ones the first (lowest number)."""
    sign = 1 if direction == "maximize" else -1
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    return max(complete, key=lambda t: sign * t.value) if complete else None


def _open(tstudy: Study, name: str, storage, fingerprint: str):
    """Create one method's tuning study, or join the stored one when it was made from the same
    configuration."""
    sampler = make_sampler(tstudy)
    try:
        ostudy = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, direction=tstudy.direction
        )
        ostudy.set_user_attr("fingerprint", fingerprint)
        return ostudy
    except optuna.exceptions.DuplicatedStudyError:
        pass
    ostudy = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    stored = ostudy.user_attrs.get("fingerprint")
    if stored is not None and stored != fingerprint:
        raise TuningError(
            f"tuning study '{name}' was made from a different configuration (fingerprint {stored} vs "
            f"{fingerprint} now); restore the file, or start a new study with --study-name"
        )
    return ostudy


def _work(
    ostudy,
    objective: Objective,
    claim: ClaimLock,
    storage,
    target: int,
    options,
    max_failures: int,
    on_progress,
) -> int:
    """Run tuning trials until `target` are COMPLETE or `max_failures` fail in a row; the COMPLETE
    count. When only other workers' trials are left, wait for them whatever `--no-wait` says: no
    trial of the study can start without the recipe they decide (a stale one is failed by its
    missing heartbeat and run again here)."""
    in_a_row = 0
    while True:
        interrupt.check()  # between trials
        claim.acquire()  # one snapshot per decision, held until `optimize` has popped or made the trial
        try:
            optuna.storages.fail_stale_trials(ostudy)
            trials = ostudy.get_trials(deepcopy=False)
            done = sum(t.state == TrialState.COMPLETE for t in trials)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            on_progress(completed=min(done, target))
            if done >= target:
                return done
            if in_a_row < max_failures and done + len(running) < target:
                in_a_row = in_a_row + 1 if optimize_one(ostudy, objective, storage, trials) else 0
                continue
        finally:
            claim.release()
        if running and in_a_row < max_failures:
            time.sleep(min(options.heartbeat, 5))
            continue
        return done
