"""Your own data: CIFAR-100, an ImageFolder and an npz, from reading to an export."""

from __future__ import annotations

import json
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from autosearch import load_best_model
from autosearch.models import build_model, count_flops, count_params, make_spec
from autosearch.models.spec import ArchSpec, SpecError
from autosearch.search.cli import app
from autosearch.search.training import folders
from autosearch.search.training.data import prepare_data
from autosearch.search.training.datasets import (
    DataError,
    DataSource,
    describe_source,
    load_source,
    parse_data,
)
from autosearch.search.training.sources import load_cifar
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import TINY_SPACE

runner = CliRunner()


def coloured(n: int, classes: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """NHWC uint8 images whose class is a mean colour plus noise, every class present."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % classes).astype(np.int64)
    palette = rng.integers(20, 235, size=(classes, 3))
    x = palette[y][:, None, None, :] + rng.normal(0, 15, size=(n, size, size, 3))
    return np.clip(x, 0, 255).astype(np.uint8), y


def _rows(x: np.ndarray) -> np.ndarray:
    # CIFAR's own row encoding: all red values, then green, then blue
    return x.transpose(0, 3, 1, 2).reshape(len(x), -1)


def write_cifar100(root: Path, per_class: int = 4) -> Path:
    """A CIFAR-100-format `cifar-100-python/` folder: train, test and meta pickles."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    x, y = coloured(100 * per_class, 100, seed=1)
    tx, ty = coloured(100, 100, seed=2)
    coarse = [0] * len(y)  # the 20 coarse labels, which must be ignored
    for name, (a, b) in {"train": (x, y), "test": (tx, ty)}.items():
        entry = {b"data": _rows(a), b"fine_labels": b.tolist(), b"coarse_labels": coarse}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    names = [f"fine{i}".encode() for i in range(100)]
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": names}, protocol=2))
    return root


def write_image_folder(root: Path, classes: int = 3, per_class: int = 12) -> Path:
    """An ImageFolder: one sub-folder per class of PNG and JPEG files of mixed sizes."""
    rng = np.random.default_rng(5)
    for c in range(classes):
        colour = rng.integers(20, 235, size=3)
        for i in range(per_class):
            h, w = (40, 56) if i % 2 else (24, 24)
            pixels = np.clip(colour + rng.normal(0, 12, size=(h, w, 3)), 0, 255)
            path = root / f"class_{c}" / ("nested" if i == 0 else "") / f"img{i}"
            path.parent.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels.astype(np.uint8))
            image.save(path.with_suffix(".jpg" if i % 3 == 0 else ".png"))
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(folders.CACHE_ENV, str(tmp_path / "cache"))


# --------------------------------------------------------------------------- the spec


def test_classes_and_input_size_change_the_count_and_the_model():
    base = make_spec([16, 32], [1, 1], stem_width=8)
    many = make_spec([16, 32], [1, 1], stem_width=8, num_classes=100)
    # the classifier holds 32 x classes weights and a bias per class
    assert count_params(many) - count_params(base) == 32 * 90 + 90
    big = make_spec([16, 32], [1, 1], stem_width=8, num_classes=100, input_size=64)
    assert count_params(big) == count_params(many) and count_flops(big) > count_flops(many)
    model = build_model(big)
    assert sum(p.numel() for p in model.parameters()) == count_params(big)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 100)
    # a 32-pixel spec is stored as before; another size travels with it
    assert "input_size" not in base.to_dict()
    assert ArchSpec.from_dict(big.to_dict()) == big and big.to_dict()["input_size"] == 64
    with pytest.raises(SpecError, match="input_size"):
        make_spec([16], [1], input_size=8)


# --------------------------------------------------------------------------- reading


