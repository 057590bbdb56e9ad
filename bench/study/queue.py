"""A grid study as an Optuna queue: each grid point is an enqueued (WAITING) trial.

`study.ask()` pops a WAITING trial before it makes a new one, so workers that claim under the
`ClaimLock` each take a different point. Points without a COMPLETE, RUNNING or WAITING trial
(new, failed or interrupted) are queued when a worker starts; a retried point is run before any
point that has never run (`retries_first`).
"""

from __future__ import annotations

import json
from typing import Any

from optuna.trial import TrialState

POINT_ATTR = "grid_id"  # user attr of a queued trial: the index of its grid point
MOVED_ATTR = "requeued"  # user attr of a queued trial whose point was queued again behind the retries
ALIVE = (TrialState.RUNNING, TrialState.WAITING)


def trial_id(ostudy, storage, number: int) -> int:
    """The storage's id of trial `number` of `ostudy`, through the storage's public API."""
    return storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(ostudy.study_name), number
    )


def point_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


class GridQueue:
    def __init__(self, points: list[dict[str, Any]]) -> None:
        self.points = points
        self._index = {point_key(p): i for i, p in enumerate(points)}

    def point_of(self, trial) -> int | None:
        """The grid point of a trial (a FrozenTrial or a running Trial); trials of studies made
        before the queue carry only their parameters."""
        gid = trial.user_attrs.get(POINT_ATTR)
        return gid if gid is not None else self._index.get(point_key(trial.params)) if trial.params else None

    def done(self, trials) -> int:
        """Grid points with a COMPLETE trial."""
        return len({self.point_of(t) for t in trials if t.state == TrialState.COMPLETE} - {None})

    def enqueue_free(self, ostudy, trials) -> int:
        """Queue every point that no COMPLETE, RUNNING or WAITING trial holds, in grid order: the
        whole grid for a new study, failed or interrupted points on a resume. Call it under the
        claim lock, after `fail_stale_trials` (whose callback re-queues a dead worker's point)."""
        taken = {self.point_of(t) for t in trials if t.state == TrialState.COMPLETE or t.state in ALIVE}
        failed = {self.point_of(t): t.number for t in trials if t.state == TrialState.FAIL}
        free = [g for g in range(len(self.points)) if g not in taken]
        for g in free:
            attrs = {POINT_ATTR: g, **({"retry_of": failed[g]} if g in failed else {})}
            ostudy.enqueue_trial(self.points[g], user_attrs=attrs)
        return len(free)

    def retries_first(self, ostudy, storage, trials) -> int:
        """Make the queued retries (failed, interrupted or stale points) run before the points
        never run. Optuna pops WAITING trials by number, so every never-run point queued before
        the last retry is queued again behind it and its old trial closed (PRUNED, marked
        `MOVED_ATTR`, left out of the counts). Call it under the claim lock."""
        waiting = sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: t.number)
        retries = [t.number for t in waiting if "retry_of" in t.user_attrs]
        if not retries:
            return 0
        moved = [
            t
            for t in waiting
            if "retry_of" not in t.user_attrs and t.number < retries[-1] and self.point_of(t) is not None
        ]
        for t in moved:
            tid = trial_id(ostudy, storage, t.number)
            storage.set_trial_user_attr(tid, MOVED_ATTR, True)
            storage.set_trial_user_attr(tid, "skipped", "queued again behind the retried points")
            storage.set_trial_state_values(tid, TrialState.PRUNED)
            ostudy.enqueue_trial(self.points[self.point_of(t)], user_attrs={POINT_ATTR: self.point_of(t)})
        return len(moved)

    def duplicate(self, trial, trials) -> str | None:
        """Why `trial` must not run: no point (a new trial made when the queue ran dry), or its
        point is COMPLETE or held by a smaller-numbered RUNNING / WAITING trial. Only storages
        without a claim lock can get here; the smaller number wins, so exactly one runs."""
        gid = self.point_of(trial)
        if gid is None:
            return "no grid point left"
        for t in trials:
            if t.number == trial.number or self.point_of(t) != gid:
                continue
            if t.state == TrialState.COMPLETE:
                return f"grid point {gid} was completed by trial {t.number}"
            if t.state in ALIVE and t.number < trial.number:
                return f"grid point {gid} is held by trial {t.number}"
        return None


def fail_unclaimed(ostudy, storage, before, error: str) -> int | None:
    """Mark FAIL the trial that `ask` popped or made before its sampler raised: under the claim
    lock it is the one RUNNING trial that was not RUNNING in `before`. Left RUNNING, with no
    heartbeat ever sent, it would never go stale and other workers would wait on it."""
    was_running = {t.number for t in before if t.state == TrialState.RUNNING}
    number = None
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number not in was_running:
            tid = trial_id(ostudy, storage, t.number)
            storage.set_trial_user_attr(tid, "error", error)
            storage.set_trial_state_values(tid, TrialState.FAIL)
            number = t.number
    return number


def optimize_one(ostudy, objective, storage, trials) -> bool:
    """Run one trial of `objective` (a queued point, or one the sampler asks for); True when it
    failed, a sampler error raised in `ask` before the objective ran included (that trial is
    marked FAIL: `fail_unclaimed`)."""
    before = objective.failures
    try:
        ostudy.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
    except Exception as e:  # raised by the sampler in `ask`, before the objective ran
        number = fail_unclaimed(ostudy, storage, trials, f"sampler: {type(e).__name__}: {e}")
        objective.sampler_failed(number, e)
    return objective.failures > before
