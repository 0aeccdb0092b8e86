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
    seed_config,
    seed_params,
    shrink_to_budget,
    space_from_stored,
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
def test_every_preset_samples_valid_configs_within_budget(name):
    for s in draw(SPACES[name], 15):
        assert count_params(s.arch) <= LIMIT
        assert s.recipe.epochs == 15


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


def test_shrink_fits_the_budget_with_one_factor():
    spec = get_preset("resnet18")
    fitted, factor = shrink_to_budget(spec, LIMIT)
    assert 0 < factor < 1
    assert count_params(fitted) <= LIMIT
    assert fitted.repeats == spec.repeats
    assert count_params(get_preset("zigzag")) == count_params(
        shrink_to_budget(get_preset("zigzag"), LIMIT)[0]
    )


def test_without_fit_budget_over_budget_samples_come_back_as_drawn():
    import dataclasses

    space = SPACES["zigzag"]
    raw = dataclasses.replace(space, arch=dataclasses.replace(space.arch, fit_budget=False))
    rate, counts = infeasible_rate(raw, 60, max_params=LIMIT)
    assert rate > 0.15  # why the space fits samples to the budget by default
    rate, counts = infeasible_rate(space, 60, max_params=LIMIT)
    assert rate == 0 and max(counts) <= LIMIT


def test_seed_params_reproduce_the_seed_architectures():
    space = SPACES["zigzag"]
    study = optuna.create_study()
    for params in seed_params(space):
        study.enqueue_trial(params)
    for i in range(len(space.seeds)):
        trial = study.ask()
        s = sample(trial, space, max_params=LIMIT)
        arch, recipe = seed_config(space, i, epochs=s.recipe.epochs)
        assert s.arch == arch
        assert recipe.name == space.seeds[i][1]
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
        ("[arch]\nfit_budget = 'yes'\n", ["arch.fit_budget", "'yes'"]),
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
