from __future__ import annotations

import optuna
import pytest
from autosearch.models import count_params, get_preset
from autosearch.search.space import (
    SPACES,
    SpaceError,
    get_space,
    infeasible_rate,
    load_space,
    sample,
    space_from_stored,
    width_ladder,
    with_epochs,
)

LIMIT = 5_000_000


def draw(space, n, seed=0, limit=LIMIT):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(sample(trial, space, max_params=limit))
        study.tell(trial, 0.0)
    return out


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_preset_samples_valid_configs_within_budget_or_at_their_smallest(name):
    space = SPACES[name]
    for s in draw(space, 15):
        if space.arch.fixed is None:
            assert count_params(s.arch) <= LIMIT or s.scale == width_ladder(space.arch.widths)[0]
        low, high = space.recipe.epochs
        assert low <= s.recipe.epochs <= high


def test_zigzag_space_covers_its_ranges():
    samples = draw(SPACES["zigzag"], 60)
    stages = {len(s.arch.stages) for s in samples}
    assert stages <= set(range(3, 8)) and len(stages) >= 3
    widths = [st.width for s in samples for st in s.arch.stages]
    assert min(widths) >= 16 and max(widths) <= 512
    assert all(w % 8 == 0 for w in widths)
    assert {st.kernel for s in samples for st in s.arch.stages} == {3, 5}
    # the schedule is free to fall as well as rise
    assert any(
        any(a.width > b.width for a, b in zip(s.arch.stages, s.arch.stages[1:], strict=False))
        for s in samples
    )


def test_same_seed_gives_the_same_first_specs():
    a = [s.arch for s in draw(SPACES["zigzag"], 5, seed=7)]
    b = [s.arch for s in draw(SPACES["zigzag"], 5, seed=7)]
    c = [s.arch for s in draw(SPACES["zigzag"], 5, seed=8)]
    assert a == b
    assert a != c


def test_recipe_space_keeps_the_seed_architecture():
    for s in draw(SPACES["recipe"], 10):
        assert s.arch == get_preset("zigzag")
        assert s.recipe.batch_size in (32, 64, 128)


def test_widths_fill_the_share_of_the_budget_the_trial_drew():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    fills = []
    for _ in range(40):
        trial = study.ask()
        s = sample(trial, SPACES["zigzag"], max_params=LIMIT)
        params = count_params(s.arch)
        assert params <= trial.params["fill"] * LIMIT
        fills.append(params / LIMIT / trial.params["fill"])
        # the widest stage is the scale, and the widths keep the drawn shape
        assert max(s.arch.widths) == s.scale
        study.tell(trial, 0.0)
    assert sorted(fills)[len(fills) // 2] > 0.8  # most nets come close to their share


def test_a_shape_too_big_at_its_smallest_scale_is_left_over_budget():
    space = SPACES["resnet"]  # first stage 32-96 wide, growth up to 2.5, 3 repeats
    rate, counts = infeasible_rate(space, 80, max_params=LIMIT)
    assert 0 < rate < 0.6
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(80):
        trial = study.ask()
        s = sample(trial, space, max_params=LIMIT)
        if count_params(s.arch) > LIMIT:
            assert s.scale == 32  # the smallest scale, as drawn: the caller records it infeasible
        study.tell(trial, 0.0)


def test_fingerprint_follows_the_ranges():
    z = SPACES["zigzag"]
    assert z.fingerprint() == space_from_stored(z.to_dict()).fingerprint()
    assert with_epochs(z, 3).fingerprint() != z.fingerprint()


def test_unknown_preset_is_named():
    with pytest.raises(SpaceError, match="'zigzog'"):
        get_space("zigzog")


def write(tmp_path, text):
    path = tmp_path / "space.toml"
    path.write_text(text)
    return str(path)


def test_toml_space_loads_and_extends_a_preset(tmp_path):
    path = write(
        tmp_path,
        """
name = "narrow"
extends = "zigzag"
[arch]
stages = [3, 4]
widths = [16, 128]
[recipe]
optimizers = ["adamw"]
epochs = 3
""",
    )
    space = load_space(path)
    assert space.name == "narrow"
    for s in draw(space, 10):
        assert 3 <= len(s.arch.stages) <= 4
        assert max(st.width for st in s.arch.stages) <= 128
        assert s.recipe.optimizer == "adamw" and s.recipe.epochs == 3


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("[arch]\nwidht = [16, 64]\n", ["arch.widht", "[16, 64]"]),
        ("[recipe]\noptimizers = ['sgd', 'lion']\n", ["recipe.optimizers", "'lion'"]),
        ("[arch]\nwidths = [64, 16]\n", ["arch.widths", "(64, 16)"]),
        ("[arch]\nrepeats = ['a', 2]\n", ["arch.repeats", "'a'"]),
        ("budget = 3\n", ["'budget'"]),
        ("extends = 'nope'\n", ["extends", "'nope'"]),
        ("[arch]\nfit_budget = true\n", ["arch.fit_budget", "no longer"]),
        ("[arch]\nfill = [0.0, 1.0]\n", ["arch.fill", "(0.0, 1.0)"]),
        ("[arch]\nwidths = [9, 15]\n", ["arch.widths", "multiple of 8"]),
        ("[recipe]\ntta = 'yes'\n", ["recipe.tta", "'yes'"]),
    ],
)
def test_toml_errors_name_file_key_and_value(tmp_path, text, pieces):
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert path in message
    for piece in pieces:
        assert piece in message


def test_toml_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(SpaceError, match="not valid TOML"):
        load_space(write(tmp_path, "[arch\n"))
    with pytest.raises(SpaceError, match="no such space file"):
        load_space(str(tmp_path / "missing.toml"))


def test_a_stored_space_that_shrank_widths_is_refused_by_name():
    stored = SPACES["zigzag"].to_dict()
    assert space_from_stored(stored) == SPACES["zigzag"]
    stored["arch"]["fit_budget"] = True  # as studies made before the fill rule stored it
    del stored["arch"]["fill"]
    with pytest.raises(SpaceError, match="arch.fit_budget"):
        space_from_stored(stored)
    # a single tta value, as older spaces stored it, is one choice
    stored = SPACES["zigzag"].to_dict()
    stored["recipe"]["tta"] = True
    assert space_from_stored(stored).recipe.tta == (True,)
