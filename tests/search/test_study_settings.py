"""What a study is run with: sampler streams, stored data settings and the pruners.

Every test here uses the project's own `make_sampler`, `make_pruner` and study
functions on real Optuna storages.
"""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from autosearch.search.cli import app
from autosearch.search.space import SPACES, sample
from autosearch.search.training.recipe import TrainRecipe
from autosearch.search.tuning.budget import reserve_trials
from autosearch.search.tuning.settings import (
    RUN_ATTR,
    DataSettings,
    load_data_settings,
    load_run_settings,
    stored_data_settings,
)
from autosearch.search.tuning.study import make_pruner, make_sampler, open_study
from autosearch.search.tuning.worker import claim_trial
from autosearch.storage.optuna_storage import make_storage
from typer.testing import CliRunner

optuna.logging.set_verbosity(optuna.logging.WARNING)
runner = CliRunner()
SPACE = dataclasses.replace(SPACES["zigzag"], seeds=())  # no seed trials: every one sampled


# ----------------------------------------------------------------- sampler streams


def make_queue(tmp_path, trials: int) -> str:
    url = f"sqlite:///{tmp_path}/streams.db"
    study = open_study("s", make_storage(url), SPACE, sampler=make_sampler("tpe", 7))
    reserve_trials(study, trials)
    return url


def claim_and_draw(url: str, seed: int | None) -> dict:
    """What one worker process does: open the study with its own sampler, claim a
    trial, sample it. Two containers of one compose service make exactly this call."""
    study = optuna.load_study(
        study_name="s", storage=make_storage(url), sampler=make_sampler("tpe", seed)
    )
    trial = claim_trial(study)
    assert trial is not None
    sample(trial, SPACE, max_params=5_000_000)
    return trial.params


def test_two_workers_with_the_same_seed_and_index_draw_different_parameters(tmp_path):
    url = make_queue(tmp_path, 4)
    first = claim_and_draw(url, seed=7)
    second = claim_and_draw(url, seed=7)  # the same --seed, the same worker index
    assert first != second
    other = claim_and_draw(url, seed=8)  # another worker id: a seed of its own
    assert other not in (first, second)


def test_a_resumed_run_draws_new_parameters(tmp_path):
    url = make_queue(tmp_path, 2)
    earlier = [claim_and_draw(url, seed=7) for _ in range(2)]
    study = optuna.load_study(study_name="s", storage=make_storage(url))
    for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, 0.5)
    reserve_trials(study, 2)  # the same command run again: two more trials
    later = [claim_and_draw(url, seed=7) for _ in range(2)]
    assert all(p not in earlier for p in later)


def run_alone(tmp_path, name: str, seed: int | None) -> list[dict]:
    storage = make_storage(f"sqlite:///{tmp_path}/{name}.db")
    study = open_study("s", storage, SPACE, sampler=make_sampler("tpe", seed))
    drawn = []
    for value in (0.3, 0.6, 0.4):
        trial = study.ask()
        sample(trial, SPACE, max_params=5_000_000)
        study.tell(trial, value)
        drawn.append(trial.params)
    return drawn


def test_one_worker_with_a_seed_is_reproducible_and_without_one_is_not(tmp_path):
    assert run_alone(tmp_path, "a", 5) == run_alone(tmp_path, "b", 5)
    assert run_alone(tmp_path, "c", None) != run_alone(tmp_path, "d", None)


# ----------------------------------------------------------------- data settings


def enqueue(tmp_path, *extra):
    args = ["start", "--study", "mine", "--trials", "2", "--epochs", "1", "--enqueue-only"]
    args += ["--storage", f"sqlite:///{tmp_path}/d.db", "--subset", "200", "--val-size", "100"]
    return runner.invoke(app, [*args, *extra])


def snapshot(url: str) -> tuple:
    study = optuna.load_study(study_name="mine", storage=url)
    trials = [(t.number, t.state, t.params, t.user_attrs, t.system_attrs) for t in study.trials]
    return study.user_attrs, trials


def _draws(startup: int | None, n: int) -> list[dict]:
    """Parameters of `n` TPE trials, each told a score that rises with its lr."""
    kwargs = {} if startup is None else {"startup": startup}
    study = optuna.create_study(direction="maximize", sampler=make_sampler("tpe", 3, **kwargs))
    out = []
    for _ in range(n):
        trial = study.ask()
        sample(trial, SPACE, max_params=5_000_000)
        study.tell(trial, trial.params["lr_mult"])
        out.append(trial.params)
    return out


def test_tpe_models_the_results_after_its_start_up_trials():
    default, early = _draws(None, 6), _draws(3, 6)
    assert default[:3] == early[:3]  # the same random start-up draws
    assert default[3:] != early[3:]  # then one keeps drawing at random, the other models


