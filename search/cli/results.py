"""`autosearch dashboard`, `report`, `export` and `evaluate`: look at and use results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from autosearch.models import DEFAULT_MAX_PARAMS
from autosearch.search.cli.app import (
    DataDirOpt,
    DeviceOpt,
    JsonOpt,
    MaxParamsOpt,
    StorageOpt,
    StudyOpt,
    app,
    check_name,
    console,
    err_console,
    fail,
    storage_errors,
)

DASHBOARD_HINT = "pip install 'autosearch[dashboard]'"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _read_only(url: str | None, study: str | None = None):
    """(url, storage, study): reading results needs no heartbeats, must never retry
    somebody's trial, and never creates a storage (a mistyped path is an error)."""
    from autosearch.search.tuning.running import open_storage
    from autosearch.search.tuning.study import StudyError, load_existing

    if study is not None:
        check_name(study)
    try:
        resolved, rdb = open_storage(url, heartbeat_interval=None, max_retry=None, create=False)
        return resolved, rdb, load_existing(study, rdb) if study is not None else None
    except StudyError as e:
        fail(str(e))


@app.command()
@storage_errors
def dashboard(
    storage: StorageOpt = None,
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8080,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 opens it up.")] = "127.0.0.1",
) -> None:
    """Serve optuna-dashboard on the study storage, read-only (localhost by default).

    The storage URL comes from --storage or $AUTOSEARCH_STORAGE: set the variable to
    keep a password off the command line. Every write the dashboard tries (deleting or
    renaming a study, notes, telling a trial) is refused.
    """
    try:
        import optuna_dashboard
    except ImportError:
        fail(f"optuna-dashboard is not installed; install it with: {DASHBOARD_HINT}")
    from autosearch.storage.readonly import ReadOnlyStorage
    from autosearch.storage.urls import mask_url

    url, rdb, _ = _read_only(storage)
    if host not in LOCAL_HOSTS:
        err_console.print(
            f"warning: binding {host}; anyone who reaches this machine can read the studies",
            highlight=False,
        )
    console.print(
        f"optuna-dashboard for {mask_url(url)} on http://{host}:{port}/dashboard (Ctrl-C to stop)",
        highlight=False,
        soft_wrap=True,
    )
    try:
        optuna_dashboard.run_server(ReadOnlyStorage(rdb), host=host, port=port)
    except OSError as e:
        fail(f"cannot serve on {host}:{port}: {e.strerror or e}")
    except KeyboardInterrupt:
        pass


@app.command()
@storage_errors
def report(
    study: StudyOpt,
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("report.html"),
    storage: StorageOpt = None,
    top: Annotated[int, typer.Option(help="Trials in the top table.", min=1)] = 10,
) -> None:
    """Write one self-contained HTML report of a study (opens with no network)."""
    from autosearch.search.results.report import write_report

    _, _, s = _read_only(storage, study)
    try:
        path = write_report(s, out, top=top)
    except OSError as e:
        fail(f"cannot write {out}: {e.strerror or e}")
    size = path.stat().st_size / 1e6
    console.print(f"wrote {path} ({size:.1f} MB, {len(s.trials)} trials)", highlight=False)


# export's options that need more than a line
_VAL_SIZE_HELP = (
    "Validation images held out (default 0: train on all 50,000; 10,000 for plateau "
    "schedules, which step on validation loss)."
)
_RETRAIN_HELP = (
    "Retrain on the full training set; --no-retrain writes the trial's kept final weights "
    "as they are (the best trials keep theirs)."
)
EpochsOpt = Annotated[int | None, typer.Option(help="Epochs instead of the trial's.", min=1)]
SeedsOpt = Annotated[int, typer.Option(help="Training runs; the first is saved.", min=1)]
ValSizeOpt = Annotated[int | None, typer.Option(help=_VAL_SIZE_HELP, min=0)]
HereDataOpt = Annotated[
    str | None,
    typer.Option("--data", help="Where the study's data is here (default: the study's)."),
]
RetrainOpt = Annotated[bool, typer.Option(help=_RETRAIN_HELP)]


