"""`autosearch studies`, `status`, `best` and `delete`: a storage's studies."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from autosearch.search.cli.app import (
    JsonOpt,
    StorageOpt,
    StudyOpt,
    app,
    check_name,
    console,
    fail,
    storage_errors,
)
from rich.table import Table


def _open(storage: str | None, study: str | None = None):
    """The storage for reading (no heartbeats, no retries of anybody's trial; a missing
    SQLite file is an error, not a new file) and the study."""
    from autosearch.search.tuning.running import open_storage
    from autosearch.search.tuning.study import StudyError, load_existing

    if study is not None:
        check_name(study)
    try:
        _, rdb = open_storage(storage, heartbeat_interval=None, max_retry=None, create=False)
        return rdb, load_existing(study, rdb) if study is not None else None
    except StudyError as e:
        fail(str(e))


@app.command()
@storage_errors
def studies(storage: StorageOpt = None, as_json: JsonOpt = False) -> None:
    """List the studies in a storage."""
    import optuna
    from autosearch.search.tuning.outcomes import top_trials
    from autosearch.search.tuning.study import SPACE_ATTR

    rdb, _ = _open(storage)
    rows = []
    for name in sorted(optuna.get_all_study_names(rdb)):
        s = optuna.load_study(study_name=name, storage=rdb)
        top = top_trials(s, 1)
        rows.append(
            {
                "study": name,
                "space": s.user_attrs.get(SPACE_ATTR, {}).get("name"),
                "trials": len(s.trials),
                "best_val_acc": top[0].value if top else None,
            }
        )
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("study", "space", "trials", "best val acc")
    for r in rows:
        best = "-" if r["best_val_acc"] is None else f"{r['best_val_acc']:.4f}"
        table.add_row(r["study"], r["space"] or "-", str(r["trials"]), best)
    console.print(table)


STATES = ("complete", "pruned", "infeasible", "failed", "running", "waiting")


@app.command()
@storage_errors
def status(study: StudyOpt, storage: StorageOpt = None, as_json: JsonOpt = False) -> None:
    """Count a study's trials by state and show the top 5."""
    from autosearch.search.cli.views import short_arch
    from autosearch.search.tuning.outcomes import count_outcomes, top_trials, trial_summary

    _, s = _open(storage, study)
    counts = count_outcomes(s)
    # Dead trials queued again are counted by their retry; parked ones wait for a later run.
    shown = [*STATES, *(k for k in ("retried", "parked") if counts[k])]
    if as_json:
        top = [trial_summary(t) for t in top_trials(s, 5)]
        print(json.dumps({"study": study, "counts": {k: counts[k] for k in shown}, "top": top}))
        return
    console.print("  ".join(f"{k} {counts[k]}" for k in shown), highlight=False)
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
@storage_errors
def best(study: StudyOpt, storage: StorageOpt = None, as_json: JsonOpt = False) -> None:
    """Print the best trial's architecture, recipe, accuracy and parameter count."""
    from autosearch.search.cli.views import print_best
    from autosearch.search.tuning.outcomes import top_trials, trial_summary

    _, s = _open(storage, study)
    top = top_trials(s, 1)
    if not top:
        fail(f"study {study!r} has no complete trial yet", code=1)
    if as_json:
        print(json.dumps(trial_summary(top[0])))
    else:
        print_best(s)


@app.command()
@storage_errors
def delete(
    study: StudyOpt,
    storage: StorageOpt = None,
    checkpoint_dir: Annotated[
        str, typer.Option(help="Where the study's checkpoints are (removed too).")
    ] = "checkpoints",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask first.")] = False,
) -> None:
    """Delete a study, its trials and its checkpoints, after asking."""
    from autosearch.search.tuning.study import StudyError, delete_study

    _, s = _open(storage, study)
    if not yes:
        typer.confirm(
            f"delete study {study!r} with its {len(s.trials)} trial(s) and its checkpoints?",
            abort=True,
        )
    try:
        removed = delete_study(study, s._storage, checkpoint_dir)
    except StudyError as e:
        fail(str(e))
    where = f" and {removed}" if removed is not None else ""
    console.print(f"deleted study {study}{where}", highlight=False, markup=False)
