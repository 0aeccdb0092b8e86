"""The trial loop of one worker: claim a trial, run it with a heartbeat, tell the study.

Workers claim the study's WAITING trials (see `tuning.budget`). Trials that Optuna's
heartbeat retry re-queues are WAITING too, so a dead worker's trial is picked up by
whichever worker is free. A worker whose queue is empty while other trials still run
waits and checks for dead ones every heartbeat interval: a dead worker's trial comes
back as a retry only after its grace period, and someone must be there to take it.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager

import optuna

# From outcomes, not objective: the worker loop itself needs no torch.
from autosearch.search.tuning.outcomes import TrialFailed
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)


class Terminated(KeyboardInterrupt):
    """This process is being stopped from outside (SIGTERM): a Slurm preemption or
    requeue, a Kubernetes eviction, `docker stop`.

    Unlike Ctrl-C, this is not someone giving the trial up: `run_trial` fails it and
    queues it again at once, so that a free worker, here or elsewhere, resumes it from
    its last checkpoint. It is a `KeyboardInterrupt`, so it stops the process alike.
    """


def running_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def heartbeat_interval(study: optuna.Study) -> int | None:
    return getattr(study._storage, "get_heartbeat_interval", lambda: None)()


def claim_trial(study: optuna.Study) -> optuna.Trial | None:
    """Take one WAITING trial for this worker, or None when the queue is empty.

    The storage's compare-and-set on the trial state makes the claim atomic across
    processes and machines. The first heartbeat is written at once: a RUNNING trial
    with no heartbeat is never found stale, so a worker dying before its heartbeat
    thread starts would otherwise leave the trial RUNNING for ever.
    """
    storage = study._storage
    waiting = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,))
    for frozen in waiting:
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                if heartbeat_interval(study):
                    storage.record_heartbeat(frozen._trial_id)
                return optuna.Trial(study, frozen._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial):
    """Record the trial's heartbeat every interval while the body runs."""
    storage = study._storage
    interval = heartbeat_interval(study)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial._trial_id)
            except Exception as e:  # a database blip must not kill the trial
                log.warning("heartbeat of trial %d failed: %s", trial.number, e)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale(study: optuna.Study) -> None:
    """Fail trials whose worker stopped beating; the retry callback re-queues them."""
    if heartbeat_interval(study):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


def run_trial(study: optuna.Study, objective, trial: optuna.Trial) -> FrozenTrial:
    """Run `objective` on a claimed trial and tell the study how it ended.

    Pruned trials are told PRUNED, `TrialFailed` ones FAIL (with the reason as a user
    attribute) and the study goes on. Any other exception, Ctrl-C included, fails the
    trial, so that nothing is left RUNNING, and is raised again; on `Terminated` a
    retry with the same parameters is queued too, which resumes from the checkpoint.

    A trial can also end under us: when this worker lost the database for longer than
    the grace period, another worker failed the trial as stale and queued its retry.
    The next write then raises `UpdateFinishedTrialError`; the retry owns the trial now,
    so this worker drops it and goes on.
    """
    try:
        try:
            with heartbeat(study, trial):
                value = objective(trial)
        except optuna.TrialPruned:
            return study.tell(trial, state=TrialState.PRUNED)
        except TrialFailed as e:
            log.warning("%s", e)
            return study.tell(trial, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            raise
        except Terminated as e:
            _fail_and_requeue(study, trial, e)
            raise
        except BaseException as e:
            _fail_quietly(study, trial, e)
            raise
        return study.tell(trial, value)
    except optuna.exceptions.UpdateFinishedTrialError:
        log.warning(
            "trial %d was ended by another process (failed as stale while this worker was "
            "cut off?); its retry carries on",
            trial.number,
        )
        return study._storage.get_trial(trial._trial_id)


def _fail_quietly(study: optuna.Study, trial: optuna.Trial, error: BaseException) -> None:
    try:
        trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}"[:500])
        study.tell(trial, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # already failed as stale by another worker


def _fail_and_requeue(study: optuna.Study, trial: optuna.Trial, error: Terminated) -> None:
    try:
        trial.set_user_attr("fail_reason", f"{error}"[:500])
        failed = study.tell(trial, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return  # failed as stale by another worker, which queued the retry
    # The retry is the heartbeat retry, queued now instead of after the grace period: it
    # inherits params, user attributes and reported epochs, and the chain's first number
    # that keys the checkpoints. Without a retry limit: a preempted trial did nothing
    # wrong, however often its machine is taken away.
    failed = copy.deepcopy(failed)
    failed.user_attrs = {k: v for k, v in failed.user_attrs.items() if k != "fail_reason"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        requeue = optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=None, inherit_intermediate_values=True
        )
    requeue(study, failed)
    log.warning("trial %d stopped by SIGTERM; queued again to resume", trial.number)


def run_worker(
    study: optuna.Study,
    objective,
    *,
    deadline: float | None = None,
    max_trials: int | None = None,
    on_trial_end: Callable[[FrozenTrial], None] | None = None,
    stop: threading.Event | None = None,
    wait_for_running: bool = True,
) -> int:
    """Claim and run trials until the queue is empty, `deadline` passes (a time.time()
    value), `max_trials` have run here, or `stop` is set. Returns the trials run here.

    With `wait_for_running` and heartbeats on, an empty queue while other trials are
    RUNNING means waiting, checking for dead ones every heartbeat interval, until they
    end: a dead one is failed and its retry claimed here.
    """
    done = 0
    interval = heartbeat_interval(study)
    while max_trials is None or done < max_trials:
        if stop is not None and stop.is_set():
            break
        if deadline is not None and time.time() >= deadline:
            break
        fail_stale(study)
        trial = claim_trial(study)
        if trial is None:
            if wait_for_running and interval and running_trials(study):
                if stop is not None:
                    stop.wait(interval)
                else:
                    time.sleep(interval)
                continue
            break
        frozen = run_trial(study, objective, trial)
        done += 1
        if on_trial_end is not None:
            on_trial_end(frozen)
    return done
