"""A study's trial budget, shared by every worker of the study.

A run's trial budget is placed in the study itself as WAITING trials with no fixed
parameters ("slots"). Workers claim a WAITING trial atomically through the storage and
stop when none is left, so N workers on many machines run exactly the budget, numbered
without gaps. Parameters of a claimed slot are drawn by the sampler as usual.

`--trials N` runs exactly N trials. Trials already waiting count toward N: retries of
dead workers' trials first, then the seed configurations and slots an earlier run left
when it stopped early, oldest first. Waiting trials beyond N are parked: they stay in
the study, WAITING, but no worker claims them until a later run takes them back into
its budget.
"""

from __future__ import annotations

import optuna
from autosearch.search.tuning.outcomes import PARKED_ATTR
from optuna.trial import FrozenTrial, TrialState

SLOT_ATTR = "budget_slot"  # system attribute marking a slot enqueued as budget
# PARKED_ATTR, a system attribute: waiting, but not for this run. Its "autosearch:"
# prefix keeps it off retries (see storage.stale).
__all__ = ["PARKED_ATTR", "SLOT_ATTR", "queued_trials", "reserve_trials", "waiting_trials"]


def waiting_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


def is_parked(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.WAITING and bool(trial.system_attrs.get(PARKED_ATTR))


def queued_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The WAITING trials that workers may claim now: not parked."""
    return [t for t in waiting_trials(study) if not is_parked(t)]


def _first_taken(trial: FrozenTrial) -> tuple[int, int]:
    # A retry resumes a dead trial's epochs from its checkpoint: it goes first.
    return (0 if "failed_trial" in trial.system_attrs else 1, trial.number)


def reserve_trials(study: optuna.Study, n: int) -> int:
    """Make exactly `n` trials claimable in the study; returns how many slots were added.

    Waiting trials count toward `n` (retries first, then the oldest); those beyond `n`
    are parked for a later run, and slots are added for the rest. So a run does exactly
    the trials it was asked for, whatever an interrupted run left behind.
    """
    if n < 0:
        raise ValueError(f"the trial budget must be >= 0, got {n}")
    waiting = sorted(waiting_trials(study), key=_first_taken)
    for i, trial in enumerate(waiting):
        park = i >= n
        if bool(trial.system_attrs.get(PARKED_ATTR)) != park:
            try:
                study._storage.set_trial_system_attr(trial._trial_id, PARKED_ATTR, park)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # claimed and finished meanwhile by a worker of the earlier run
    missing = max(0, n - len(waiting))
    for _ in range(missing):
        study.add_trial(
            optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={SLOT_ATTR: True})
        )
    return missing
