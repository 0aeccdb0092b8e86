"""What `autosearch start` and `autosearch worker` do, callable without the command line.

A session validates its request (`tuning.checks`: the study name, every number, the
space, the device, the data and the storage URL) before it opens or creates anything,
then opens the storage, creates or resumes the study (or joins one), queues the trial
budget and runs the trials: in this process, or in worker processes placed on this
machine's GPUs or CPU cores by the launcher. Nothing is printed here: messages go to a
`say` callback and the launcher's console, and every refusal is a `StudyError` whose
message names the bad value.

Example:
    >>> request = StartRequest(study="demo", preset="zigzag", trials=4)  # doctest: +SKIP
    >>> outcome = start(request)  # doctest: +SKIP
"""

from __future__ import annotations

import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from autosearch.models import DEFAULT_MAX_PARAMS
from autosearch.search.space import (
    SearchSpace,
    space_from_stored,
    with_epochs,
)
from autosearch.search.training.datasets import default_val_size
from autosearch.search.tuning import checks
from autosearch.search.tuning.budget import reserve_trials
from autosearch.search.tuning.launcher import (
    Launcher,
    LaunchError,
    Slot,
    parse_gpus,
    plan_slots,
    visible_gpus,
)
from autosearch.search.tuning.objective import EpochListener, Objective, RunConfig
from autosearch.search.tuning.study import (
    MAX_PARAMS_ATTR,
    SPACE_ATTR,
    RunSettings,
    StudyError,
    choose_space,
    load_existing,
    load_run_settings,
    make_pruner,
    make_sampler,
    open_study,
    sampler_seed,
    store_run_settings,
    study_uid,
)
from autosearch.search.tuning.tracking import Tracking, parse_tracks
from autosearch.search.tuning.worker import (
    LauncherGone,
    Terminated,
    fail_stale,
    follow_launcher,
    run_worker,
)
from autosearch.storage.optuna_storage import PermanentStorageError, close_storage, make_storage
from autosearch.storage.urls import StorageURLError, is_sqlite, mask_url, resolve_url
from optuna.trial import FrozenTrial
from rich.console import Console

Say = Callable[[str], None]
TrialEnd = Callable[[optuna.Study, FrozenTrial], None]


@dataclass(frozen=True)
class Placement:
    """Where this machine runs trials: one process here, or launched worker processes.

    `gpus` ("all" or indices like "0,1") with `workers_per_gpu` (a number or "auto")
    launches GPU workers; `workers` > 1 launches CPU workers; otherwise the trials run
    in this process on `device`.
    """

    gpus: str | None = None
    workers_per_gpu: str = "1"
    workers: int = 1
    device: str = "auto"
    data_dir: str | None = None  # where CIFAR is (see training.sources)
    checkpoint_dir: str = "checkpoints"
    max_restarts: int = 3
    log_dir: str = "logs"
    track: tuple[str, ...] | None = None  # this machine's trackers; None: the study's
    data: str | None = None  # --data; None: CIFAR-10 for `start`, the study's for workers

    @property
    def launching(self) -> bool:
        return self.gpus is not None or self.workers > 1

    def worker_args(self, study: str) -> list[str]:
        """The flags of `autosearch worker` that are this machine's business."""
        args = ["--study", study, "--device", self.device, "--checkpoint-dir", self.checkpoint_dir]
        if self.data_dir is not None:
            args += ["--data-dir", self.data_dir]
        if self.data is not None:
            args += ["--data", self.data]
        if self.track is not None:
            args += [a for spec in self.track or ("none",) for a in ("--track", spec)]
        return args


@dataclass(frozen=True)
class StartRequest:
    """Everything `autosearch start` is asked to do.

    The space is `space_file` (TOML), else `preset`, else the study's own name as a
    preset, else the space stored on an existing study.
    """

    study: str
    storage: str | None = None
    preset: str | None = None
    space_file: str | None = None
    trials: int = 20
    timeout: float | None = None  # s after which no new trial starts
    epochs: int | None = None  # pins the space's epoch range
    max_params: int = DEFAULT_MAX_PARAMS
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    subset: int | None = None
    val_size: int | None = None  # None: a fifth of the training images (10,000 of CIFAR)
    image_size: int | None = None  # folder: images are resized to this side (32)
    heartbeat: int = 30
    grace: int = 120
    placement: Placement = field(default_factory=Placement)
    enqueue_only: bool = False
    track: tuple[str, ...] = ()  # "mlflow:URI", "tensorboard:DIR"; stored for the workers


