"""Pruners that compare like with like: whole epochs, one epoch budget at a time.

A trial reports its validation accuracy after each epoch, numbered from 1, and the
epoch is the pruner's resource. Three rules make the pruners mean what they say:

- Warm-up counts whole epochs: no trial is pruned after any of its first
  `WARMUP_EPOCHS` epochs.
- A trial is compared only with trials of its own epoch budget (the `epochs` of its
  recipe), at the same epoch: when the space samples the epoch count, a 10-epoch
  trial's third epoch is not held against a 30-epoch trial's, whose schedule is
  elsewhere. Each budget has its own pruner, and Hyperband and successive halving take
  their resource bounds from it (first rung after the warm-up, last at the budget).
- A trial that has trained all its epochs is not pruned: its result costs nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any

import optuna
from autosearch.search.tuning.settings import PRUNERS, StudyError
from optuna.trial import FrozenTrial, TrialState

WARMUP_EPOCHS = 1  # epochs after which no trial is pruned yet


REDUCTION_FACTOR = 3  # Hyperband and successive halving keep 1 in 3 at each rung


def trial_budget(trial: FrozenTrial) -> int | None:
    """The epochs `trial` trains for, from its recorded recipe; None before it has one."""
    recipe = trial.user_attrs.get("recipe")
    if not isinstance(recipe, dict) or "epochs" not in recipe:
        return None
    return int(recipe["epochs"])


class _OneBudget:
    """A study's storage that lists only the trials of one epoch budget.

    Trials that trained nothing (infeasible ones, finished with no epoch reported) are
    left out too: they are no start-up trials of any pruner. All else goes to `storage`.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, budget: int) -> None:
        self._storage = storage
        self._budget = budget

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        trials = self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return [
            t
            for t in trials
            if trial_budget(t) == self._budget
            and (t.intermediate_values or t.state != TrialState.COMPLETE)
        ]


class BudgetPruner(optuna.pruners.BasePruner):
    """Prunes each trial with the pruner of its epoch budget, against that budget's trials.

    Args:
        make: Makes the pruner of one budget (a number of epochs).
        default_budget: The budget of a trial that records no recipe.
    """

    def __init__(self, make: Callable[[int], optuna.pruners.BasePruner], default_budget: int):
        self._make = make
        self.default_budget = default_budget
        self._pruners: dict[int, optuna.pruners.BasePruner] = {}

    def pruner_for(self, budget: int) -> optuna.pruners.BasePruner:
        if budget not in self._pruners:
            self._pruners[budget] = self._make(budget)
        return self._pruners[budget]

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        budget = trial_budget(trial) or self.default_budget
        if step is None or step <= WARMUP_EPOCHS or step >= budget:
            return False
        pruner = self.pruner_for(budget)
        # A study object over the filtered storage: Hyperband builds its bracket views
        # from the study's storage, so the filter has to sit there to reach them.
        view = optuna.Study(
            study_name=study.study_name,
            storage=_OneBudget(study._storage, budget),  # type: ignore[arg-type]
            sampler=study.sampler,
            pruner=pruner,
        )
        return pruner.prune(view, trial)


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    """The pruner called `name`, per epoch budget (see the module's rules).

    `max_epochs` is the budget of trials that record none: the study's largest.
    """
    first_rung = WARMUP_EPOCHS + 1
    if name == "median":
        # n_warmup_steps is a step number, and epochs count from 1.
        return BudgetPruner(
            lambda _budget: optuna.pruners.MedianPruner(
                n_startup_trials=5, n_warmup_steps=first_rung
            ),
            max_epochs,
        )
    if name == "quartile":
        # Only the hopeless: a trial in the lowest quarter of the finished trials at its
        # epoch (Optuna's percentile is the share kept, counted from the best).
        return BudgetPruner(
            lambda _budget: optuna.pruners.PercentilePruner(
                75.0, n_startup_trials=5, n_warmup_steps=first_rung
            ),
            max_epochs,
        )
    if name == "hyperband":
        return BudgetPruner(
            lambda budget: optuna.pruners.HyperbandPruner(
                min_resource=first_rung,
                max_resource=max(budget, first_rung),
                reduction_factor=REDUCTION_FACTOR,
            ),
            max_epochs,
        )
    if name == "sha":
        return BudgetPruner(
            lambda _budget: optuna.pruners.SuccessiveHalvingPruner(
                min_resource=first_rung, reduction_factor=REDUCTION_FACTOR
            ),
            max_epochs,
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise StudyError(f"unknown pruner {name!r}; choose from {', '.join(PRUNERS)}")
