from __future__ import annotations

import dataclasses
import math

import optuna
import pytest
import torch
from autosearch.search.space import SPACES
from autosearch.search.training.trainer import EpochReport, TrainResult
from autosearch.search.tuning.budget import reserve_trials
from autosearch.search.tuning.objective import Objective, RunConfig
from autosearch.search.tuning.outcomes import count_outcomes, top_trials
from autosearch.search.tuning.study import make_pruner, make_sampler, open_study
from autosearch.search.tuning.worker import Terminated, run_worker
from optuna.trial import TrialState

from tests.conftest import tiny_data

optuna.logging.set_verbosity(optuna.logging.WARNING)


class ScriptedTrainer:
    """Stands in for `search.trainer.train`: records each call and reports the
    validation accuracies it is given, honouring the callback's request to stop."""

    def __init__(self, curves=None, *, status="finished", raises=None):
        self.calls = []
        self.curves = list(curves or [])
        self.status = status
        self.raises = raises

    def __call__(self, model, data, recipe, *, device, seed, callback, on_checkpoint, resume):
        self.calls.append({"params": sum(p.numel() for p in model.parameters()), "recipe": recipe})
        if self.raises is not None:
            raise self.raises
        curve = self.curves.pop(0) if self.curves else [0.5] * recipe.epochs
        history, status = [], self.status
        for epoch, acc in enumerate(curve, start=1):
            history.append(EpochReport(epoch, 1.0, acc, 1.0, acc, 0.1, 0.01, 1000.0))
            if status == "diverged":
                break
            if callback(history[-1]):
                status = "stopped"
                break
        return TrainResult(
            history=history,
            status=status,
            message="loss is nan" if status == "diverged" else "",
            best_val_acc=max(r.val_acc for r in history),
            final_val_acc=history[-1].val_acc,
            epochs_run=len(history),
            wall_time=0.01,
            images_per_s=1000.0,
            device="cpu",
        )


def small_space(epochs=3):
    space = SPACES["zigzag"]
    return dataclasses.replace(
        space,
        arch=dataclasses.replace(space.arch, widths=(8, 32)),
        recipe=dataclasses.replace(space.recipe, epochs=(epochs, epochs)),
        seeds=(),
    )


def make_study(space, *, pruner="none", limit=5_000_000, seed=0):
    return open_study(
        "t",
        optuna.storages.InMemoryStorage(),
        space,
        sampler=make_sampler("random", seed),
        pruner=make_pruner(pruner, space.recipe.epochs[1]),
        max_params=limit,
    )


def test_infeasible_trials_never_reach_the_trainer_or_the_data(tmp_path):
    space = small_space()
    limit = 20_000  # many samples of 8-32 wide nets exceed this even 8 wide
    study = make_study(space, limit=limit)
    trainer = ScriptedTrainer()
    config = RunConfig(
        space=space,
        max_params=limit,
        device="cpu",
        data_dir=str(tmp_path / "no-data"),
        checkpoint_dir=None,
    )
    objective = Objective(config, trainer=trainer, data=None)
    objective._data = tiny_data()  # feasible trials train on this; infeasible must not
    loads = []
    original = objective.data
    objective.data = lambda: loads.append(1) or original()
    reserve_trials(study, 30)
    run_worker(study, objective)

    infeasible = [t for t in study.trials if t.user_attrs["stopped"] == "infeasible"]
    feasible = [t for t in study.trials if t.user_attrs["stopped"] != "infeasible"]
    assert infeasible and feasible
    assert all(t.user_attrs["params"] > limit for t in infeasible)
    assert all(t.constraints["params"] > 0 for t in infeasible)
    assert all(t.constraints["params"] <= 0 for t in feasible)
    assert len(trainer.calls) == len(feasible) == len(loads)
    assert all(call["params"] <= limit for call in trainer.calls)
    # Optuna's own tools show no score for them: pruned, without a value
    assert all(t.state == TrialState.PRUNED and t.value is None for t in infeasible)
    assert study.best_trial.user_attrs["params"] <= limit


def test_pruning_stops_a_poor_trial_against_finished_ones():
    space = small_space(epochs=4)
    study = make_study(space, pruner="median")
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    good = [0.6, 0.7, 0.8, 0.9]
    trainer = ScriptedTrainer([good, good, [0.1, 0.1, 0.1, 0.1]])
    config = RunConfig(space=space, device="cpu", checkpoint_dir=None)
    reserve_trials(study, 3)
    run_worker(study, Objective(config, trainer=trainer, data=tiny_data()))

    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.PRUNED]
    poor = study.trials[2]
    assert poor.user_attrs["stopped"] == "pruned"
    assert poor.user_attrs["epochs_run"] == 1
    assert poor.intermediate_values == {1: 0.1}
    assert study.trials[0].intermediate_values == dict(enumerate(good, start=1))


def test_the_study_median_pruner_keeps_a_warm_up_epoch_through_the_objective():
    space = small_space(epochs=4)
    study = make_study(space, pruner="median")  # the project's own pruner
    good = [0.6, 0.7, 0.8, 0.9]
    trainer = ScriptedTrainer([good] * 5 + [[0.1, 0.1, 0.1, 0.1]])
    config = RunConfig(space=space, device="cpu", checkpoint_dir=None)
    reserve_trials(study, 6)
    run_worker(study, Objective(config, trainer=trainer, data=tiny_data()))

    poor = study.trials[5]
    assert poor.state == optuna.trial.TrialState.PRUNED
    assert poor.intermediate_values == {1: 0.1, 2: 0.1}  # not pruned after epoch 1
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials[:5])