@dataclass(frozen=True)
class JoinRequest:
    """Everything `autosearch worker` is asked to do; the rest comes from the study."""

    study: str
    storage: str | None = None
    # Set by the launcher; None draws a fresh seed. With a launching placement: the
    # first launched worker's index.
    worker_index: int | None = None
    placement: Placement = field(default_factory=Placement)


@dataclass
class Outcome:
    """How a session ended.

    `mode` is "queued" (only enqueued), "here" (ran in this process) or "launched".
    `left` counts trials still WAITING or RUNNING after launched workers stopped.
    """

    study: optuna.Study
    url: str
    mode: str
    trials_run: int = 0
    interrupted: bool = False
    left: int = 0
    timed_out: bool = False
    crashes: int = 0
    restarts: int = 0
    given_up: list[Slot] = field(default_factory=list)
    log_dir: Path | None = None


# --------------------------------------------------------------------------- opening


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


def _check_device(objective: Objective) -> None:
    try:
        objective.device  # noqa: B018 - resolve now so a bad --device fails before trials
    except ValueError as e:
        raise StudyError(str(e)) from None


# ------------------------------------------------------------------------------ start


def open_for_start(request: StartRequest) -> tuple[str, optuna.Study, SearchSpace, RunSettings]:
    """Validate `request`, then create or resume its study; nothing is queued yet."""
    r = request
    given = checks.start_request(r)
    source, data = checks.start_data(r)
    # Without a space of its own the study must exist already: open, never create.
    url, rdb = open_storage(
        r.storage, heartbeat_interval=r.heartbeat, grace_period=r.grace, create=given is not None
    )
    space = with_epochs(given or choose_space(r.study, None, None, rdb), r.epochs)
    settings = RunSettings(
        sampler=r.sampler,
        pruner=r.pruner,
        seed=r.seed,
        subset=r.subset,
        val_size=r.val_size if r.val_size is not None else default_val_size(data.train_images),
        heartbeat_interval=r.heartbeat,
        grace_period=r.grace,
        deadline=time.time() + r.timeout if r.timeout is not None else None,
        track=parse_tracks(r.track),
        data=source.spec,
        image_size=source.image_size,
        data_identity=data.identity,
    )
    study = open_study(
        r.study,
        rdb,
        space,
        sampler=make_sampler(r.sampler, r.seed),
        pruner=make_pruner(r.pruner, space.recipe.epochs[1]),
        max_params=r.max_params,
    )
    study_uid(study)  # a study made before identities existed gets one before any worker
    finished = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(r.sampler, sampler_seed(r.seed, finished=finished))
    return url, study, space, settings


def start(
    request: StartRequest,
    *,
    say: Say = lambda _text: None,
    console: Console | None = None,
    on_trial_end: TrialEnd | None = None,
    on_epoch: EpochListener | None = None,
) -> Outcome:
    """Create or resume a study and run `request.trials` trials of it.

    With `enqueue_only` the trials are only queued, for `autosearch worker`s. With a
    launching placement they run in worker processes on this machine; otherwise here,
    calling `on_epoch(trial, report)` after each epoch and `on_trial_end(study, trial)`
    after each trial.
    """
    url, study, space, settings = open_for_start(request)
    placement = request.placement
    if request.enqueue_only:
        store_run_settings(study, settings)
        _queue(study, request.trials)
        return Outcome(study, url, "queued")
    if placement.launching:
        slots = plan(placement)
        store_run_settings(study, settings)
        _queue(study, request.trials)
        return launch(study, url, slots, placement, say=say, console=console)
    tracking = _tracking(settings, placement)
    store_run_settings(study, settings)
    objective = Objective(
        _run_config(space, request.max_params, settings, placement),
        epoch_listeners=[*tracking.epoch_listeners, *filter(None, [on_epoch])],
    )
    _check_device(objective)
    _queue(study, request.trials)
    say(
        f"study {request.study} space {space.name} ({space.fingerprint()}) on "
        f"{mask_url(url)}, device {objective.device}, {request.trials} trial(s)"
    )
    return run_here(study, url, objective, settings.deadline, tracking.chain(on_trial_end))


