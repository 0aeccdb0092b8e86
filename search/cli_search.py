"""`autosearch start`, `studies`, `status` and `best`."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import optuna
import typer
from rich.table import Table

from models import DEFAULT_MAX_PARAMS, ArchSpec
from search.cli import app, console, fail
from search.launcher import LaunchError, Slot, parse_gpus, plan_slots, visible_gpus
from search.objective import Objective, RunConfig
from search.space import (
    SPACES,
    SearchSpace,
    SpaceError,
    get_space,
    load_space,
    space_from_stored,
    with_epochs,
)
from search.study import (
    PRUNERS,
    SAMPLERS,
    SPACE_ATTR,
    RunSettings,
    StudyError,
    count_outcomes,
    make_pruner,
    make_sampler,
    open_study,
    sampler_seed,
    store_run_settings,
    top_trials,
    trial_summary,
)
from search.trainer import resolve_device
from search.worker import reserve_trials, run_worker
from storage.optuna_storage import StorageError, make_storage
from storage.urls import StorageURLError, mask_url, resolve_url

StudyOpt = Annotated[str, typer.Option("--study", help="Study name.")]
StorageOpt = Annotated[
    str | None,
    typer.Option(help="SQLAlchemy URL (default: $AUTOSEARCH_STORAGE or ./autosearch.db)."),
]
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
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")]
DataDirOpt = Annotated[str | None, typer.Option(help="CIFAR-10 folder or archive.")]
CheckpointOpt = Annotated[
    str, typer.Option(help="Per-epoch checkpoints; share it between machines to resume there.")
]


def open_storage(url: str | None, **kwargs) -> optuna.storages.RDBStorage:
    try:
        return make_storage(url, **kwargs)
    except (StorageError, StorageURLError, ValueError) as e:
        fail(str(e))


def load_existing(name: str, storage) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        fail(f"no study named {name!r} in this storage; studies: {', '.join(names) or 'none'}")


def choose_space(
    study_name: str, preset: str | None, space_file: str | None, storage
) -> SearchSpace:
    """--space FILE, else --preset, else the study's name as a preset, else the stored one."""
    try:
        if space_file is not None:
            return load_space(space_file)
        if preset is not None:
            return get_space(preset)
        if study_name in SPACES:
            return SPACES[study_name]
    except SpaceError as e:
        fail(str(e))
    if study_name in optuna.get_all_study_names(storage):
        stored = optuna.load_study(study_name=study_name, storage=storage).user_attrs
        if SPACE_ATTR in stored:
            return space_from_stored(stored[SPACE_ATTR])
    fail(
        f"study {study_name!r} is new and not a preset name: pass --preset "
        f"({', '.join(SPACES)}) or --space FILE"
    )


def short_arch(arch: dict | None) -> str:
    if not arch:
        return "-"
    spec = ArchSpec.from_dict(arch)
    return "-".join(str(w) for w in spec.widths) + " x " + ",".join(map(str, spec.repeats))


class Progress:
    """One line per finished trial: outcome, counts, best so far and elapsed time."""

    def __init__(self, study: optuna.Study):
        self.study = study
        self.started = time.time()

    def __call__(self, trial: optuna.trial.FrozenTrial) -> None:
        s = trial_summary(trial)
        counts = count_outcomes(self.study)
        top = top_trials(self.study, 1)
        best = (
            f"best {top[0].value:.4f} (#{top[0].number}, {top[0].user_attrs['params'] / 1e6:.2f}M)"
            if top
            else "best -"
        )
        acc = f"{trial.value:.4f}" if s["state"] == "complete" else "-"
        params = f"{s['params'] / 1e6:.2f}M" if s["params"] else "-"
        elapsed = time.strftime("%H:%M:%S", time.gmtime(time.time() - self.started))
        done = sum(counts[k] for k in ("complete", "pruned", "infeasible", "failed"))
        console.print(
            f"trial {trial.number:>4} {s['state']:<10} val {acc:<6} {params:>6} "
            f"{short_arch(s['arch']):<32} | done {done} pruned {counts['pruned']} "
            f"infeasible {counts['infeasible']} failed {counts['failed']} "
            f"| {best} | {elapsed}",
            highlight=False,
            soft_wrap=True,
        )