def test_the_real_trainer_stops_a_trial_the_median_pruner_prunes():
    space = small_space(epochs=3)
    study = make_study(space, pruner="median")  # the project's own pruner
    # Five finished trials of the same epoch budget that scored 1.0 at every epoch...
    for _ in range(5):
        study.add_trial(
            optuna.trial.create_trial(
                value=1.0,
                intermediate_values={1: 1.0, 2: 1.0, 3: 1.0},
                user_attrs={"recipe": {"epochs": 3}},
            )
        )
    # ...and one that cannot learn in 2 epochs at Adam's lr x 0.05 on 64 images.
    study.enqueue_trial({"optimizer": "adam", "lr_mult": space.recipe.lr_mult[0]})
    config = RunConfig(space=space, device="cpu", checkpoint_dir=None)
    run_worker(study, Objective(config, data=tiny_data()))

    poor = study.trials[5]
    assert poor.state == optuna.trial.TrialState.PRUNED
    assert poor.user_attrs["stopped"] == "pruned" and poor.user_attrs["epochs_run"] == 2
    assert sorted(poor.intermediate_values) == [1, 2]


def test_diverged_and_out_of_memory_trials_fail_and_the_study_goes_on():
    space = small_space(epochs=2)
    config = RunConfig(space=space, device="cpu", checkpoint_dir=None)
    for trainer, reason in (
        (ScriptedTrainer([[math.nan]], status="diverged"), "loss is nan"),
        (ScriptedTrainer(raises=torch.OutOfMemoryError("CUDA out of memory. Tried")), "memory"),
    ):
        study = make_study(space)
        reserve_trials(study, 2)
        assert run_worker(study, Objective(config, trainer=trainer, data=tiny_data())) == 2
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
        assert reason in study.trials[0].user_attrs["fail_reason"]


def test_ctrl_c_fails_the_running_trial_instead_of_leaving_it_running():
    space = small_space(epochs=2)
    study = make_study(space)
    config = RunConfig(space=space, device="cpu", checkpoint_dir=None)
    objective = Objective(
        config, trainer=ScriptedTrainer(raises=KeyboardInterrupt()), data=tiny_data()
    )
    reserve_trials(study, 3)
    with pytest.raises(KeyboardInterrupt):
        run_worker(study, objective)
    counts = count_outcomes(study)
    assert counts["failed"] == 1 and counts["running"] == 0 and counts["waiting"] == 2


def test_sigterm_fails_the_running_trial_and_queues_it_again():
    space = small_space(epochs=2)
    study = make_study(space)
    config = RunConfig(space=space, device="cpu", checkpoint_dir=None)
    objective = Objective(
        config, trainer=ScriptedTrainer(raises=Terminated("stopped by SIGTERM")), data=tiny_data()
    )
    reserve_trials(study, 3)
    with pytest.raises(KeyboardInterrupt):
        run_worker(study, objective)
    counts = count_outcomes(study)
    # the stopped attempt is counted once, under its retry
    assert counts["retried"] == 1 and counts["failed"] == 0
    assert counts["running"] == 0 and counts["waiting"] == 3
    stopped, retry = study.trials[0], study.trials[-1]
    assert "SIGTERM" in stopped.user_attrs["fail_reason"]
    assert retry.system_attrs["failed_trial"] == stopped.number
    assert retry.params == stopped.params
    assert "fail_reason" not in retry.user_attrs


# A retry inherits its first try's constraint, which the objective sets again.
@pytest.mark.filterwarnings("ignore:The constraint value is ignored")
def test_a_trial_stopped_by_sigterm_resumes_from_its_checkpoint(tmp_path):
    from autosearch.search.training.trainer import train

    def preempted_after_epoch_1(*args, callback, **kwargs):
        def report_then_stop(report):
            callback(report)
            if report.epoch == 1:
                raise Terminated("stopped by SIGTERM")

        return train(*args, callback=report_then_stop, **kwargs)

    space = small_space(epochs=3)
    study = make_study(space)
    config = RunConfig(space=space, device="cpu", checkpoint_dir=str(tmp_path / "ck"))
    reserve_trials(study, 1)
    with pytest.raises(KeyboardInterrupt):
        run_worker(study, Objective(config, trainer=preempted_after_epoch_1, data=tiny_data()))
    assert run_worker(study, Objective(config, data=tiny_data())) == 1
    stopped, retry = study.trials
    assert stopped.state == optuna.trial.TrialState.FAIL
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == stopped.params
    assert retry.user_attrs["resumed_from_epoch"] == 1
    assert retry.user_attrs["first_epoch"] == 2
    assert sorted(retry.intermediate_values) == [1, 2, 3]


def test_real_trainer_records_everything_on_the_trial(tmp_path):
    space = small_space(epochs=2)
    study = make_study(space)
    config = RunConfig(space=space, device="cpu", checkpoint_dir=str(tmp_path / "ck"))
    reserve_trials(study, 2)
    run_worker(study, Objective(config, data=tiny_data()))
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        attrs = t.user_attrs
        for key in (
            "arch",
            "recipe",
            "params",
            "flops",
            "epochs_run",
            "best_val_acc",
            "final_val_acc",
            "train_seconds",
            "images_per_s",
            "device",
            "stopped",
        ):
            assert key in attrs, key
        assert attrs["stopped"] == "finished" and attrs["epochs_run"] == 2
        assert t.value == attrs["final_val_acc"]
        assert sorted(t.intermediate_values) == [1, 2]
    # epoch checkpoints are gone; final weights are kept for the best trials
    finals = sorted((tmp_path / "ck").glob(f"t.{study.user_attrs['study_uid']}/*/final.pt"))
    assert len(finals) == 2
    assert top_trials(study, 1)[0].value == study.best_value
