"""The trial loop of one worker: claim a trial, run it with a heartbeat, tell the study.

Workers claim the study's WAITING trials (see `tuning.budget`). Trials that Optuna's
heartbeat retry re-queues are WAITING too, so a dead worker's trial is picked up by
whichever worker is free. A worker whose queue is empty while other trials still run
waits and checks for dead ones every heartbeat interval: a dead worker's trial comes
back as a retry only after its grace period, and someone must be there to take it.
"""

from __future__ import annotations

import copy
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from contextlib import contextmanager

import optuna
from autosearch.search.tuning.budget import PARKED_ATTR

# From outcomes, not objective: the worker loop itself needs no torch.
from autosearch.search.tuning.outcomes import FAILED, TrialFailed
from autosearch.storage.retries import reason
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


def _backend(study: optuna.Study):
    # Optuna wraps an RDBStorage in a cache; our own methods live on the storage itself.
    storage = study._storage
    return getattr(storage, "_backend", storage)


def _token() -> str:
    """Who does a claim or fails a trial: host, process and a fresh random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def claim_trial(study: optuna.Study) -> optuna.Trial | None:
    """Take one WAITING trial for this worker, or None when the queue is empty.

    Parked trials (kept for a later call; see `tuning.budget`) are left alone. The
    storage's compare-and-set on the trial state makes the claim atomic across
    processes and machines; our storage also writes the first heartbeat in the same
    transaction and makes the claim safe to repeat after a lost reply. On any other
    storage the first heartbeat follows at once.
    """
    storage = study._storage
    claim = getattr(_backend(study), "claim_trial", None)
    token = _token()
    waiting = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,))
    for frozen in waiting:
        if frozen.system_attrs.get(PARKED_ATTR):
            continue
        try:
            if claim is not None:
                taken = claim(frozen._trial_id, token)
            else:
                taken = storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING)
                if taken and heartbeat_interval(study):
                    storage.record_heartbeat(frozen._trial_id)
            if taken:
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
                # The database's own words, not Optuna's "invalid data" wrapper text.
                log.warning("heartbeat of trial %d failed: %s", trial.number, reason(e))
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale(study: optuna.Study) -> int:
    """Fail trials whose worker stopped beating, each with its reason; the storage's
    retry callback queues them again. Returns how many this call failed."""
    interval = heartbeat_interval(study)
    if not interval:
        return 0
    backend = _backend(study)
    if not hasattr(backend, "fail_stale_trial"):  # a plain Optuna storage: no reasons
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return 0
    grace = getattr(backend, "grace_period", None) or 2 * interval
    failed = 0
    for trial_id in study._storage._get_stale_trial_ids(study._study_id):
        who = study._storage.get_trial(trial_id).user_attrs.get("worker", "unknown")
        why = f"no heartbeat for over {grace} s: its worker ({who}) died, hung or lost the database"
        failed += fail_and_requeue(study, trial_id, why)
    return failed


def fail_and_requeue(study: optuna.Study, trial_id: int, why: str) -> bool:
    """Fail a RUNNING trial as dead with reason `why` and queue its retry (the storage's
    stale-trial callback), exactly once however many processes try at the same time.

    Returns False when the trial had already ended or another process failed it.
    """
    attrs = {"stopped": FAILED, "fail_reason": why[:500]}
    try:
        if not _backend(study).fail_stale_trial(trial_id, _token(), attrs):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    log.warning("trial %d failed: %s", study._storage.get_trial(trial_id).number, why)
    callback = study._storage.get_heartbeat_stale_trial_callback()
    if callback is not None:
        callback(study, copy.deepcopy(study._storage.get_trial(trial_id)))
    return True


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
        except LauncherGone:
            # Not the trial's fault: hand it back now, to resume from its checkpoint.
            _requeue_quietly(study, trial, "the launcher of its worker died")
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
        trial.set_user_attr("stopped", FAILED)
        trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}"[:500])
        study.tell(trial, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # already failed as stale by another worker
    except Exception as e:  # the database is gone too: the trial goes stale and is retried
        log.warning("could not mark trial %d failed: %s", trial.number, e)


def _requeue_quietly(study: optuna.Study, trial: optuna.Trial, why: str) -> None:
    try:
        if hasattr(_backend(study), "fail_stale_trial"):
            fail_and_requeue(study, trial._trial_id, why)
        else:
            _fail_quietly(study, trial, LauncherGone(why))
    except Exception as e:  # it goes stale after its grace period and is retried then
        log.warning("could not hand back trial %d: %s", trial.number, e)


# ------------------------------------------------------------- following a launcher

LAUNCHER_ENV = "AUTOSEARCH_LAUNCHER_PID"  # set by the launcher in each worker's environment
_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


class LauncherGone(BaseException):
    """The launcher that started this worker died. A BaseException, like Ctrl-C, so that
    no `except Exception` in training code swallows it."""


def _launcher_gone(_signum, _frame) -> None:
    # Once: the kernel and the watch thread may both send the signal, and a second
    # LauncherGone would cut short the handing back of the running trial.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    raise LauncherGone("the launcher died")


def follow_launcher() -> bool:
    """Make this worker process end when the launcher that started it dies, even by
    SIGKILL, so that a re-run never finds orphans still working beside its own workers.

    Active only in processes started by the launcher (`LAUNCHER_ENV` names its pid).
    On Linux the kernel sends SIGHUP when the parent dies (PR_SET_PDEATHSIG); a thread
    that checks the parent pid every second covers other systems and the moment before
    the request took effect. SIGHUP raises `LauncherGone` in the main thread: the
    running trial is failed with its reason and queued again at once, and the worker
    exits. Returns whether it is active.
    """
    parent = os.environ.get(LAUNCHER_ENV)
    if not parent or threading.current_thread() is not threading.main_thread():
        return False
    parent_pid = int(parent)
    signal.signal(signal.SIGHUP, _launcher_gone)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGHUP), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watch thread below still ends us within a second

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGHUP)

    threading.Thread(target=watch, name="follow-launcher", daemon=True).start()
    return True


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
