"""How trials ended, and reading a study's results back as plain data."""

from __future__ import annotations

from collections import Counter
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

# How a trial ended, stored as the user attribute "stopped".
FINISHED, PRUNED, INFEASIBLE, DIVERGED, FAILED = (
    "finished",
    "pruned",
    "infeasible",
    "diverged",
    "failed",
)


PARKED_ATTR = "autosearch:parked"  # see tuning.budget: waiting, but for a later run


class TrialFailed(Exception):
    """A trial that cannot produce a result (diverged, out of memory); the study goes on."""


def outcome(trial: FrozenTrial) -> str:
    """complete, pruned, infeasible, failed, running, waiting or parked."""
    why = trial.user_attrs.get("stopped")
    # Infeasible trials end PRUNED; studies from before that ended them COMPLETE at 0.
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and why == INFEASIBLE:
        return INFEASIBLE
    if trial.state == TrialState.COMPLETE:
        return "complete"
    if trial.state == TrialState.PRUNED:
        return PRUNED
    if trial.state == TrialState.FAIL:
        return FAILED
    if trial.state == TrialState.WAITING and trial.system_attrs.get(PARKED_ATTR):
        return "parked"
    return trial.state.name.lower()


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of dead trials that were queued again: each retry lists its chain."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", ())}


def count_outcomes(study: optuna.Study) -> Counter[str]:
    """Trials by outcome, a retried dead trial counted once, by how its last retry ended;
    the dead attempts themselves are under "retried", apart from the failures."""
    trials = study.get_trials(deepcopy=False)
    superseded = retried_numbers(trials)
    return Counter("retried" if t.number in superseded else outcome(t) for t in trials)


def finished_count(study: optuna.Study) -> int:
    """Trials that ended one way or another (complete, pruned, infeasible or failed)."""
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return len(study.get_trials(deepcopy=False, states=done))


def top_trials(study: optuna.Study, n: int = 5) -> list[FrozenTrial]:
    """The `n` best feasible complete trials, best first."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if outcome(t) == "complete" and t.value is not None
    ]
    return sorted(done, key=lambda t: t.value, reverse=True)[:n]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    top = top_trials(study, 1)
    return top[0] if top else None


def trial_summary(trial: FrozenTrial) -> dict[str, Any]:
    """The facts a user asks about a trial, as plain JSON-able data."""
    a = trial.user_attrs
    return {
        "number": trial.number,
        "state": outcome(trial),
        "value": trial.value,
        "params": a.get("params"),
        "flops": a.get("flops"),
        "best_val_acc": a.get("best_val_acc"),
        "final_val_acc": a.get("final_val_acc"),
        "epochs_run": a.get("epochs_run"),
        "train_seconds": a.get("train_seconds"),
        "images_per_s": a.get("images_per_s"),
        "device": a.get("device"),
        "stopped": a.get("stopped"),
        "arch": a.get("arch"),
        "recipe": a.get("recipe"),
    }