def test_resuming_on_other_data_is_refused_naming_each_change_and_writes_nothing(tmp_path):
    url = f"sqlite:///{tmp_path}/d.db"
    assert enqueue(tmp_path).exit_code == 0
    before = snapshot(url)
    refused = enqueue(
        tmp_path, "--subset", "300", "--val-size", "50", "--seed", "3", "--max-params", "9"
    )
    assert refused.exit_code == 2, refused.output
    message = refused.stderr.strip()
    assert len(message.splitlines()) == 1
    changes = (
        "subset 200 -> 300",
        "val size 100 -> 50",
        "split seed 0 -> 3",
        "params 5000000 -> 9",
    )
    for change in changes:
        assert change in message
    assert "max params 5000000 -> 9" in message
    assert snapshot(url) == before

    # Without --seed the study keeps its split seed; a new sampler is only noted.
    again = enqueue(tmp_path, "--sampler", "random")
    assert again.exit_code == 0, again.output
    assert "sampler tpe -> random" in again.output
    resumed = optuna.load_study(study_name="mine", storage=url)
    assert load_run_settings(resumed).sampler == "random"
    assert load_data_settings(resumed) == DataSettings(subset=200, val_size=100)
    assert resumed.user_attrs["space"]["name"] == "zigzag"  # a free name, the default space


def test_data_settings_of_older_studies_and_every_changed_field():
    legacy = {RUN_ATTR: {"sampler": "tpe", "seed": 4, "subset": 500, "val_size": 50}}
    assert stored_data_settings(legacy) == DataSettings(subset=500, val_size=50, split_seed=4)
    assert stored_data_settings({}) is None
    assert DataSettings().changes(DataSettings()) == []
    changes = DataSettings().changes(DataSettings(source="cifar100", subset=1000))
    assert changes == ["source 'cifar10' -> 'cifar100'", "subset None -> 1000"]


# ------------------------------------------------------------------------- pruners


def finished(study: optuna.Study, budget: int, value: float) -> None:
    study.add_trial(
        optuna.trial.create_trial(
            value=value,
            intermediate_values={e: value for e in range(1, budget + 1)},
            user_attrs={"recipe": TrainRecipe(epochs=budget).to_dict()},
        )
    )


def prune_epoch(study: optuna.Study, budget: int, curve: list[float]) -> int | None:
    """Report `curve` epoch by epoch as a trial of `budget` epochs; the epoch it is
    pruned after, or None (it is then told complete)."""
    trial = study.ask()
    trial.set_user_attr("recipe", TrainRecipe(epochs=budget).to_dict())
    for epoch, value in enumerate(curve, start=1):
        trial.report(value, epoch)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return epoch
    study.tell(trial, curve[-1])
    return None


def test_median_waits_a_whole_epoch_and_compares_only_within_a_budget():
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", 8))
    for _ in range(5):
        finished(study, 8, 0.8)
    assert prune_epoch(study, 8, [0.1] * 8) == 2  # not after epoch 1: the warm-up
    # No 4-epoch trial has finished: the 8-epoch ones are no yardstick for it.
    assert prune_epoch(study, 4, [0.1] * 4) is None
    for _ in range(5):
        finished(study, 4, 0.8)
    assert prune_epoch(study, 4, [0.1] * 4) == 2
    # A trial that trained all its epochs is complete, however it compares.
    assert prune_epoch(study, 2, [0.9, 0.1]) is None
    for _ in range(5):
        finished(study, 2, 0.8)
    assert prune_epoch(study, 2, [0.1, 0.1]) is None


def test_quartile_prunes_only_the_lowest_quarter_at_an_epoch():
    study = optuna.create_study(direction="maximize", pruner=make_pruner("quartile", 4))
    for value in (0.2, 0.4, 0.5, 0.6, 0.8):
        finished(study, 4, value)
    # The lowest quarter of 0.2-0.8 lies under 0.4 (numpy's 25th percentile): a trial at
    # 0.35 is pruned, after the warm-up epoch; one at 0.45, under the median, is not.
    assert prune_epoch(study, 4, [0.35] * 4) == 2
    assert prune_epoch(study, 4, [0.45] * 4) is None
    median = optuna.create_study(direction="maximize", pruner=make_pruner("median", 4))
    for value in (0.2, 0.4, 0.5, 0.6, 0.8):
        finished(median, 4, value)
    assert prune_epoch(median, 4, [0.45] * 4) == 2


@pytest.mark.parametrize("name", ["sha", "hyperband"])
def test_halving_pruners_rung_after_the_warm_up_within_a_budget(name):
    study = optuna.create_study(direction="maximize", pruner=make_pruner(name, 9))
    for i in range(12):  # each better than the last: always promoted
        assert prune_epoch(study, 9, [0.5 + i / 100] * 9) is None
    pruned_at = prune_epoch(study, 9, [0.1] * 9)
    # Rungs sit at 2 and 6 epochs (after one warm-up epoch, 1 in 3 kept, up to 9).
    assert pruned_at in ((2,) if name == "sha" else (2, 6))
    # The first 5-epoch trial meets no 9-epoch one on its rungs.
    assert prune_epoch(study, 5, [0.1] * 5) is None
