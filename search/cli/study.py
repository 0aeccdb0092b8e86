"""`autosearch start` and `autosearch worker`: run a study's trials."""

from __future__ import annotations

import logging
import time
from typing import Annotated

import typer
from autosearch.models import DEFAULT_MAX_PARAMS
from autosearch.search.cli.app import (
    EXIT_RUNTIME,
    DataDirOpt,
    DataOpt,
    DeviceOpt,
    ImageSizeOpt,
    MaxParamsOpt,
    StorageOpt,
    StudyOpt,
    app,
    console,
    fail,
    say,
)
from autosearch.search.tuning.settings import PRUNERS, SAMPLERS

# Options that place workers on this machine; `start` and `worker` share them.
GpusOpt = Annotated[
    str | None, typer.Option(help="Launch workers on these GPUs: all, or indices like 0,1,3.")
]
PerGpuOpt = Annotated[
    str, typer.Option(help="Worker processes per GPU: a number, or auto (see README).")
]
WorkersOpt = Annotated[int, typer.Option(help="CPU worker processes (without --gpus).", min=1)]
RestartsOpt = Annotated[
    int, typer.Option(help="Restarts of a crashed worker before it is given up.", min=0)
]
LogDirOpt = Annotated[str, typer.Option(help="Folder of the launched workers' logs.")]
CheckpointOpt = Annotated[
    str, typer.Option(help="Per-epoch checkpoints; share it between machines to resume there.")
]
TRACK_HELP = (
    "Log each trial to mlflow:URI (e.g. mlflow:file:./mlruns) or tensorboard:DIR; repeatable."
)


def _quiet_logs(worker: bool) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if worker:
        # Resume messages and skipped checkpoints belong in a worker's log.
        logging.getLogger("autosearch").setLevel(logging.INFO)


def _report(outcome) -> None:
    """Print how a session ended and exit with its code."""
    from autosearch.search.cli.views import print_best

    if outcome.mode == "queued":
        return
    if outcome.mode == "launched":
        say(f"workers done: {outcome.crashes} crash(es), {outcome.restarts} restart(s)")
    elif outcome.interrupted:
        say("interrupted: the running trial was marked failed")
    print_best(outcome.study)
    if outcome.interrupted:
        raise typer.Exit(130)
    if outcome.left and not outcome.timed_out:
        fail(
            f"{outcome.left} trial(s) of the budget were not run; see the worker logs in "
            f"{outcome.log_dir}",
            1,
        )
    if outcome.given_up:
        names = ", ".join(s.label for s in outcome.given_up)
        fail(f"{names} gave up; see the worker logs in {outcome.log_dir}", 1)


def _run(call, request, *, worker: bool, trials: int | None = None, timeout: float | None = None):
    """Run a session, saying what it does; a refusal exits 2 (a launcher gives such a
    worker up), a failure while running exits 4 (a launcher restarts it), both with one
    line."""
    from autosearch.search.cli.views import TrialLines
    from autosearch.search.space import SpaceError
    from autosearch.search.tuning.study import StudyError
    from autosearch.storage.retries import PermanentStorageError

    _quiet_logs(worker)
    deadline = time.time() + timeout if timeout else None
    lines = TrialLines(trials=trials, deadline=deadline)
    try:
        return call(request, say=say, console=console, on_trial_end=lines, on_epoch=lines.on_epoch)
    except (StudyError, SpaceError, PermanentStorageError) as e:
        fail(str(e))
    except Exception as e:  # the data went away, the database stayed down, a bug
        fail(f"{type(e).__name__}: {e}", EXIT_RUNTIME)
    finally:
        lines.close()


