from __future__ import annotations

import json

import pytest
import torch
from autosearch.search.cli import app
from typer.testing import CliRunner

runner = CliRunner()


def test_train_prints_validation_and_test_accuracy(cifar_dir):
    args = [
        "train",
        "--widths",
        "16,32",
        "--repeats",
        "1,1",
        "--stem",
        "16",
        "--recipe",
        "fast",
        "--device",
        "cpu",
        "--subset",
        "200",
        "--val-size",
        "100",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--data-dir",
        str(cifar_dir),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "epoch   2" in result.output and "test acc" in result.output

    data = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert data["status"] == "finished" and data["epochs_run"] == 2
    assert 0 <= data["test_acc"] <= 1 and 0 <= data["final_val_acc"] <= 1
    assert data["recipe"]["name"] == "fast" and data["recipe"]["batch_size"] == 64
    assert len(data["history"]) == 2


def test_train_refuses_an_over_budget_arch_before_loading_data(tmp_path):
    result = runner.invoke(
        app, ["train", "resnet18", "--device", "cpu", "--data-dir", str(tmp_path / "none")]
    )
    assert result.exit_code == 3
    assert "11,173,962" in result.stderr


def test_train_bad_recipe_and_missing_data(tmp_path):
    result = runner.invoke(app, ["train", "zigzag", "--recipe", "slow"])
    assert result.exit_code == 2 and "'slow'" in result.stderr
    result = runner.invoke(app, ["train", "zigzag", "--lr", "-1"])
    assert result.exit_code == 2 and "lr=-1" in result.stderr
    result = runner.invoke(
        app,
        ["train", "--widths", "8", "--device", "cpu", "--data-dir", str(tmp_path / "none")],
        env={"AUTOSEARCH_DATA": ""},
    )
    assert result.exit_code == 2
    assert "--data-dir" in result.stderr and "AUTOSEARCH_DATA" in result.stderr
    assert not (tmp_path / "none").exists()  # a mistyped folder is refused, not created


def test_train_seeds_the_initial_weights(cifar_dir):
    from autosearch.models import make_spec
    from autosearch.search.training.recipe import get_recipe
    from autosearch.search.training.run import run_training

    spec = make_spec([8], [1], stem_width=8)
    recipe = get_recipe("fast").replace(epochs=1, batch_size=64, tta=False)
    runs = []
    for noise in (1, 2):  # whatever the global generator held before, one seed, one run
        torch.manual_seed(noise)
        runs.append(
            run_training(spec, recipe, data_dir=str(cifar_dir), subset=100, val_size=20, seed=3)
        )

    def losses(run):
        return [(r["train_loss"], r["val_loss"]) for r in run["history"]], run["test_loss"]

    assert losses(runs[0]) == losses(runs[1])
    with pytest.raises(ValueError, match="seed must be"):
        run_training(spec, recipe, data_dir=str(cifar_dir), seed=-1)
