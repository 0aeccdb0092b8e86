"""Exact trial counts: `--trials N` runs N, dead trials are failed with a reason and
retried once, and a retried trial is counted once, by how its retry ended."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pytest
from autosearch.search.cli import app
from autosearch.search.tuning.budget import reserve_trials
from autosearch.search.tuning.outcomes import count_outcomes
from autosearch.search.tuning.session import Placement, StartRequest, start
from autosearch.search.tuning.worker import claim_trial, fail_stale, run_worker
from autosearch.storage.optuna_storage import make_storage
from optuna.trial import TrialState
from typer.testing import CliRunner

from tests.conftest import TINY_SPACE

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


def study_on(tmp_path: Path, **kwargs) -> optuna.Study:
    storage = make_storage(str(tmp_path / "b.db"), **kwargs)
    return optuna.create_study(storage=storage, direction="maximize")


def test_trials_n_runs_exactly_n_after_an_interrupted_run(tmp_path: Path) -> None:
    study = study_on(tmp_path)
    reserve_trials(study, 6)
    assert run_worker(study, objective, max_trials=2) == 2  # then Ctrl-C: 4 slots left
    reserve_trials(study, 2)
    assert run_worker(study, objective) == 2
    counts = count_outcomes(study)
    assert counts["complete"] == 4 and counts["parked"] == 2 and counts["waiting"] == 0
    # A later run takes the parked slots back first, then adds what it lacks.
    assert reserve_trials(study, 3) == 1
    from autosearch.search.tuning.budget import queued_trials

    assert len(queued_trials(study)) == 3
    assert run_worker(study, objective) == 3 and count_outcomes(study)["parked"] == 0
    assert len(study.trials) == 7  # 6 slots, 1 added: 7 trials run in all


def test_the_cli_runs_exactly_the_trials_asked(tmp_path: Path, cifar_dir: Path) -> None:
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    url = f"sqlite:///{tmp_path / 's.db'}"
    where = Placement(device="cpu", data_dir=str(cifar_dir), checkpoint_dir=str(tmp_path / "ck"))
    request = StartRequest(
        study="tiny", storage=url, space_file=str(space), trials=6, subset=100, val_size=20,
        sampler="random", pruner="none", placement=where,
    )  # fmt: skip

    def ctrl_c_after_two(study: optuna.Study, _trial) -> None:
        if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 2:
            raise KeyboardInterrupt

    assert start(request, on_trial_end=ctrl_c_after_two).interrupted
    args = ["start", "--study", "tiny", "--space", str(space), "--trials", "2"]
    args += ["--subset", "100", "--val-size", "20", "--device", "cpu", "--storage", url]
    args += ["--data-dir", str(cifar_dir), "--checkpoint-dir", str(tmp_path / "ck")]
    args += ["--sampler", "random", "--pruner", "none"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    complete = optuna.load_study(study_name="tiny", storage=url).get_trials(
        states=(TrialState.COMPLETE,)
    )
    assert len(complete) == 4  # 2 before the Ctrl-C, then exactly the 2 asked for
    status = runner.invoke(app, ["status", "--study", "tiny", "--storage", url])
    assert "complete 4" in status.output and "parked 2" in status.output


def test_a_dead_trial_carries_its_reason_and_counts_once(tmp_path: Path) -> None:
    study = study_on(tmp_path, heartbeat_interval=1, grace_period=2)
    reserve_trials(study, 2)
    dead = claim_trial(study)  # its worker dies at once: no beat after the claim's
    dead.set_user_attr("worker", "host:4242")
    time.sleep(3.1)
    assert fail_stale(study) == 1
    assert fail_stale(study) == 0  # already failed: no second retry
    failed = study.trials[dead.number]
    assert failed.state == TrialState.FAIL
    assert "no heartbeat for over 2 s" in failed.user_attrs["fail_reason"]
    assert "host:4242" in failed.user_attrs["fail_reason"]
    assert run_worker(study, objective) == 2  # the other slot and the retry
    retry = study.trials[-1]
    assert (
        retry.system_attrs["failed_trial"] == dead.number and "fail_reason" not in retry.user_attrs
    )
    counts = count_outcomes(study)
    assert counts["complete"] == 2 and counts["failed"] == 0 and counts["retried"] == 1


def test_a_trial_that_never_beat_does_not_hang_the_workers(tmp_path: Path) -> None:
    study = study_on(tmp_path, heartbeat_interval=1, grace_period=2)
    with pytest.warns(UserWarning):  # ask() on a heartbeat storage: Optuna's own warning
        silent = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
    # A worker died between the claim and its first beat: RUNNING, no heartbeat at all.
    finished = []
    worker = threading.Thread(
        target=lambda: finished.append(run_worker(study, objective)), daemon=True
    )
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the worker waits for ever on a trial that never beat"
    assert finished == [1]  # it failed the silent trial after grace, then ran its retry
    dead, retry = study.trials
    assert dead.number == silent.number and dead.state == TrialState.FAIL
    assert "no heartbeat" in dead.user_attrs["fail_reason"]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
