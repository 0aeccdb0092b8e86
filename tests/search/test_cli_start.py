from __future__ import annotations

import json

import optuna
from autosearch.search.cli import app
from typer.testing import CliRunner

runner = CliRunner()


def start_args(cifar_dir, tmp_path, *extra):
    return [
        "start",
        "--study",
        "zigzag",
        "--trials",
        "4",
        "--epochs",
        "1",
        "--subset",
        "200",
        "--val-size",
        "100",
        "--max-params",
        "400000",
        "--device",
        "cpu",
        "--data-dir",
        str(cifar_dir),
        "--storage",
        f"sqlite:///{tmp_path}/x.db",
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        *extra,
    ]


def test_start_runs_resumes_and_reports(cifar_dir, tmp_path, caplog):
    result = runner.invoke(app, start_args(cifar_dir, tmp_path))
    assert result.exit_code == 0, result.output
    assert "best trial" in result.output
    # Piped, the run talks in whole lines: one per epoch of a trained trial, one per trial.
    epochs = [line for line in result.output.splitlines() if " epoch 1/1 val " in line]
    assert epochs and all("img/s" in line and "| eta " in line for line in epochs)
    ended = [line for line in result.output.splitlines() if line.startswith("trial ")]
    assert len(ended) == 4 + len(epochs)

    url = f"sqlite:///{tmp_path}/x.db"
    study = optuna.load_study(study_name="zigzag", storage=url)
    assert len(study.trials) == 4
    # the seed configurations are over 400k params, so the space cannot hold them
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(w.startswith("seed 0 (zigzag with recipe seed) left out") for w in warned)
    assert not any("seed_config" in t.user_attrs for t in study.trials)
    for t in study.trials:
        assert t.state.is_finished()
        assert "arch" in t.user_attrs and "recipe" in t.user_attrs

    again = runner.invoke(app, start_args(cifar_dir, tmp_path))
    assert again.exit_code == 0, again.output
    study = optuna.load_study(study_name="zigzag", storage=url)
    assert len(study.trials) == 8
    assert not any("seed_config" in t.user_attrs for t in study.trials)
    infeasible = sum(t.user_attrs["stopped"] == "infeasible" for t in study.trials)
    # the resumed run does not redraw the first run's random trials
    assert study.trials[4].params != study.trials[3].params

    best = runner.invoke(app, ["best", "--study", "zigzag", "--storage", url, "--json"])
    assert best.exit_code == 0, best.output
    data = json.loads(best.stdout)
    assert data["params"] <= 400_000 and data["state"] == "complete"
    assert data["value"] == max(
        t.value for t in study.trials if t.user_attrs["stopped"] == "finished"
    )

    status = runner.invoke(app, ["status", "--study", "zigzag", "--storage", url])
    assert status.exit_code == 0 and f"infeasible {infeasible}" in status.output
    listing = runner.invoke(app, ["studies", "--storage", url])
    assert listing.exit_code == 0 and "zigzag" in listing.output

    counted = json.loads(
        runner.invoke(app, ["status", "--study", "zigzag", "--storage", url, "--json"]).stdout
    )
    assert counted["counts"]["infeasible"] == infeasible and sum(counted["counts"].values()) == 8
    assert counted["top"][0] == data  # the best trial, as `best --json` gives it
    listed = json.loads(runner.invoke(app, ["studies", "--storage", url, "--json"]).stdout)
    assert listed == [
        {"study": "zigzag", "space": "zigzag", "trials": 8, "best_val_acc": data["value"]}
    ]


def test_resuming_with_another_space_is_refused_and_writes_nothing(cifar_dir, tmp_path):
    assert runner.invoke(app, start_args(cifar_dir, tmp_path)).exit_code == 0
    url = f"sqlite:///{tmp_path}/x.db"
    args = start_args(cifar_dir, tmp_path)
    args[args.index("--epochs") + 1] = "2"
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "space recipe.epochs [1, 1] -> [2, 2]" in result.stderr
    assert len(optuna.load_study(study_name="zigzag", storage=url).trials) == 4


def test_a_study_is_named_freely_and_a_preset_name_picks_its_space(cifar_dir, tmp_path):
    url = f"sqlite:///{tmp_path}/x.db"
    for name, space in (("my-first-run", "zigzag"), ("deep-narrow", "deep-narrow")):
        args = start_args(cifar_dir, tmp_path)
        args[args.index("--study") + 1] = name
        args[args.index("--trials") + 1] = "1"  # a seed trial, infeasible at 400k
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        study = optuna.load_study(study_name=name, storage=url)
        assert study.user_attrs["space"]["name"] == space
        assert sum(t.state.is_finished() for t in study.trials) == 1


def test_bad_options_fail_with_one_line(cifar_dir, tmp_path):
    for extra, word in (
        (["--sampler", "bayes"], "'bayes'"),
        (["--pruner", "never"], "'never'"),
        (["--device", "tpu"], "'tpu'"),
    ):
        result = runner.invoke(app, start_args(cifar_dir, tmp_path, *extra))
        assert result.exit_code == 2, result.output
        assert word in result.stderr
    args = ["start", "--study", "mine", "--preset", "nope", "--storage", f"{tmp_path}/y.db"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "'nope'" in result.stderr
    assert not (tmp_path / "y.db").exists()  # refused before the storage was made
    url = f"sqlite:///{tmp_path}/x.db"
    optuna.create_study(study_name="other", storage=url)
    result = runner.invoke(app, ["best", "--study", "nope", "--storage", url])
    assert result.exit_code == 2 and "no study named 'nope'" in result.stderr


def test_delete_asks_then_removes_the_study_and_its_checkpoints(cifar_dir, tmp_path):
    assert runner.invoke(app, start_args(cifar_dir, tmp_path)).exit_code == 0
    url = f"sqlite:///{tmp_path}/x.db"
    folders = list((tmp_path / "ck").glob("zigzag.*"))
    assert len(folders) == 1  # the best trials' final weights
    args = ["delete", "--study-name", "zigzag", "--storage", url]
    args += ["--checkpoint-dir", str(tmp_path / "ck")]
    kept = runner.invoke(app, args, input="n\n")
    assert kept.exit_code == 1 and "4 trial(s)" in kept.output
    assert optuna.get_all_study_names(url) == ["zigzag"] and folders[0].is_dir()
    gone = runner.invoke(app, args, input="y\n")
    assert gone.exit_code == 0, gone.output
    assert optuna.get_all_study_names(url) == [] and not folders[0].exists()
    again = runner.invoke(app, [*args, "--yes"])
    assert again.exit_code == 2 and "no study named 'zigzag'" in again.stderr
