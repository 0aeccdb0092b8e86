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


class TrialFailed(Exception):
    """A trial that cannot produce a result (diverged, out of memory); the study goes on."""


def outcome(trial: FrozenTrial) -> str:
    """complete, pruned, infeasible, failed, running or waiting."""
    why = trial.user_attrs.get("stopped")
    if trial.state == TrialState.COMPLETE:
        return INFEASIBLE if why == INFEASIBLE else "complete"
    if trial.state == TrialState.PRUNED:
        return PRUNED
    if trial.state == TrialState.FAIL:
        return FAILED
    return trial.state.name.lower()


def count_outcomes(study: optuna.Study) -> Counter[str]:
    return Counter(outcome(t) for t in study.get_trials(deepcopy=False))


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
