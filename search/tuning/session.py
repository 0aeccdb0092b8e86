"""What `autosearch start` and `autosearch worker` do, callable without the command line.

A session validates its request (`tuning.checks`: the study name, every number, the
space, the device, the data and the storage URL) before it opens or creates anything,
then opens the storage, creates or resumes the study (or joins one), queues the trial
budget and runs the trials: in this process, or in worker processes placed on this
machine's GPUs or CPU cores by the launcher (`tuning.running`). Nothing is printed
here: messages go to a `say` callback and the launcher's console, and every refusal is
a `StudyError` whose message names the bad value.

Example:
    >>> request = StartRequest(study="demo", trials=4)  # doctest: +SKIP
    >>> outcome = start(request)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from typing import NamedTuple

import optuna
from autosearch.search.space import SearchSpace, space_from_stored, with_epochs
from autosearch.search.training.datasets import SourceInfo, default_val_size
from autosearch.search.tuning import checks
from autosearch.search.tuning.budget import reserve_trials
from autosearch.search.tuning.objective import EpochListener, Objective, RunConfig
from autosearch.search.tuning.requests import JoinRequest, Outcome, Placement, StartRequest
from autosearch.search.tuning.running import (
    Say,
    TrialEnd,
    check_device,
    launch,
    open_storage,
    plan,
    run_here,
)
from autosearch.search.tuning.settings import (
    DEFAULT_SPLIT_SEED,
    DataSettings,
    RunSettings,
    load_data_settings,
    load_run_settings,
    store_run_settings,
    stored_data_settings,
    stored_run_settings,
)
from autosearch.search.tuning.study import (
    MAX_PARAMS_ATTR,
    SPACE_ATTR,
    choose_space,
    load_existing,
    make_pruner,
    make_sampler,
    open_study,
    study_uid,
)
from autosearch.search.tuning.tracking import Tracking, parse_tracks
from autosearch.search.tuning.worker import fail_stale, follow_launcher
from autosearch.storage.optuna_storage import close_storage
from autosearch.storage.urls import is_sqlite, mask_url
from rich.console import Console

__all__ = [
    "JoinRequest",
    "Outcome",
    "Placement",
    "StartRequest",
    "join",
    "open_for_start",
    "open_storage",
    "start",
]


# ------------------------------------------------------------------------------ start


class Opened(NamedTuple):
    """A study opened for `start`: created, or resumed with the same space and data."""

    url: str
    study: optuna.Study
    space: SearchSpace
    settings: RunSettings
    data: DataSettings
    notice: str | None  # a changed sampler or pruner, said before the trials run


def _asked_data(
    request: StartRequest, stored: DataSettings | None, info: SourceInfo
) -> DataSettings:
    # Without --seed a resumed study keeps its split seed; the sampler seeds from the OS.
    seed = request.seed
    if seed is None:
        seed = stored.split_seed if stored is not None else DEFAULT_SPLIT_SEED
    val_size = request.val_size
    if val_size is None:  # a fifth of the training images (10,000 of CIFAR's 50,000)
        val_size = default_val_size(info.train_images)
    return DataSettings(
        source=info.identity,
        image_size=info.image_size,
        subset=request.subset,
        val_size=val_size,
        split_seed=seed,
    )


def open_for_start(request: StartRequest) -> Opened:
    """Validate `request`, then create or resume its study; nothing is queued yet.

    A resume with another space, budget or data settings is refused before anything is
    written; one with another sampler or pruner is allowed, with a notice.
    """
    r = request
    given = checks.start_request(r)
    source, info = checks.start_data(r)
    url, rdb = open_storage(r.storage, heartbeat_interval=r.heartbeat, grace_period=r.grace)
    space = with_epochs(given or choose_space(r.study, None, None, rdb), r.epochs)
    previous = None
    stored_data = None
    if r.study in optuna.get_all_study_names(rdb):
        attrs = optuna.load_study(study_name=r.study, storage=rdb).user_attrs
        stored_data = stored_data_settings(attrs)
        previous = stored_run_settings(attrs)
    data = _asked_data(r, stored_data, info)
    study = open_study(
        r.study,
        rdb,
        space,
        sampler=make_sampler(r.sampler, r.seed),
        pruner=make_pruner(r.pruner, space.recipe.epochs[1]),
        max_params=r.max_params,
        data=data,
    )
    study_uid(study)  # a study made before identities existed gets one before any worker
    settings = RunSettings(
        sampler=r.sampler,
        pruner=r.pruner,
        seed=r.seed,
        heartbeat_interval=r.heartbeat,
        grace_period=r.grace,
        deadline=time.time() + r.timeout if r.timeout is not None else None,
        track=parse_tracks(r.track),
        data=source.spec,
    )
    return Opened(url, study, space, settings, data, settings.notice(previous))


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
    url, study, space, settings, data, notice = open_for_start(request)
    placement = request.placement
    if notice is not None:
        say(notice)
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
        _run_config(space, request.max_params, settings, data, placement),
        epoch_listeners=[*tracking.epoch_listeners, *filter(None, [on_epoch])],
    )
    check_device(objective)
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
    space: SearchSpace,
    max_params: int,
    settings: RunSettings,
    data: DataSettings,
    placement: Placement,
) -> RunConfig:
    return RunConfig(
        space=space,
        max_params=max_params,
        device=placement.device,
        data=checks.settings_source(settings, data, placement),
        subset=data.subset,
        val_size=data.val_size,
        seed=data.split_seed,
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
        data = load_data_settings(found)
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
    checks.joined_data(settings, data, placement)  # this machine's data is the study's
    if placement.launching:
        _tracking(settings, placement)  # a bad --track fails here, not in every worker
        # Launchers on several machines (a Slurm array) are told apart by the index they
        # are given: their workers' log names must not collide.
        slots = plan(placement, first_index=request.worker_index or 0)
        joined = optuna.load_study(study_name=request.study, storage=rdb)
        return launch(joined, url, slots, placement, say=say, console=console)

    # Each trial samples from its own stream (`tuning.samplers`): workers, whatever
    # their index, never share one.
    joined = optuna.load_study(
        study_name=request.study,
        storage=rdb,
        sampler=make_sampler(settings.sampler, settings.seed),
        pruner=make_pruner(settings.pruner, space.recipe.epochs[1]),
    )
    index = request.worker_index
    tracking = _tracking(settings, placement)
    objective = Objective(
        _run_config(space, max_params, settings, data, placement),
        epoch_listeners=[*tracking.epoch_listeners, *filter(None, [on_epoch])],
    )
    check_device(objective)
    if is_sqlite(url) and index is None:  # joined by hand, perhaps from another machine
        say("note: workers on other machines need PostgreSQL, not SQLite")
    say(
        f"worker {'-' if index is None else index} joins study {request.study} "
        f"on {mask_url(url)}, device {objective.device}"
    )
    return run_here(joined, url, objective, settings.deadline, tracking.chain(on_trial_end))
