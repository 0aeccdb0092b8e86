"""`autosearch worker`: join a running study, here or from another machine, and the
launcher that `start` and `worker` share for several worker processes."""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Annotated

import optuna
import typer

from search.cli import app, console, fail
from search.cli_search import (
    CheckpointOpt,
    DataDirOpt,
    DeviceOpt,
    GpusOpt,
    LogDirOpt,
    PerGpuOpt,
    RestartsOpt,
    StorageOpt,
    StudyOpt,
    WorkersOpt,
    load_existing,
    local_worker_args,
    open_storage,
    plan_or_fail,
    print_best,
    resolve_url_or_fail,
    work_here,
)
from search.launcher import Launcher, Slot
from search.objective import Objective, RunConfig
from search.space import space_from_stored
from search.study import (
    MAX_PARAMS_ATTR,
    SPACE_ATTR,
    StudyError,
    load_run_settings,
    make_pruner,
    make_sampler,
    sampler_seed,
)
from storage.urls import is_sqlite, mask_url


def launch_workers(
    study: optuna.Study,
    url: str,
    slots: list[Slot],
    local_args: list[str],
    log_dir: Path,
    max_restarts: int,
) -> None:
    """Run `slots` as worker processes until the study's queue is done; exit non-zero
    when trials are left that the workers could not run."""
    where = ", ".join(sorted({s.gpu for s in slots if s.gpu is not None})) or "CPU"
    console.print(
        f"study [bold]{study.study_name}[/] on {mask_url(url)}: {len(slots)} worker(s) on "
        f"{where}; logs in {log_dir}",
        highlight=False,
        soft_wrap=True,
    )
    launcher = Launcher(
        study,
        slots,
        local_args,
        storage_url=url,
        log_dir=log_dir,
        max_restarts=max_restarts,
        poll_s=min(2.0, float(study._storage.get_heartbeat_interval() or 2.0)),
        console=console,
    )
    left = launcher.run()
    console.print(
        f"workers done: {launcher.crashes} crash(es), {launcher.restarts} restart(s)",
        highlight=False,
    )
    print_best(study)
    if launcher.stopping:
        raise typer.Exit(130)
    deadline = load_run_settings(study).deadline
    timed_out = deadline is not None and deadline <= time.time()
    if left and not timed_out:
        fail(f"{left} trial(s) of the budget were not run; see the worker logs in {log_dir}", 1)
    if launcher.given_up:
        names = ", ".join(s.label for s in launcher.given_up)
        fail(f"{names} gave up; see the worker logs in {log_dir}", 1)


@app.command()
def worker(
    study: StudyOpt,
    storage: StorageOpt = None,
    gpus: GpusOpt = None,
    workers_per_gpu: PerGpuOpt = "1",
    workers: WorkersOpt = 1,
    device: DeviceOpt = "auto",
    data_dir: DataDirOpt = None,
    checkpoint_dir: CheckpointOpt = "checkpoints",
    worker_index: Annotated[
        int | None,
        typer.Option(help="Sampler seed offset (study seed + index); default: a fresh seed."),
    ] = None,
    max_restarts: RestartsOpt = 3,
    log_dir: LogDirOpt = "logs",
) -> None:
    """Join a study made by `autosearch start` and run its queued trials.

    The space, budget, sampler, pruner, data split and heartbeat come from the study;
    only where the data, GPUs and checkpoints are on this machine is given here.
    """
    url = resolve_url_or_fail(storage)
    # A first look without heartbeats: the study says which heartbeat to use.
    probe = open_storage(url, heartbeat_interval=None, max_retry=None)
    try:
        found = load_existing(study, probe)
        settings = load_run_settings(found)
        space = space_from_stored(found.user_attrs[SPACE_ATTR])
        max_params = int(found.user_attrs[MAX_PARAMS_ATTR])
    except StudyError as e:
        fail(str(e))
    finally:
        probe.engine.dispose()
    rdb = open_storage(
        url, heartbeat_interval=settings.heartbeat_interval, grace_period=settings.grace_period
    )
    if gpus is not None or workers > 1:
        if gpus is not None and workers > 1:
            fail("give --gpus (with --workers-per-gpu) or --workers (CPU workers), not both")
        slots = plan_or_fail(gpus, workers_per_gpu, workers)
        joined = optuna.load_study(study_name=study, storage=rdb)
        local = local_worker_args(study, device, data_dir, checkpoint_dir)
        launch_workers(joined, url, slots, local, Path(log_dir) / study, max_restarts)
        return

    joined = optuna.load_study(
        study_name=study,
        storage=rdb,
        pruner=make_pruner(settings.pruner, space.recipe.epochs[1]),
    )
    # Workers started together see the same trial count: the index keeps them apart. A
    # worker joined by hand has no index and draws a random one, so that two of them
    # never share a seed.
    seed = sampler_seed(
        settings.seed,
        finished=len(joined.get_trials(deepcopy=False)),
        worker=1 + worker_index if worker_index is not None else secrets.randbits(31) + 1,
    )
    joined.sampler = make_sampler(settings.sampler, seed)
    objective = Objective(
        RunConfig(
            space=space,
            max_params=max_params,
            device=device,
            data_dir=data_dir,
            subset=settings.subset,
            val_size=settings.val_size,
            seed=settings.seed,
            checkpoint_dir=checkpoint_dir,
        )
    )
    try:
        objective.device  # noqa: B018 - a bad --device fails before any trial is claimed
    except ValueError as e:
        fail(str(e))
    if is_sqlite(url):
        console.print("note: workers on other machines need PostgreSQL, not SQLite")
    console.print(
        f"worker {'-' if worker_index is None else worker_index} joins study [bold]{study}[/] "
        f"on {mask_url(url)}, device {objective.device}",
        highlight=False,
        soft_wrap=True,
    )
    # Resume messages and skipped checkpoints belong in a worker's log.
    logging.getLogger("search").setLevel(logging.INFO)
    work_here(joined, objective, settings.deadline)
