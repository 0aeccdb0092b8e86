"""Samplers whose random stream belongs to the trial, not to the process.

Each trial draws from a sampler seeded with (study seed, trial number). Trial numbers
are unique within a study, and every trial is claimed by exactly one process, so no
two trials share a stream: not parallel workers, not two containers given the same
worker index, not a restarted worker, not a resumed run. With a fixed seed one worker
draws the same trials in the same order every time; with several, which trials had
finished when a trial was sampled depends on timing (see the README).
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from autosearch.search.tuning.settings import SAMPLERS, StudyError
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

MAX_SEED = 2**32 - 1


# TPE's random start-up trials before it models the results: 5, not Optuna's 10. On the
# CPU proxy of bench/search_quality.py (25 trials' worth of training per study), TPE
# after 10 random trials with either pruner never reached random search's final best;
# after 5 it did by 36% of the budget (README: Does the search beat random search?).
TPE_STARTUP = 5


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial `number` in a study seeded with `seed`."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def base_sampler(
    name: str, seed: int | None = None, *, startup: int = TPE_STARTUP
) -> optuna.samplers.BaseSampler:
    """Optuna's sampler called `name`, with our settings; TPE draws `startup` random
    trials before it models the results."""
    if name == "tpe":
        # multivariate + group model the conditional parameters (per-stage widths exist
        # only for the drawn stage count); constant_liar spreads parallel workers apart.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed,
                multivariate=True,
                group=True,
                constant_liar=True,
                n_startup_trials=startup,
            )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        # CMA-ES handles the numeric parameters; categorical ones fall back to random.
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise StudyError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Optuna's sampler `name`, built afresh for each trial with `trial_seed(seed, number)`.

    `seed` None draws the study seed from the operating system, once per process.
    """

    def __init__(self, name: str, seed: int | None = None, *, startup: int = TPE_STARTUP) -> None:
        self.name = name
        self.seed = seed if seed is not None else secrets.randbelow(MAX_SEED + 1)
        self.startup = startup
        self._number: int | None = None
        self._sampler = base_sampler(name, self.seed, startup=startup)  # an unknown name fails

    def for_trial(self, number: int) -> optuna.samplers.BaseSampler:
        """The sampler of trial `number`, made on first use."""
        if number != self._number:
            self._sampler = base_sampler(
                self.name, trial_seed(self.seed, number), startup=self.startup
            )
            self._number = number
        return self._sampler

    def __str__(self) -> str:
        return f"{type(self._sampler).__name__}(per-trial seeds)"

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.for_trial(trial.number).before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.for_trial(trial.number).infer_relative_search_space(study, trial)

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
    ) -> dict[str, Any]:
        return self.for_trial(trial.number).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        sampler = self.for_trial(trial.number)
        return sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.for_trial(trial.number).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        # Optuna asks for this when it copies a sampler into parallel threads.
        self.seed = secrets.randbelow(MAX_SEED + 1)
        self._number = None


def make_sampler(
    name: str, seed: int | None = None, *, startup: int = TPE_STARTUP
) -> optuna.samplers.BaseSampler:
    """The sampler called `name`; trial n draws from the stream of (`seed`, n).

    `seed` None seeds from the operating system. `startup` is TPE's random start-up
    trials (`bench/search_quality.py` compares settings). See `TrialSeededSampler`.
    """
    return TrialSeededSampler(name, seed, startup=startup)