def print_best(study: optuna.Study) -> None:
    top = top_trials(study, 1)
    if not top:
        console.print("no complete trial yet")
        return
    s = trial_summary(top[0])
    spec = ArchSpec.from_dict(s["arch"])
    r = s["recipe"]
    console.print(f"[bold]best trial #{s['number']}[/]: val acc {s['value']:.4f}", highlight=False)
    console.print(f"  arch    {spec.describe()}", highlight=False)
    console.print(f"  params  {s['params']:,}   FLOPs {s['flops'] / 1e6:,.1f} M", highlight=False)
    console.print(
        f"  recipe  {r['optimizer']} lr {r['lr']:.4g} mom {r['momentum']:.3g} "
        f"wd {r['weight_decay']:.2g} batch {r['batch_size']} {r['schedule']} "
        f"{r['epochs']} epochs, ls {r['label_smoothing']:.2f}, "
        f"aug {'+'.join(a['name'] for a in r['augment']) or 'none'}",
        highlight=False,
    )


@app.command()
def start(
    study: StudyOpt,
    preset: Annotated[str | None, typer.Option(help="Space preset if not the study name.")] = None,
    space: Annotated[str | None, typer.Option("--space", help="TOML search space file.")] = None,
    trials: Annotated[int, typer.Option(help="Trials to run in this call.", min=0)] = 20,
    timeout: Annotated[float | None, typer.Option(help="Stop starting trials after SEC.")] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs per trial (pins the space).", min=1)
    ] = None,
    subset: Annotated[int | None, typer.Option(help="Stratified training subset size.")] = None,
    val_size: Annotated[int, typer.Option(help="Validation images (of 50,000).", min=0)] = 10_000,
    device: DeviceOpt = "auto",
    data_dir: DataDirOpt = None,
    storage: StorageOpt = None,
    seed: Annotated[int, typer.Option(help="Sampler and training seed.")] = 0,
    sampler: Annotated[str, typer.Option(help="|".join(SAMPLERS))] = "tpe",
    pruner: Annotated[str, typer.Option(help="|".join(PRUNERS))] = "median",
    max_params: Annotated[int, typer.Option(help="Parameter budget.", min=1)] = DEFAULT_MAX_PARAMS,
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
) -> None:
    """Create or resume a study and run its trials: in this process, or in worker
    processes with --workers N (CPU) or --gpus G --workers-per-gpu K."""
    url = resolve_url_or_fail(storage)
    rdb = open_storage(url, heartbeat_interval=heartbeat, grace_period=grace)
    chosen = with_epochs(choose_space(study, preset, space, rdb), epochs)
    launching = gpus is not None or workers > 1
    if gpus is not None and workers > 1:
        fail("give --gpus (with --workers-per-gpu) or --workers (CPU workers), not both")
    try:
        settings = RunSettings(
            sampler=sampler,
            pruner=pruner,
            seed=seed,
            subset=subset,
            val_size=val_size,
            heartbeat_interval=heartbeat,
            grace_period=grace,
            deadline=time.time() + timeout if timeout else None,
        )
        max_epochs = chosen.recipe.epochs[1]
        the_study = open_study(
            study,
            rdb,
            chosen,
            sampler=make_sampler(sampler, seed),
            pruner=make_pruner(pruner, max_epochs),
            max_params=max_params,
        )
    except StudyError as e:
        fail(str(e))
    the_study.sampler = make_sampler(
        sampler, sampler_seed(seed, finished=len(the_study.get_trials(deepcopy=False)))
    )
    if enqueue_only:
        store_run_settings(the_study, settings)
        reserve_trials(the_study, trials)
        console.print(
            f"study [bold]{study}[/] on {mask_url(url)}: {trials} trial(s) queued for workers",
            highlight=False,
            soft_wrap=True,
        )
        return
    if launching:
        from search.cli_worker import launch_workers

        slots = plan_or_fail(gpus, workers_per_gpu, workers)
        if gpus is None:
            try:
                resolve_device(device)  # a bad --device fails here, not in every worker
            except ValueError as e:
                fail(str(e))
        store_run_settings(the_study, settings)
        reserve_trials(the_study, trials)
        local = local_worker_args(study, device, data_dir, checkpoint_dir)
        launch_workers(the_study, url, slots, local, Path(log_dir) / study, max_restarts)
        return
    store_run_settings(the_study, settings)
    config = RunConfig(
        space=chosen,
        max_params=max_params,
        device=device,
        data_dir=data_dir,
        subset=subset,
        val_size=val_size,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
    )
    objective = Objective(config)
    try:
        objective.device  # noqa: B018 - resolve now so a bad --device fails before trials
    except ValueError as e:
        fail(str(e))
    reserve_trials(the_study, trials)
    console.print(
        f"study [bold]{study}[/] space {chosen.name} ({chosen.fingerprint()}) on "
        f"{mask_url(url)}, device {objective.device}, {trials} trial(s)",
        highlight=False,
        soft_wrap=True,
    )
    work_here(the_study, objective, settings.deadline)
    print_best(the_study)


