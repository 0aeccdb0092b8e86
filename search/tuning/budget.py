"""A study's trial budget, shared by every worker of the study.

A run's trial budget is placed in the study itself as WAITING trials with no fixed
parameters ("slots"). Workers claim a WAITING trial atomically through the storage and
stop when none is left, so N workers on many machines run exactly the budget, numbered
without gaps. Parameters of a claimed slot are drawn by the sampler as usual.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

SLOT_ATTR = "budget_slot"  # system attribute marking a slot enqueued as budget


def waiting_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


def reserve_trials(study: optuna.Study, n: int) -> int:
    """Make sure `n` trials wait in the study; returns how many slots were added.

    Trials already waiting count toward `n`: the space's enqueued seed configurations,
    retries of dead workers' trials, and slots left by an earlier run that stopped
    early. So a run never does more trials than it was asked for.
    """
    if n < 0:
        raise ValueError(f"the trial budget must be >= 0, got {n}")
    missing = max(0, n - len(waiting_trials(study)))
    for _ in range(missing):
        study.add_trial(
            optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={SLOT_ATTR: True})
        )
    return missing