def test_cifar100_reads_fine_labels_from_folder_and_archive(tmp_path):
    root = write_cifar100(tmp_path / "c100")
    raw = load_cifar("cifar100", root, download=False)
    assert raw.train_x.shape == (400, 32, 32, 3) and len(raw.classes) == 100
    assert raw.classes[7] == "fine7" and raw.train_y.max() == 99
    archive = tmp_path / "arch" / "cifar-100-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "cifar-100-python", arcname="cifar-100-python")
    again = load_cifar("cifar100", archive.parent, download=False)
    np.testing.assert_array_equal(again.train_x, raw.train_x)
    np.testing.assert_array_equal(again.test_y, raw.test_y)
    info = describe_source(parse_data("cifar100", data_dir=str(root)))
    assert (info.identity, info.num_classes, info.image_size) == ("cifar100", 100, 32)


def test_image_folder_is_resized_once_and_cached(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "imgs")
    source = parse_data(f"folder:{root}", image_size=40)
    raw = load_source(source)
    assert raw.classes == ["class_0", "class_1", "class_2"]
    assert raw.train_x.shape[1:] == (40, 40, 3) and raw.train_x.dtype == np.uint8
    # a fifth of each class (12 images) is held out as the test split
    assert len(raw.test_y) == 3 * 2 and len(raw.train_y) == 3 * 10
    assert sorted(np.bincount(raw.test_y)) == [2, 2, 2]
    info = describe_source(source)
    assert (info.num_classes, info.image_size, info.train_images) == (3, 40, 30)

    def no_decoding(*_args):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(folders, "_decode", no_decoding)
    cached = load_source(source)
    np.testing.assert_array_equal(cached.train_x, raw.train_x)
    # the same files elsewhere are the same data; another size is not
    moved = shutil.copytree(root, tmp_path / "elsewhere")
    assert describe_source(parse_data(f"folder:{moved}", image_size=40)).identity == info.identity
    assert describe_source(parse_data(f"folder:{root}")).identity != info.identity


def test_image_folder_with_train_and_test_folders(tmp_path):
    write_image_folder(tmp_path / "split" / "train", per_class=6)
    write_image_folder(tmp_path / "split" / "test", classes=2, per_class=3)
    raw = load_source(parse_data(f"folder:{tmp_path / 'split'}"))
    assert len(raw.train_y) == 18 and len(raw.test_y) == 6 and set(raw.test_y) == {0, 1}


def test_npz_of_grey_images_becomes_rgb(tmp_path):
    x, y = coloured(60, 4, seed=3)
    tx, ty = coloured(20, 4, seed=4)
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=x[..., 0], y_train=y, x_test=tx[..., 0], y_test=ty)
    raw = load_source(parse_data(f"npz:{path}"))
    assert raw.train_x.shape == (60, 32, 32, 3) and raw.classes == ["0", "1", "2", "3"]
    info = describe_source(parse_data(f"npz:{path}"))
    assert info.identity.startswith("npz:") and (info.num_classes, info.train_images) == (4, 60)
    data = prepare_data(source=f"npz:{path}")  # validation: a fifth of the training images
    assert (len(data.train_y), len(data.val_y), data.num_classes) == (48, 12, 4)


@pytest.mark.parametrize(
    ("text", "kwargs", "named"),
    [
        ("svhn", {}, "'svhn'"),
        ("folder:", {}, "needs a path"),
        ("cifar100", {"image_size": 64}, "--image-size 64"),
        ("folder:x", {"image_size": 8}, "--image-size 8"),
        ("npz:x.npz", {"data_dir": "d"}, "--data-dir"),
    ],
)
def test_bad_data_values_are_named(text, kwargs, named):
    with pytest.raises(DataError, match=named):
        parse_data(text, **kwargs)


def test_a_folder_of_one_class_is_refused(tmp_path):
    write_image_folder(tmp_path / "one", classes=1)
    with pytest.raises(DataError, match="1 class folder"):
        describe_source(DataSource("folder", str(tmp_path / "one")))