def _interrupt_on_sigterm() -> None:
    # `kill`, `docker stop` and the launcher's fallback send SIGTERM: treat it as Ctrl-C,
    # so the running trial is marked failed instead of being left RUNNING until its
    # heartbeat grace runs out.
    def handler(_signum, _frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def work_here(study: optuna.Study, objective: Objective, deadline: float | None) -> None:
    """Run trials in this process until the study's queue is empty or `deadline`."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _interrupt_on_sigterm()
    try:
        run_worker(study, objective, deadline=deadline, on_trial_end=Progress(study))
    except KeyboardInterrupt:
        console.print("interrupted: the running trial was marked failed", highlight=False)
        print_best(study)
        raise typer.Exit(130) from None
    except Exception as e:  # data not found and the like: one line, no traceback
        fail(f"{type(e).__name__}: {e}")


def plan_or_fail(gpus: str | None, per_gpu: str, workers: int) -> list[Slot]:
    try:
        chosen = parse_gpus(gpus, visible_gpus()) if gpus is not None else None
        return plan_slots(chosen, per_gpu, workers)
    except LaunchError as e:
        fail(str(e))


def local_worker_args(
    study: str, device: str, data_dir: str | None, checkpoint_dir: str
) -> list[str]:
    """The flags of `autosearch worker` that are this machine's business."""
    args = ["--study", study, "--device", device, "--checkpoint-dir", checkpoint_dir]
    if data_dir is not None:
        args += ["--data-dir", data_dir]
    return args


def resolve_url_or_fail(url: str | None) -> str:
    try:
        return resolve_url(url)
    except StorageURLError as e:
        fail(str(e))


@app.command()
def studies(storage: StorageOpt = None) -> None:
    """List the studies in a storage."""
    rdb = open_storage(storage, heartbeat_interval=None, max_retry=None)
    table = Table("study", "space", "trials", "best val acc")
    for name in sorted(optuna.get_all_study_names(rdb)):
        s = optuna.load_study(study_name=name, storage=rdb)
        top = top_trials(s, 1)
        space = s.user_attrs.get(SPACE_ATTR, {}).get("name", "-")
        table.add_row(name, space, str(len(s.trials)), f"{top[0].value:.4f}" if top else "-")
    console.print(table)


@app.command()
def status(study: StudyOpt, storage: StorageOpt = None) -> None:
    """Count a study's trials by state and show the top 5."""
    rdb = open_storage(storage, heartbeat_interval=None, max_retry=None)
    s = load_existing(study, rdb)
    counts = count_outcomes(s)
    console.print(
        "  ".join(
            f"{k} {counts[k]}"
            for k in ("complete", "pruned", "infeasible", "failed", "running", "waiting")
        ),
        highlight=False,
    )
    table = Table("#", "val acc", "params", "epochs", "arch (widths x repeats)", "optimizer")
    for t in top_trials(s, 5):
        a = t.user_attrs
        table.add_row(
            str(t.number),
            f"{t.value:.4f}",
            f"{a['params']:,}",
            str(a.get("epochs_run", "-")),
            short_arch(a.get("arch")),
            a.get("recipe", {}).get("optimizer", "-"),
        )
    console.print(table)


@app.command()
def best(
    study: StudyOpt,
    storage: StorageOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print the best trial's architecture, recipe, accuracy and parameter count."""
    rdb = open_storage(storage, heartbeat_interval=None, max_retry=None)
    s = load_existing(study, rdb)
    top = top_trials(s, 1)
    if not top:
        fail(f"study {study!r} has no complete trial yet", code=1)
    if as_json:
        print(json.dumps(trial_summary(top[0])))
    else:
        print_best(s)


# Register `autosearch worker`.
from search import cli_worker  # noqa: E402,F401
