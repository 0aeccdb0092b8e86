"""Dead workers' trials: how they are queued again, and how a retry finds its chain.

Workers that die mid-trial are caught by Optuna's heartbeat: a trial whose heartbeat is
older than the grace period is failed by the next worker that starts a trial, and
`RetryStaleTrial` queues a copy with the same parameters and user attributes.
`root_trial_number` maps every copy back to the first trial of its chain, which is the
key under which `storage.checkpoints` keeps that trial's epochs.
"""

from __future__ import annotations

import copy
import warnings

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

# User attributes that describe how one attempt ended; a retry starts without them.
ATTEMPT_ATTRS = ("stopped", "fail_reason")
OWN_PREFIX = "autosearch:"  # system attributes of one attempt (see storage.trial_writes)


def retry_callback(
    heartbeat_interval: int | None, max_retry: int | None
) -> RetryHeartbeatStaleTrialCallback | None:
    """Queues a dead worker's trial again, or None when heartbeats or retries are off."""
    if heartbeat_interval is None or max_retry is None:
        return None
    # inherit_intermediate_values=True: the retry resumes from the dead trial's last
    # complete checkpoint (epoch k) and reports only epochs after k, so the inherited
    # values for epochs <= k plus the new ones form one curve without gaps for the
    # pruner. The trainer should report an epoch after its checkpoint is written; if
    # it reports first and dies before the write, that epoch is trained again and
    # Optuna ignores (with a warning) the second report of a step, so no duplicates.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RetryStaleTrial(max_retry=max_retry, inherit_intermediate_values=True)


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial, minus what belonged to the dead attempt: the
    user attributes that say how it ended (`ATTEMPT_ATTRS`) and our system attributes
    (its claim and creation tokens). The retry is a new attempt, not yet ended."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.copy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
        trial.system_attrs = {
            k: v for k, v in trial.system_attrs.items() if not k.startswith(OWN_PREFIX)
        }
        super().__call__(study, trial)


def root_trial_number(trial: optuna.trial.BaseTrial | FrozenTrial) -> int:
    """The number of the first trial in `trial`'s retry chain, or its own if not a retry.

    A retried trial gets a new number; keying checkpoints by this root number lets the
    retry find the epochs its dead predecessor saved.

    Args:
        trial: A live `optuna.trial.Trial`, a `FrozenTrial`, or a `FixedTrial` (which
            is never a retry).

    Returns:
        The trial number that started the chain.
    """
    if isinstance(trial, optuna.trial.Trial):
        # A live trial exposes no system attributes; the storage holds them, copied onto
        # the retry by the callback when it was queued.
        frozen = trial.study._storage.get_trial(trial._trial_id)
    elif isinstance(trial, FrozenTrial):
        frozen = trial
    else:
        return trial.number
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        first = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        history = RetryHeartbeatStaleTrialCallback.retry_history(frozen)
    if first is not None:
        return first
    return history[0] if history else frozen.number
