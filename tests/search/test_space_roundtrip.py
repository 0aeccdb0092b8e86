"""What a trial records is what it trains: its parameters alone rebuild the exact
architecture and recipe, for every preset and for a TOML space."""

from __future__ import annotations

import math
import random

import optuna
import pytest
from autosearch.models import count_params
from autosearch.search.space import SPACES, load_space, sample, width_ladder

LIMIT = 5_000_000

TOML = """
name = "mine"
extends = "zigzag"
[arch]
stages = [2, 5]
widths = [24, 320]
kernels = [3, 5]
fill = [0.5, 0.9]
repeats = [1, 6]
[recipe]
optimizers = ["nesterov", "adamw", "rmsprop"]
schedules = ["plateau", "cosine_restarts", "cyclic", "step"]
augments = ["crop", "flip", "rotate", "affine", "erase", "cutout"]
ema = [0, 0.99]
tta = true
"""


class DrawingTrial:
    """Draws each parameter as the random sampler does (uniform, log-uniform where
    asked, ints on their step, any choice) and keeps the draws in `params`.

    A study's storage costs ~5 ms a trial; this lets the test draw thousands.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.params: dict = {}

    def suggest_float(self, name, low, high, *, log=False):
        if log:
            value = math.exp(self.rng.uniform(math.log(low), math.log(high)))
        else:
            value = self.rng.uniform(low, high)
        self.params[name] = min(max(value, low), high)
        return self.params[name]

    def suggest_int(self, name, low, high, *, step=1, log=False):
        self.params[name] = self.rng.choice(range(low, high + 1, step))
        return self.params[name]

    def suggest_categorical(self, name, choices):
        self.params[name] = self.rng.choice(choices)
        return self.params[name]


def spaces():
    return [pytest.param(space, id=name) for name, space in SPACES.items()]


def rebuild(params, space):
    return sample(optuna.trial.FixedTrial(params), space, max_params=LIMIT)


def shape_of(params, n):
    """The relative widths a trial recorded, as multiples of its scale."""
    if "width_growth" in params:
        return [params["width_growth"] ** i for i in range(n)]
    rel = [params[f"rel_width_{i}"] for i in range(n)]
    return [r / max(rel) for r in rel]


def check_round_trips(space, n):
    over = 0
    floor = width_ladder(space.arch.widths)[0]
    for seed in range(n):
        trial = DrawingTrial(seed)
        drawn = sample(trial, space, max_params=LIMIT)
        again = rebuild(dict(trial.params), space)
        assert again.arch == drawn.arch, trial.params
        assert again.recipe == drawn.recipe, trial.params
        assert again.scale == drawn.scale
        count = count_params(drawn.arch)
        over += count > LIMIT
        if space.arch.fixed is not None:
            continue
        # The recorded shape is the trained one: each width is its share of the scale,
        # to the nearest multiple of 8 (or the range's floor), and the net stays in its
        # share of the budget unless even the smallest scale is over it.
        shape = shape_of(trial.params, len(drawn.arch.stages))
        for w, r in zip(drawn.arch.widths, shape, strict=True):
            assert w % 8 == 0 and (abs(w - drawn.scale * r) <= 4 or w == floor)
        assert count <= trial.params["fill"] * LIMIT or drawn.scale == floor
    return over / n


@pytest.mark.parametrize("space", spaces())
def test_params_alone_rebuild_a_thousand_samples_of_each_preset(space):
    share = check_round_trips(space, 1000)
    assert share < 0.5  # most draws fit the budget


def test_params_alone_rebuild_a_thousand_samples_of_a_toml_space(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(TOML)
    space = load_space(str(path))
    assert space.seeds == SPACES["zigzag"].seeds
    check_round_trips(space, 1000)


@pytest.mark.parametrize("space", spaces())
def test_stored_params_of_a_live_study_rebuild_what_it_sampled(space):
    # Through a real study: parameters as the storage gives them back.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(30):
        trial = study.ask()
        drawn = sample(trial, space, max_params=LIMIT)
        study.tell(trial, 0.0)
        stored = study.trials[-1].params
        again = rebuild(stored, space)
        assert (again.arch, again.recipe) == (drawn.arch, drawn.recipe)
