"""One Optuna trial of a study: its parameters, the run (bench.trial), MLflow logging and the
objective value (the validation metric)."""

from __future__ import annotations

import time
import traceback
from typing import Any

import numpy as np
import optuna
from rich.markup import escape

from bench.config import Categorical, FloatRange, IntRange, Study
from bench.curves import EpochLogger, log_checkpoints
from bench.reuse import REUSED_TAG, find_source, reuse
from bench.seed_checkpoints import SeedCheckpoints
from bench.tracking import Tracker, worker_id
from bench.trial import run_trial
from vitdsi import interrupt
from vitdsi.log import console


def fmt(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.4f}"


class Objective:
    """Called by `study.optimize` with the trial it popped or made: run it (or, with `--reuse`,
    copy a finished run of the same configuration), log it, return the objective. A failure is recorded
    (Optuna user attr `error`, MLflow tag and error.txt) and re-raised; Ctrl-C marks the MLflow run
    KILLED and stops the worker."""

    def __init__(
        self,
        study: Study,
        ostudy,
        tracker: Tracker,
        *,
        experiment_id: str,
        parent_id: str,
        study_name: str,
        options,
        outcome,
        grid=None,
        claim=None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.study, self.ostudy, self.tracker = study, ostudy, tracker
        self.tags = dict(tags or {})  # on every trial run of this objective (e.g. the tuning phase)
        self.experiment_id, self.parent_id, self.study_name = experiment_id, parent_id, study_name
        self.options, self.outcome, self.grid, self.claim = options, outcome, grid, claim
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

    def __call__(self, trial) -> float:
        if self.claim is not None:
            self.claim.release()  # the trial is popped: other workers may claim theirs
        if self.grid is not None:
            reason = self.grid.duplicate(trial, self.ostudy.get_trials(deepcopy=False))
            if reason:
                trial.set_user_attr("skipped", reason)
                raise optuna.TrialPruned(reason)
        try:
            sampled = self.suggest(trial)
        except Exception as e:
            self.sampler_failed(trial.number, e)
            trial.set_user_attr("error", f"sampler: {type(e).__name__}: {e}")
            raise
        cfg = self.study.trial_config(sampled)
        source = find_source(self.tracker, cfg) if self.options.reuse else None
        tags = dict(self.tags)
        if "retry_of" in trial.user_attrs:
            tags["optuna.retry_of"] = str(trial.user_attrs["retry_of"])
        if source is not None:
            tags[REUSED_TAG] = source.data.tags.get(REUSED_TAG, source.info.run_id)
        run_id = self.tracker.start_trial(
            experiment_id=self.experiment_id,
            parent_run_id=self.parent_id,
            study_name=self.study_name,
            number=trial.number,
            cfg=cfg,
            device=self.options.device,
            extra_tags=tags,
        )
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.set_user_attr("method", cfg.method)
        trial.set_user_attr("worker", worker_id())
        label = escape("[" + (", ".join(f"{k}={v}" for k, v in sampled.items()) or cfg.method) + "]")
        how = f"reusing run {tags[REUSED_TAG][:8]}" if source is not None else "started"
        console.print(f"trial {trial.number} {label} {how} (MLflow run {run_id[:8]})")
        self.outcome.ran += 1
        t0 = time.perf_counter()
        try:
            if source is not None:
                summary, val_summary = reuse(self.tracker, source, run_id, cfg)
                value = self.value(summary, val_summary)
                trial.set_user_attr(REUSED_TAG, tags[REUSED_TAG])
            else:
                summary, val_summary, value = self._run(cfg, run_id)
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
        trial.set_user_attr("metrics", summary)
        trial.set_user_attr("val_metrics", val_summary)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        s = summary[self.study.metric]
        console.print(
            f"trial {trial.number} {label} {self.study.metric} validation {value:.4f} (objective), test "
            f"{s['mean']:.4f} ± {fmt(s['ci95'])} (chance {s['chance']:.4f}) in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        return value

    def sampler_failed(self, number: int | None, e: Exception) -> None:
        """Count a trial the sampler could not draw as failed (it stops the worker like any failure)."""
        self.failures += 1
        if number is not None:
            self.outcome.failed.append(number)
        console.print(
            f"[red]trial {number if number is not None else '?'} failed[/]: the sampler raised "
            f"{escape(f'{type(e).__name__}: {e}')}"
        )

    def value(self, summary: dict[str, Any], val_summary: dict[str, Any]) -> float:
        """The objective: the validation queries' mean, so model choice never reads test (IA@K,
        which queries the indexed images themselves, reads them)."""
        value = (val_summary if self.study.metric in val_summary else summary)[self.study.metric]["mean"]
        if not np.isfinite(value):
            raise ValueError(
                f"objective {self.study.metric} is {value} on the validation queries "
                "(no validation query has a relevant image?)"
            )
        return value

    def _run(self, cfg, run_id: str) -> tuple[dict[str, Any], dict[str, Any], float]:
        """Train and measure the trial (bench.trial) and log it: its test and validation summaries
        and objective."""

        curves = EpochLogger(self.tracker, run_id, seeds=cfg.repeats > 1, first_seed=cfg.seed)

        def on_epoch(repeat: int, entry) -> None:
            curves(repeat, entry)
            interrupt.check()  # between epochs: Ctrl-C stops the trial here

        # a trial of several seeds logs each seed's build, and restores those an interrupted run built
        checkpoints = SeedCheckpoints(self.tracker, run_id, cfg) if cfg.repeats > 1 else None
        try:
            result = run_trial(cfg, device=self.options.device, on_epoch=on_epoch, checkpoints=checkpoints)
        finally:
            curves.flush()
            if checkpoints is not None:
                checkpoints.close()
        summary = {k: v.to_dict() for k, v in result.summary.items()}
        val_summary = {k: v.to_dict() for k, v in result.val_summary.items()}
        value = self.value(summary, val_summary)  # raises before the run is logged FINISHED
        log_checkpoints(self.tracker, run_id, result)
        self.tracker.finish_trial(run_id, result, log_index=self.study.log_index)
        if checkpoints is not None:
            checkpoints.finished()
        return summary, val_summary, value