@app.command()
@storage_errors
def export(
    study: StudyOpt,
    out: Annotated[Path, typer.Option(help="Export folder.")],
    storage: StorageOpt = None,
    trial: Annotated[int | None, typer.Option(help="Trial number (default: the best).")] = None,
    epochs: EpochsOpt = None,
    seeds: SeedsOpt = 1,
    val_size: ValSizeOpt = None,
    subset: Annotated[int | None, typer.Option(help="Stratified training subset size.")] = None,
    seed: Annotated[int, typer.Option(help="Split seed; run i trains with seed + i.")] = 0,
    data: HereDataOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    force: Annotated[bool, typer.Option(help="Replace an existing export.")] = False,
    retrain: RetrainOpt = True,
    checkpoint_dir: Annotated[
        str, typer.Option(help="Where the study's checkpoints are (--no-retrain).")
    ] = "checkpoints",
) -> None:
    """Retrain the best trial on the full training set, test once and save it; or,
    with --no-retrain, save the weights the search trained."""
    from autosearch.search.results.export import export_trial
    from autosearch.search.results.exported import ExportError
    from autosearch.search.results.searched import export_searched
    from autosearch.search.training.sources import DataNotFoundError
    from autosearch.search.tuning.study import MAX_PARAMS_ATTR

    _, _, s = _read_only(storage, study)
    source, split = _study_data(s, data, data_dir)
    chosen = _chosen_trial(s, study, trial)
    console.print(
        f"exporting trial {chosen.number} of {study} (search val acc {chosen.value}) to {out}",
        highlight=False,
    )
    budget = int(s.user_attrs.get(MAX_PARAMS_ATTR, 5_000_000))
    common = {"max_params": budget, "data": source, "identity": split.source, "device": device}
    try:
        if retrain:
            info = export_trial(
                chosen, out, study_name=study, subset=subset, val_size=val_size, seed=seed,
                epochs=epochs, seeds=seeds, overwrite=force, on_epoch=_epoch_printer(seed),
                **common,
            )  # fmt: skip
        else:
            info = export_searched(
                s, chosen, out, checkpoint_dir=checkpoint_dir, subset=split.subset,
                val_size=split.val_size, seed=split.split_seed, overwrite=force, **common,
            )  # fmt: skip
    except (ExportError, ValueError, FileNotFoundError, DataNotFoundError) as e:
        fail(str(e))
    console.print(f"{_exported_line(info, retrain, seeds, seed)} -> {out}", highlight=False)


def _exported_line(info: dict, retrained: bool, seeds: int, seed: int) -> str:
    """The scores of an export, as `export` prints them."""
    if not retrained:
        return (
            f"test acc {info['test_acc']:.4f}, val acc {info['val_acc']:.4f} (searched "
            f"weights, not retrained), {info['params']:,} params"
        )
    line = f"test acc {info['test_acc']:.4f}"
    if seeds > 1:
        line += f" (saved seed {seed}; mean {info['test_acc_mean']:.4f} "
        line += f"+/- {info['test_acc_std']:.4f} over {seeds} seeds)"
    if info["val_acc"] is not None:
        line += f", val acc {info['val_acc']:.4f}"
    return f"{line}, {info['params']:,} params"


def _study_data(s, data: str | None, data_dir: str | None):
    """Where the study's data is on this machine, and the study's data settings; that
    the data is the study's is checked once it is read."""
    from autosearch.search.tuning import checks
    from autosearch.search.tuning.requests import Placement
    from autosearch.search.tuning.settings import (
        DataSettings,
        RunSettings,
        StudyError,
        stored_data_settings,
        stored_run_settings,
    )

    settings = stored_run_settings(s.user_attrs) or RunSettings()
    split = stored_data_settings(s.user_attrs) or DataSettings()
    try:
        source = checks.settings_source(settings, split, Placement(data=data, data_dir=data_dir))
    except StudyError as e:
        fail(str(e))
    return source, split


def _chosen_trial(s, study: str, trial: int | None):
    """Trial `trial` of the study, or its best complete trial within the budget."""
    from autosearch.search.tuning.outcomes import top_trials

    if trial is None:
        top = top_trials(s, 1)
        if not top:
            fail(f"study {study!r} has no complete trial within its budget to export", code=1)
        return top[0]
    numbers = {t.number: t for t in s.get_trials(deepcopy=False)}
    if trial not in numbers:
        fail(f"study {study!r} has no trial {trial}; trials are 0 to {len(numbers) - 1}")
    return numbers[trial]


def _epoch_printer(seed: int):
    """A line per epoch of each retraining run (run i trains with seed + i)."""

    def show(i: int, r) -> None:
        val = "" if r.val_acc != r.val_acc else f"  val acc {r.val_acc:.4f}"  # NaN: no val
        console.print(
            f"seed {seed + i} epoch {r.epoch:>3}  train loss {r.train_loss:.4f} "
            f"acc {r.train_acc:.4f}{val}  {r.images_per_s:,.0f} img/s",
            highlight=False,
        )

    return show


@app.command("evaluate")
def evaluate_command(
    folder: Annotated[Path, typer.Argument(help="Export folder.")],
    data: Annotated[
        str | None,
        typer.Option("--data", help="Where the export's data is here (default: as recorded)."),
    ] = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    max_params: MaxParamsOpt = DEFAULT_MAX_PARAMS,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild an exported model, check it and measure its test accuracy again.

    The architecture must be within --max-params (this command's budget, not the one
    model.json claims). Exits 1 when the accuracy differs from the recorded one.
    """
    from autosearch.search.results.exported import ExportError, evaluate_export

    try:
        result = evaluate_export(
            folder, data=data, data_dir=data_dir, device=device, max_params=max_params
        )
    except (ExportError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    if as_json:
        print(json.dumps(result))
    else:
        verdict = "reproduced" if result["match"] else "DIFFERS from"
        console.print(
            f"test acc {result['test_acc']:.4f} on {result['test_images']:,} images, "
            f"{verdict} the recorded {result['recorded_test_acc']:.4f} "
            f"({result['params']:,} params, {result['device']}; exported on "
            f"{result['recorded_device']})",
            highlight=False,
        )
    if not result["match"]:
        raise typer.Exit(1)
