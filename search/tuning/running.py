"""Where a session's trials run: the storage it opens, then this process or worker
processes launched on this machine's GPUs or CPU cores. Imports no torch."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from autosearch.search.tuning.launcher import Launcher
from autosearch.search.tuning.requests import Outcome, Placement
from autosearch.search.tuning.settings import StudyError, load_run_settings
from autosearch.search.tuning.slots import LaunchError, Slot, parse_gpus, plan_slots, visible_gpus
from autosearch.search.tuning.worker import LauncherGone, Terminated, run_worker
from autosearch.storage.optuna_storage import PermanentStorageError, make_storage
from autosearch.storage.urls import StorageURLError, mask_url, resolve_url
from optuna.trial import FrozenTrial
from rich.console import Console

if TYPE_CHECKING:  # the objective imports torch, which reading commands do without
    from autosearch.search.tuning.objective import Objective

Say = Callable[[str], None]
TrialEnd = Callable[[optuna.Study, FrozenTrial], None]


def open_storage(url: str | None, **kwargs) -> tuple[str, optuna.storages.RDBStorage]:
    """The resolved URL and the storage it names; `kwargs` go to `make_storage` (pass
    ``create=False`` to read or join: a missing SQLite file is then refused, not made)."""
    try:
        resolved = resolve_url(url)
        return resolved, make_storage(resolved, **kwargs)
    except (PermanentStorageError, StorageURLError, ValueError) as e:
        raise StudyError(str(e)) from None
    # Any other StorageError (the server is down) is raised as it is: a runtime error,
    # for which a launcher restarts the worker.


def plan(placement: Placement, *, first_index: int = 0) -> list[Slot]:
    """The worker processes `placement` asks for, numbered from `first_index`, or a
    `StudyError`."""
    try:
        chosen = parse_gpus(placement.gpus, visible_gpus()) if placement.gpus is not None else None
        return plan_slots(
            chosen, placement.workers_per_gpu, placement.workers, first_index=first_index
        )
    except LaunchError as e:
        raise StudyError(str(e)) from None


def check_device(objective: Objective) -> None:
    try:
        objective.device  # noqa: B018 - resolve now so a bad --device fails before trials
    except ValueError as e:
        raise StudyError(str(e)) from None


def interrupt_on_sigterm() -> None:
    # `kill`, `docker stop`, a Slurm preemption and a Kubernetes eviction send SIGTERM:
    # the running trial is failed and queued again at once (see `Terminated`) instead of
    # being left RUNNING until its heartbeat grace runs out. Only the first one counts:
    # Slurm signals every process of a job, and the launcher passes its own on as well.
    def handler(_signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated("stopped by SIGTERM; queued again to resume from its checkpoint")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def run_here(
    study: optuna.Study,
    url: str,
    objective: Objective,
    deadline: float | None,
    on_trial_end: TrialEnd | None = None,
) -> Outcome:
    """Run trials in this process until the study's queue is empty or `deadline`.

    Ctrl-C or SIGTERM marks the running trial failed and ends with `interrupted`; after
    SIGTERM the trial is queued again, to resume from its checkpoint.
    """
    interrupt_on_sigterm()
    callback = (lambda t: on_trial_end(study, t)) if on_trial_end is not None else None
    try:
        done = run_worker(study, objective, deadline=deadline, on_trial_end=callback)
    except (KeyboardInterrupt, LauncherGone):
        return Outcome(study, url, "here", interrupted=True)
    return Outcome(study, url, "here", trials_run=done)


def launch(
    study: optuna.Study,
    url: str,
    slots: list[Slot],
    placement: Placement,
    *,
    say: Say = lambda _text: None,
    console: Console | None = None,
) -> Outcome:
    """Run `slots` as worker processes until the study's queue is done."""
    log_dir = Path(placement.log_dir) / study.study_name
    where = ", ".join(sorted({s.gpu for s in slots if s.gpu is not None})) or "CPU"
    say(
        f"study {study.study_name} on {mask_url(url)}: {len(slots)} worker(s) on {where}; "
        f"logs in {log_dir}"
    )
    launcher = Launcher(
        study,
        slots,
        placement.worker_args(study.study_name),
        storage_url=url,
        log_dir=log_dir,
        max_restarts=placement.max_restarts,
        poll_s=min(2.0, float(study._storage.get_heartbeat_interval() or 2.0)),
        console=console,
    )
    left = launcher.run()
    deadline = load_run_settings(study).deadline
    return Outcome(
        study,
        url,
        "launched",
        interrupted=launcher.stopping,
        left=left,
        timed_out=deadline is not None and deadline <= time.time(),
        crashes=launcher.crashes,
        restarts=launcher.restarts,
        given_up=list(launcher.given_up),
        log_dir=log_dir,
    )