def _tracking(settings: RunSettings, placement: Placement) -> Tracking:
    """This process's trackers: the machine's own choice, else the study's."""
    specs = placement.track if placement.track is not None else settings.track
    return Tracking(parse_tracks(specs))


def _queue(study: optuna.Study, trials: int) -> None:
    # Trials left RUNNING by a run that died are failed (and queued again) first, so
    # that their retries count toward this run's `trials`.
    fail_stale(study)
    reserve_trials(study, trials)


def _run_config(
    space: SearchSpace, max_params: int, settings: RunSettings, placement: Placement
) -> RunConfig:
    return RunConfig(
        space=space,
        max_params=max_params,
        device=placement.device,
        data=checks.settings_source(settings, placement),
        subset=settings.subset,
        val_size=settings.val_size,
        seed=settings.seed,
        checkpoint_dir=placement.checkpoint_dir,
    )


# ------------------------------------------------------------------------------- join


def join(
    request: JoinRequest,
    *,
    say: Say = lambda _text: None,
    console: Console | None = None,
    on_trial_end: TrialEnd | None = None,
    on_epoch: EpochListener | None = None,
) -> Outcome:
    """Join a study made by `start` and run its queued trials.

    The space, budget, sampler, pruner, data split and heartbeat come from the study;
    the request says only where the data, GPUs and checkpoints are on this machine.
    """
    url = checks.join_request(request)
    follow_launcher()  # a worker started by a launcher ends when the launcher dies
    # A first look without heartbeats: the study says which heartbeat to use.
    url, probe = open_storage(url, heartbeat_interval=None, max_retry=None, create=False)
    try:
        found = load_existing(request.study, probe)
        settings = load_run_settings(found)
        space = space_from_stored(found.user_attrs[SPACE_ATTR])
        max_params = int(found.user_attrs[MAX_PARAMS_ATTR])
    finally:
        close_storage(probe)
    _, rdb = open_storage(
        url,
        heartbeat_interval=settings.heartbeat_interval,
        grace_period=settings.grace_period,
        create=False,
    )
    placement = request.placement
    checks.joined_data(settings, placement)  # this machine's data is the study's
    if placement.launching:
        _tracking(settings, placement)  # a bad --track fails here, not in every worker
        # Launchers on several machines (a Slurm array) are told apart by the index they
        # are given: their workers' seeds and log names must not collide.
        slots = plan(placement, first_index=request.worker_index or 0)
        joined = optuna.load_study(study_name=request.study, storage=rdb)
        return launch(joined, url, slots, placement, say=say, console=console)

    joined = optuna.load_study(
        study_name=request.study,
        storage=rdb,
        pruner=make_pruner(settings.pruner, space.recipe.epochs[1]),
    )
    # Workers started together see the same trial count: the index keeps them apart. A
    # worker joined by hand has no index and draws a random one, so that two of them
    # never share a seed.
    index = request.worker_index
    seed = sampler_seed(
        settings.seed,
        finished=len(joined.get_trials(deepcopy=False)),
        worker=1 + index if index is not None else secrets.randbits(31) + 1,
    )
    joined.sampler = make_sampler(settings.sampler, seed)
    tracking = _tracking(settings, placement)
    objective = Objective(
        _run_config(space, max_params, settings, placement),
        epoch_listeners=[*tracking.epoch_listeners, *filter(None, [on_epoch])],
    )
    _check_device(objective)
    if is_sqlite(url) and index is None:  # joined by hand, perhaps from another machine
        say("note: workers on other machines need PostgreSQL, not SQLite")
    say(
        f"worker {'-' if index is None else index} joins study {request.study} "
        f"on {mask_url(url)}, device {objective.device}"
    )
    return run_here(joined, url, objective, settings.deadline, tracking.chain(on_trial_end))


# ---------------------------------------------------------------------------- running


def _interrupt_on_sigterm() -> None:
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
    _interrupt_on_sigterm()
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