# ------------------------------------------------------------------------ end to end


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def search_export_evaluate(
    tmp_path: Path, data: list[str], here: list[str], subset: str, classes: int
) -> Path:
    """start, best, export and evaluate on one data source; returns the export folder.

    `here` is what export needs to find the data (CIFAR's folder is not stored)."""
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    url = f"sqlite:///{tmp_path / 's.db'}"
    where = ["--storage", url, "--device", "cpu"]
    run(
        "start", "--study", "mine", "--space", str(space), "--trials", "4", "--epochs", "1",
        "--subset", subset, "--max-params", "400000", "--sampler", "random",
        "--checkpoint-dir", str(tmp_path / "ck"), *data, *where,
    )  # fmt: skip
    study = optuna.load_study(study_name="mine", storage=url)
    trained = [t for t in study.trials if t.user_attrs.get("stopped") == "finished"]
    assert trained and all(t.user_attrs["arch"]["num_classes"] == classes for t in trained)
    best = json.loads(run("best", "--study", "mine", "--storage", url, "--json"))
    assert best["number"] in {t.number for t in trained}
    out = tmp_path / "best"
    run("export", "--study", "mine", "--out", str(out), "--subset", subset, *here, *where)
    info = json.loads((out / "model.json").read_text())
    assert len(info["data"]["classes"]) == classes == info["arch"]["num_classes"]
    assert info["data"]["identity"] == study.user_attrs["data_settings"]["source"]
    evaluated = json.loads(run("evaluate", str(out), "--device", "cpu", "--json"))
    assert evaluated["match"]
    return out


def test_a_study_on_a_cifar100_folder_end_to_end(tmp_path):
    root = write_cifar100(tmp_path / "c100")
    where = ["--data-dir", str(root)]
    data = ["--data", "cifar100", "--val-size", "100", *where]
    out = search_export_evaluate(tmp_path, data, where, "300", 100)
    model = load_best_model(out)
    assert model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 100)


def test_a_study_on_an_image_folder_end_to_end(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=3, per_class=15)
    data = ["--data", f"folder:{root}", "--image-size", "36"]
    out = search_export_evaluate(tmp_path, data, [], "36", 3)
    info = json.loads((out / "model.json").read_text())
    assert info["arch"]["input_size"] == 36 and info["data"]["image_size"] == 36
    # the searched weights, as they are
    kept = tmp_path / "kept"
    url = f"sqlite:///{tmp_path / 's.db'}"
    run(
        "export", "--study", "mine", "--out", str(kept), "--no-retrain", "--storage", url,
        "--checkpoint-dir", str(tmp_path / "ck"), "--device", "cpu",
    )  # fmt: skip
    searched = json.loads((kept / "model.json").read_text())
    assert searched["arch"] == info["arch"] and searched["params"] == info["params"]
    assert searched["weights_from"].startswith("the search's own")
    assert searched["data"]["subset"] == 36  # the study's split, on which it trained
    evaluated = json.loads(run("evaluate", str(kept), "--device", "cpu", "--json"))
    assert evaluated["match"]
    best = optuna.load_study(study_name="mine", storage=url).best_trial
    # the weights are the trial's own: validation accuracy is what the search measured
    assert searched["val_acc"] == pytest.approx(best.value, abs=1e-6)
    # data from elsewhere is refused, naming both
    other = write_image_folder(tmp_path / "other", classes=4)
    result = runner.invoke(
        app, ["evaluate", str(kept), "--device", "cpu", "--data", f"folder:{other}"]
    )
    assert result.exit_code == 2 and "not the data of the export" in result.stderr


def test_a_worker_reads_the_studys_data_and_refuses_other_data(tmp_path):
    from autosearch.search.tuning import checks
    from autosearch.search.tuning.session import Placement
    from autosearch.search.tuning.settings import DataSettings, RunSettings, StudyError

    root = write_image_folder(tmp_path / "imgs")
    source = parse_data(f"folder:{root}", image_size=48)
    run = RunSettings(data=source.spec)
    data = DataSettings(source=describe_source(source).identity, image_size=48)
    assert checks.joined_data(run, data, Placement()) == source
    copy = shutil.copytree(root, tmp_path / "copy")  # the same data kept elsewhere
    assert checks.joined_data(run, data, Placement(data=f"folder:{copy}")).path == str(copy)
    other = write_image_folder(tmp_path / "other", classes=4)
    with pytest.raises(StudyError, match="the study trains on"):
        checks.joined_data(run, data, Placement(data=f"folder:{other}"))
