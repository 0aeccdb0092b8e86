from __future__ import annotations

import json
import shutil

import optuna
import pytest
import torch
from autosearch import load_best_model
from autosearch.models import build_model, get_preset, make_spec
from autosearch.search.cli import app
from autosearch.search.results.export import export_trial
from autosearch.search.results.exported import (
    ExportError,
    evaluate_export,
    load_export,
)
from autosearch.search.results.exported import test_accuracy as measure_test_accuracy
from autosearch.search.training.device import memory_format
from autosearch.search.training.recipe import TrainRecipe
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.conftest import tiny_data

runner = CliRunner()
SPLIT = ["--subset", "200", "--val-size", "100", "--device", "cpu"]


@pytest.fixture(scope="module")
def searched(cifar_dir, tmp_path_factory) -> str:
    """A real 4-trial study from the CLI (its seeds are over the budget and left out)."""
    root = tmp_path_factory.mktemp("search")
    url = f"sqlite:///{root}/s.db"
    args = ["start", "--study", "zigzag", "--trials", "4", "--epochs", "1", *SPLIT]
    args += ["--max-params", "400000", "--data-dir", str(cifar_dir), "--storage", url]
    result = runner.invoke(app, [*args, "--checkpoint-dir", str(root / "ck")])
    assert result.exit_code == 0, result.output
    return url