@app.command()
def start(
    study: StudyOpt,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Space preset. Default: the study's name if a preset, else a resumed "
            "study's own space, else zigzag."
        ),
    ] = None,
    space: Annotated[str | None, typer.Option("--space", help="TOML search space file.")] = None,
    trials: Annotated[int, typer.Option(help="Trials to run in this call.", min=0)] = 20,
    timeout: Annotated[
        float | None, typer.Option(help="Start no trial after SEC seconds (> 0; none if left out).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs per trial (pins the space).", min=1)
    ] = None,
    subset: Annotated[int | None, typer.Option(help="Stratified training subset size.")] = None,
    val_size: Annotated[
        int | None,
        typer.Option(help="Validation images (default: a fifth, 10,000 of CIFAR's).", min=0),
    ] = None,
    device: DeviceOpt = "auto",
    data: DataOpt = None,
    image_size: ImageSizeOpt = None,
    data_dir: DataDirOpt = None,
    storage: StorageOpt = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Sampler seed (and a new study's split seed). Default: from the OS; a "
            "resumed study keeps its split seed."
        ),
    ] = None,
    sampler: Annotated[str, typer.Option(help="|".join(SAMPLERS))] = "tpe",
    pruner: Annotated[str, typer.Option(help="|".join(PRUNERS))] = "median",
    max_params: MaxParamsOpt = DEFAULT_MAX_PARAMS,
    checkpoint_dir: CheckpointOpt = "checkpoints",
    heartbeat: Annotated[int, typer.Option(help="Heartbeat interval, s.", min=1)] = 30,
    grace: Annotated[
        int, typer.Option(help="Seconds without heartbeat before a trial is dead.")
    ] = 120,
    gpus: GpusOpt = None,
    workers_per_gpu: PerGpuOpt = "1",
    workers: WorkersOpt = 1,
    max_restarts: RestartsOpt = 3,
    log_dir: LogDirOpt = "logs",
    enqueue_only: Annotated[
        bool,
        typer.Option(help="Only create the study and queue the trials, for `autosearch worker`s."),
    ] = False,
    track: Annotated[
        list[str] | None, typer.Option(help=TRACK_HELP + " Stored: the study's workers log too.")
    ] = None,
) -> None:
    """Create or resume a study and run its trials: in this process, or in worker
    processes with --workers N (CPU) or --gpus G --workers-per-gpu K."""
    from autosearch.search.tuning import session
    from autosearch.storage.urls import mask_url

    request = session.StartRequest(
        study=study,
        storage=storage,
        preset=preset,
        space_file=space,
        trials=trials,
        timeout=timeout,
        epochs=epochs,
        max_params=max_params,
        sampler=sampler,
        pruner=pruner,
        seed=seed,
        subset=subset,
        val_size=val_size,
        image_size=image_size,
        heartbeat=heartbeat,
        grace=grace,
        enqueue_only=enqueue_only,
        track=tuple(track or ()),
        placement=session.Placement(
            gpus=gpus,
            workers_per_gpu=workers_per_gpu,
            workers=workers,
            device=device,
            data_dir=data_dir,
            data=data,
            checkpoint_dir=checkpoint_dir,
            max_restarts=max_restarts,
            log_dir=log_dir,
        ),
    )
    outcome = _run(session.start, request, worker=False, trials=trials, timeout=timeout)
    if outcome.mode == "queued":
        say(f"study {study} on {mask_url(outcome.url)}: {trials} trial(s) queued for workers")
    _report(outcome)


@app.command()
def worker(
    study: StudyOpt,
    storage: StorageOpt = None,
    gpus: GpusOpt = None,
    workers_per_gpu: PerGpuOpt = "1",
    workers: WorkersOpt = 1,
    device: DeviceOpt = "auto",
    data: Annotated[
        str | None,
        typer.Option("--data", help="Where this machine keeps the study's folder: or npz: data."),
    ] = None,
    data_dir: DataDirOpt = None,
    checkpoint_dir: CheckpointOpt = "checkpoints",
    worker_index: Annotated[
        int | None,
        typer.Option(
            help="This worker's number in logs. With --gpus or --workers: the first "
            "launched worker's (one range per machine)."
        ),
    ] = None,
    max_restarts: RestartsOpt = 3,
    log_dir: LogDirOpt = "logs",
    track: Annotated[
        list[str] | None,
        typer.Option(help=TRACK_HELP + " Default: as the study's `start` chose; none: off."),
    ] = None,
) -> None:
    """Join a study made by `autosearch start` and run its queued trials.

    The space, budget, sampler, pruner, data split and heartbeat come from the study;
    only where the data, GPUs and checkpoints are on this machine is given here.
    """
    from autosearch.search.tuning import session

    request = session.JoinRequest(
        study=study,
        storage=storage,
        worker_index=worker_index,
        placement=session.Placement(
            gpus=gpus,
            workers_per_gpu=workers_per_gpu,
            workers=workers,
            device=device,
            data_dir=data_dir,
            data=data,
            checkpoint_dir=checkpoint_dir,
            max_restarts=max_restarts,
            log_dir=log_dir,
            track=tuple(track) if track is not None else None,
        ),
    )
    _report(_run(session.join, request, worker=True))
