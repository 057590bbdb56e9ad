"""Optuna samplers of a study, seeded per trial so one worker is reproducible and parallel
workers draw different points. Grid studies draw nothing: their points are queued trials
(bench.study.queue)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import optuna
from optuna.samplers import BaseSampler

from bench.config import Study


def trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class PerTrialSeeded(BaseSampler):
    """Each trial is drawn by a fresh `make(seed)` sampler seeded from (study seed, trial number);
    TPE and random keep no state between trials but their random generator."""

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self.make, self.seed = make, seed
        self.current = make(seed)

    def before_trial(self, study, trial) -> None:
        self.current = self.make(trial_seed(self.seed, trial.number))
        self.current.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.current.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.current.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self.current.after_trial(study, trial, state, values)


def make_sampler(study: Study) -> BaseSampler:
    if study.sampler == "grid":  # every trial is a queued point with fixed parameters
        return optuna.samplers.RandomSampler(seed=study.sampler_seed)
    if study.sampler == "random":
        return PerTrialSeeded(lambda s: optuna.samplers.RandomSampler(seed=s), study.sampler_seed)
    kwargs = {"n_startup_trials": study.n_startup_trials} if study.n_startup_trials is not None else {}
    return PerTrialSeeded(lambda s: optuna.samplers.TPESampler(seed=s, **kwargs), study.sampler_seed)
