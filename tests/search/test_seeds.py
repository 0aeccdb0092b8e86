"""Seeds are trials of the space: enqueued only when their parameters rebuild them."""

from __future__ import annotations

import logging

import optuna
from autosearch.search.space import (
    SPACES,
    load_space,
    sample,
    seed_config,
    seed_params,
    with_epochs,
)
from autosearch.search.training.recipe import get_recipe
from autosearch.search.tuning.budget import reserve_trials
from autosearch.search.tuning.objective import Objective, RunConfig
from autosearch.search.tuning.study import make_sampler, open_study
from autosearch.search.tuning.worker import run_worker

from tests.conftest import tiny_data

LIMIT = 5_000_000


def rebuilt(params, space, limit=LIMIT):
    s = sample(optuna.trial.FixedTrial(params), space, max_params=limit)
    return s.arch, s.recipe


def test_every_zigzag_seed_is_a_trial_of_the_space_and_rebuilds_exactly():
    for space in (SPACES["zigzag"], with_epochs(SPACES["zigzag"], 3)):
        found, left_out = seed_params(space, max_params=LIMIT)
        assert left_out == []
        assert sorted(found) == [0, 1, 2]
        for i, params in found.items():
            arch, recipe = seed_config(space, i)
            assert rebuilt(params, space) == (arch, recipe)
            assert recipe.epochs == space.recipe.epochs[0]
    # the seed report's recipe, as its parameters record it
    params = seed_params(SPACES["zigzag"], max_params=LIMIT)[0][0]
    assert (params["optimizer"], params["batch_size"], params["schedule"]) == (
        "nesterov",
        32,
        "plateau",
    )
    assert rebuilt(params, SPACES["zigzag"])[1].lr == get_recipe("seed").lr == 0.01
    assert params["tta"] is False and params["aug_crop"] == "zero"


def test_a_seed_the_space_cannot_represent_is_left_out_with_its_reason(tmp_path):
    found, left_out = seed_params(SPACES["zigzag"], max_params=400_000)
    assert found == {} and len(left_out) == 3
    assert "seed 0 (zigzag with recipe seed)" in left_out[0]
    assert "4,891,338 parameters exceed the budget of 400,000" in left_out[0]

    path = tmp_path / "big-batches.toml"
    path.write_text('extends = "zigzag"\n[recipe]\nbatch_sizes = [256, 512]\n')
    found, left_out = seed_params(load_space(str(path)), max_params=LIMIT)
    assert sorted(found) == [1, 2]
    assert len(left_out) == 1 and "seed 0" in left_out[0] and "batch_size=32" in left_out[0]

    path.write_text('extends = "zigzag"\n[arch]\nwidths = [16, 128]\n')
    found, left_out = seed_params(load_space(str(path)), max_params=LIMIT)
    assert found == {} and all(
        "not a multiple of 8 within arch.widths [16, 128]" in x for x in left_out
    )


def test_opening_a_study_names_each_seed_left_out(caplog):
    with caplog.at_level(logging.WARNING, logger="autosearch"):
        study = open_study(
            "small", optuna.storages.InMemoryStorage(), SPACES["zigzag"], max_params=400_000
        )
    assert study.trials == []
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == ["seed 0", "seed 1", "seed 2"]
    assert all("exceed the budget of 400,000" in line for line in lines)


def test_a_zigzag_study_records_and_trains_its_seeds_as_they_are():
    space = with_epochs(SPACES["zigzag"], 1)
    study = open_study(
        "z",
        optuna.storages.InMemoryStorage(),
        space,
        sampler=make_sampler("random", 0),
        max_params=LIMIT,
    )
    config = RunConfig(space=space, device="cpu", checkpoint_dir=None)
    reserve_trials(study, 3)
    assert run_worker(study, Objective(config, data=tiny_data())) == 3
    for i, trial in enumerate(study.trials):
        arch, recipe = seed_config(space, i)
        assert trial.user_attrs["seed_config"] == i
        assert trial.user_attrs["stopped"] == "finished"
        # recorded parameters, stored configuration and the rebuild all say the seed
        assert rebuilt(trial.params, space) == (arch, recipe)
        assert trial.user_attrs["recipe"] == recipe.to_dict()
        assert trial.user_attrs["arch"]["stages"] == arch.to_dict()["stages"]
        assert trial.user_attrs["widths"] == list(arch.widths)
    first = study.trials[0]
    assert (first.params["batch_size"], first.params["optimizer"]) == (32, "nesterov")
    assert first.params["schedule"] == "plateau"
    assert first.user_attrs["recipe"]["batch_size"] == 32
    assert first.user_attrs["recipe"]["schedule"] == "plateau"
    assert [t.params["batch_size"] for t in study.trials[1:]] == [512, 512]