@pytest.fixture(scope="module")
def exported(searched, cifar_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "best"
    result = runner.invoke(
        app,
        ["export", "--study", "zigzag", "--storage", searched, "--out", str(out), "--epochs", "1"]
        + SPLIT
        + ["--data-dir", str(cifar_dir)],
    )
    assert result.exit_code == 0, result.output
    return out


def test_export_writes_weights_spec_and_card(exported, searched):
    info = json.loads((exported / "model.json").read_text())
    best = optuna.load_study(study_name="zigzag", storage=searched).best_trial
    assert info["search"]["trial"] == best.number
    assert info["arch"] == best.user_attrs["arch"]
    assert info["params"] == best.user_attrs["params"] <= info["max_params"] == 400_000
    assert info["recipe"]["epochs"] == 1 and len(info["runs"]) == 1
    assert 0 <= info["test_acc"] <= 1 and info["val_acc"] is not None
    assert info["data"]["test_images"] == 40 and info["data"]["train_images"] < 200
    assert {"torch", "torchvision", "optuna", "autosearch"} <= set(info["versions"])
    assert info["git_revision"]
    state = load_file(str(exported / "model.safetensors"))
    assert (
        sum(v.numel() for k, v in state.items() if "running" not in k and "num_b" not in k)
        == (info["params"])
    )
    card = (exported / "README.md").read_text()
    assert f"{info['params']:,}" in card and "load_best_model" in card


def test_evaluate_reproduces_the_test_accuracy_exactly(exported, cifar_dir):
    result = runner.invoke(app, ["evaluate", str(exported), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    recorded = json.loads((exported / "model.json").read_text())["test_acc"]
    assert data["match"] and data["test_acc"] == recorded


def test_the_test_pass_runs_in_the_training_layout():
    cpu = torch.device("cpu")
    model = build_model(make_spec([8], [1], stem_width=8))
    loss, acc = measure_test_accuracy(model, tiny_data(), TrainRecipe(tta=False), cpu)
    assert 0 <= acc <= 1
    conv = model.stem[0][0]
    assert conv.weight.is_contiguous(memory_format=memory_format(cpu))


def test_load_best_model_returns_the_trained_module(exported):
    model = load_best_model(exported)
    info = json.loads((exported / "model.json").read_text())
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == info["params"]
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_export_refuses_to_overwrite_and_unknown_trials(exported, searched):
    base = ["export", "--study", "zigzag", "--storage", searched]
    result = runner.invoke(app, [*base, "--out", str(exported), *SPLIT])
    assert result.exit_code == 2 and "already holds an export" in result.stderr
    result = runner.invoke(app, [*base, "--out", str(exported.parent / "x"), "--trial", "99"])
    assert result.exit_code == 2 and "no trial 99" in result.stderr
    # a trial recorded over the budget (as an infeasible one is) never trains again
    study = optuna.load_study(study_name="zigzag", storage=searched)
    arch = get_preset("zigzag").to_dict()
    over = study.trials[0].user_attrs | {"arch": arch, "stopped": "infeasible"}
    study.add_trial(optuna.trial.create_trial(value=0.0, user_attrs=over))
    number = str(len(study.trials) - 1)
    result = runner.invoke(app, [*base, "--out", str(exported.parent / "x"), "--trial", number])
    assert result.exit_code == 2 and "exceed the limit of 400,000" in result.stderr


# --------------------------------------------- a tiny trial: seeds, full split, refusals


@pytest.fixture(scope="module")
def tiny(cifar_dir, tmp_path_factory):
    """A 2-seed export of a tiny net trained on the whole 200-image subset (no val)."""
    spec = make_spec([8, 16], [1, 1], stem_width=8)
    recipe = TrainRecipe(epochs=1, batch_size=64, tta=False)
    trial = optuna.trial.create_trial(
        value=0.3, user_attrs={"arch": spec.to_dict(), "recipe": recipe.to_dict()}
    )
    out = tmp_path_factory.mktemp("tiny") / "t"
    info = export_trial(
        trial,
        out,
        study_name="t",
        max_params=400_000,
        data_dir=str(cifar_dir),
        subset=200,
        val_size=0,
        seeds=2,
        device="cpu",
    )
    return out, info


def test_several_seeds_give_mean_and_std_and_keep_the_first(tiny):
    out, info = tiny
    assert [r["seed"] for r in info["runs"]] == [0, 1]
    accs = [r["test_acc"] for r in info["runs"]]
    assert info["test_acc"] == accs[0]
    assert info["test_acc_mean"] == pytest.approx(sum(accs) / 2)
    assert info["test_acc_std"] >= 0 and "first seed" in info["weights_from"]
    # val_size 0: every training image trains, and there is no validation score
    assert info["data"]["train_images"] == 200 and info["val_acc"] is None
    assert evaluate_export(out, device="cpu")["match"]


def copy_of(tiny, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny[0], out)
    return out, json.loads((out / "model.json").read_text())


def test_evaluate_refuses_a_wrong_parameter_count(tiny, tmp_path):
    out, info = copy_of(tiny, tmp_path)
    info["params"] += 1
    (out / "model.json").write_text(json.dumps(info))
    result = runner.invoke(app, ["evaluate", str(out), "--device", "cpu"])
    assert result.exit_code == 2 and f"says {info['params']:,} parameters" in result.stderr


def test_evaluate_refuses_a_changed_spec(tiny, tmp_path):
    out, info = copy_of(tiny, tmp_path)
    info["arch"]["stages"][1]["kernel"] = 5
    info["params"] = 0  # made consistent below, so the weights check is what refuses
    from autosearch.models import ArchSpec, count_params

    info["params"] = count_params(ArchSpec.from_dict(info["arch"]))
    (out / "model.json").write_text(json.dumps(info))
    with pytest.raises(ExportError, match="another architecture"):
        load_export(out)


def test_evaluate_refuses_other_weights(tiny, cifar_dir, tmp_path):
    out, info = copy_of(tiny, tmp_path)
    state = load_file(str(out / "model.safetensors"))
    state["fc.weight"] = state["fc.weight"] + 1
    from safetensors.torch import save_file

    save_file(state, str(out / "model.safetensors"), metadata={"arch": json.dumps(info["arch"])})
    with pytest.raises(ExportError, match="sha256"):
        load_export(out)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "model.json does not exist" in result.stderr


def test_plateau_recipes_need_a_validation_split(tmp_path, cifar_dir):
    spec = make_spec([8], [1], stem_width=8)
    recipe = TrainRecipe(schedule="plateau", epochs=1, batch_size=32)
    trial = optuna.trial.create_trial(
        value=0.5, user_attrs={"arch": spec.to_dict(), "recipe": recipe.to_dict()}
    )
    with pytest.raises(ExportError, match="'plateau' schedule steps on validation loss"):
        export_trial(
            trial,
            tmp_path / "out",
            study_name="s",
            max_params=10**6,
            data_dir=str(cifar_dir),
            subset=100,
            val_size=0,
            device="cpu",
        )
    info = export_trial(
        trial,
        tmp_path / "out",
        study_name="s",
        max_params=10**6,
        data_dir=str(cifar_dir),
        subset=100,
        val_size=100,
        device="cpu",
    )
    assert info["data"]["val_size"] == 100


# ----------------------------------------------------- refusals before anything is built


def evaluate_line(out) -> str:
    result = runner.invoke(app, ["evaluate", str(out), "--device", "cpu"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


def test_the_callers_budget_decides_and_nothing_is_built(tiny, tmp_path, monkeypatch):
    from autosearch.models import count_params, get_preset
    from autosearch.search.results import exported

    def tripwire(spec):
        raise AssertionError("a model was built before its count was checked")

    monkeypatch.setattr(exported, "build_model", tripwire)
    out, info = copy_of(tiny, tmp_path)
    big = get_preset("resnet18")
    info.update(arch=big.to_dict(), params=count_params(big), max_params=10**12)
    (out / "model.json").write_text(json.dumps(info))
    assert "11,173,962 parameters, over the budget 5,000,000" in evaluate_line(out)
    with pytest.raises(ExportError, match="over the budget 5,000,000"):
        load_best_model(out)
    monkeypatch.undo()
    small, _ = copy_of(tiny, tmp_path / "small")
    with pytest.raises(ExportError, match="over the budget 1,000"):
        load_best_model(small, max_params=1000)


def test_the_weights_hash_is_required(tiny, tmp_path):
    out, info = copy_of(tiny, tmp_path)
    del info["weights_sha256"]
    (out / "model.json").write_text(json.dumps(info))
    assert "records no weights_sha256" in evaluate_line(out)


def test_a_corrupt_weights_file_is_one_line(tiny, tmp_path):
    from autosearch.search.results.exported import sha256_of

    out, info = copy_of(tiny, tmp_path)
    (out / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    info["weights_sha256"] = sha256_of(out / "model.safetensors")  # so the file is parsed
    (out / "model.json").write_text(json.dumps(info))
    assert "model.safetensors is not a readable safetensors file" in evaluate_line(out)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda info: info["data"].update(val_size="many"), "data.val_size"),
        (lambda info: info.pop("data"), "'data'"),
        (lambda info: info.update(params="lots"), "lots"),
        (lambda info: info["recipe"].update(optimizer="sgdx"), "sgdx"),
    ],
)
def test_malformed_model_json_is_one_line(tiny, tmp_path, change, named):
    out, info = copy_of(tiny, tmp_path)
    change(info)
    (out / "model.json").write_text(json.dumps(info))
    assert named in evaluate_line(out)


def test_unreadable_model_json_is_one_line(tiny, tmp_path):
    out, _ = copy_of(tiny, tmp_path)
    (out / "model.json").write_bytes(b"\xff\xfe not json")
    assert "model.json is not valid JSON" in evaluate_line(out)
