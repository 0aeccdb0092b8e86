"""Experiment tracking: a local MLflow file store and a TensorBoard folder, no network."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from autosearch.search.cli import app
from autosearch.search.training.trainer import EpochReport
from autosearch.search.tuning.session import Placement, _tracking
from autosearch.search.tuning.study import RunSettings, StudyError
from autosearch.search.tuning.tracking import Tracking, parse_tracks
from optuna.trial import TrialState
from typer.testing import CliRunner

from bench import reliability

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")
runner = CliRunner()
EPOCHS = 2


def _mlflow_runs(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([found.experiment_id], max_results=1000)


def _scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_a_study_leaves_one_mlflow_run_per_trial_with_its_epochs(
    cifar_dir: Path, tmp_path: Path
) -> None:
    """`start --enqueue-only --track ...` stores the choice; a `worker` follows it."""
    from mlflow.tracking import MlflowClient

    space = tmp_path / "tiny.toml"
    space.write_text(reliability.TINY_SPACE.format(epochs=EPOCHS))
    storage = f"sqlite:///{tmp_path}/s.db"
    uri = f"file:{tmp_path}/mlruns"
    tb = tmp_path / "tb"
    common = ["--study", "tiny", "--storage", storage]
    queued = runner.invoke(
        app,
        ["start", *common, "--space", str(space), "--trials", "3", "--enqueue-only"]
        + ["--subset", "200", "--val-size", "100", "--sampler", "random", "--pruner", "none"]
        + ["--track", f"mlflow:{uri}", "--track", f"tensorboard:{tb}"],
    )
    assert queued.exit_code == 0, queued.output
    ran = runner.invoke(
        app,
        ["worker", *common, "--device", "cpu", "--data-dir", str(cifar_dir)]
        + ["--checkpoint-dir", str(tmp_path / "ck")],
    )
    assert ran.exit_code == 0, ran.output
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3

    runs = _mlflow_runs(uri, "tiny")
    assert sorted(r.info.run_name for r in runs) == ["0", "1", "2"]
    client = MlflowClient(tracking_uri=uri)
    for trial in trials:
        run = next(r for r in runs if r.info.run_name == str(trial.number))
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]
        assert {m.step: m.value for m in history} == pytest.approx(trial.intermediate_values)
        assert run.data.metrics["value"] == pytest.approx(trial.value)
        assert run.data.params == {k: str(v) for k, v in trial.params.items()}
        assert run.data.tags["state"] == "COMPLETE" and run.data.tags["stopped"] == "finished"
        assert run.info.status == "FINISHED"
        assert trial.system_attrs["mlflow_run_id"] == run.info.run_id

        folder = tb / "tiny" / f"trial-{trial.number:05d}"
        epochs = _scalars(folder, "epoch/val_acc")
        assert [step for step, _ in epochs] == [1, 2]
        assert dict(epochs) == pytest.approx(trial.intermediate_values)
        assert _scalars(folder, "trial/value")[0][1] == pytest.approx(trial.value)


def test_a_trial_without_epochs_still_gets_its_run(tmp_path: Path) -> None:
    uri = f"file:{tmp_path}/mlruns"
    tracking = Tracking(parse_tracks([f"mlflow:{uri}"]))
    study = optuna.create_study(study_name="s", direction="maximize")
    infeasible = study.ask()
    infeasible.suggest_int("width", 8, 64)
    infeasible.set_user_attr("stopped", "infeasible")
    tracking.on_trial_end(study, study.tell(infeasible, 0.0))

    trained = study.ask()
    report = EpochReport(1, 2.0, 0.2, 2.1, 0.25, 0.1, 1.0, 100.0)
    tracking.on_epoch(trained, report)
    tracking.on_trial_end(study, study.tell(trained, state=TrialState.FAIL))

    runs = {r.info.run_name: r for r in _mlflow_runs(uri, "s")}
    assert set(runs) == {"0", "1"}
    assert runs["0"].data.tags["stopped"] == "infeasible"
    assert runs["0"].data.params == {"width": str(infeasible.params["width"])}
    assert runs["1"].data.tags["state"] == "FAIL" and runs["1"].info.status == "FAILED"
    assert runs["1"].data.metrics["val_acc"] == pytest.approx(0.25)


def test_choices_are_checked_and_made_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_tracks(["tensorboard:runs"]) == (f"tensorboard:{tmp_path / 'runs'}",)
    assert parse_tracks(["mlflow:file:./mlruns"]) == (f"mlflow:{(tmp_path / 'mlruns').as_uri()}",)
    assert parse_tracks(["mlflow:http://tracker:5000"]) == ("mlflow:http://tracker:5000",)
    assert parse_tracks(["none"]) == ()
    for bad in ("wandb:x", "mlflow", "tensorboard:"):
        with pytest.raises(StudyError, match=bad):
            parse_tracks([bad])
    # A worker's own --track replaces the study's; "none" turns tracking off there.
    settings = RunSettings(track=(f"tensorboard:{tmp_path}",))
    assert _tracking(settings, Placement()).specs == settings.track
    assert not _tracking(settings, Placement(track=()))
    assert RunSettings.from_dict(settings.to_dict()) == settings  # tuple after JSON
    # ...and reaches the workers a launcher starts on that machine.
    assert Placement(track=("tensorboard:/x",)).worker_args("s")[-2:] == [
        "--track",
        "tensorboard:/x",
    ]
    assert Placement(track=()).worker_args("s")[-2:] == ["--track", "none"]
    assert "--track" not in Placement().worker_args("s")


def test_a_bad_choice_fails_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/s.db"
    result = runner.invoke(
        app, ["start", "--study", "zigzag", "--storage", storage, "--track", "wandb:team"]
    )
    assert result.exit_code == 2
    assert "wandb:team" in result.output and "Traceback" not in result.output
    assert optuna.get_all_study_names(storage) == []
