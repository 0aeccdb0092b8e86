"""Reading CIFAR-10 layouts, stratified splits and `prepare_data`, on tiny synthetic data."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from autosearch.search.training import sources as data_module
from autosearch.search.training.data import (
    normalize,
    prepare_data,
    stratified_split,
    stratified_subset,
)
from autosearch.search.training.sources import ENV_VAR, DataNotFoundError, RawCifar, load_cifar10
from hypothesis import given, settings
from hypothesis import strategies as st

PER_BATCH = 20  # images per synthetic batch file; 5 train batches + 1 test batch
CLASS_NAMES = [f"class{i}" for i in range(10)]


# --------------------------------------------------------------------------- fixtures


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = rng.permutation(np.arange(n) % 10).astype(np.int64)
    return x, y


def _batch_blob(x: np.ndarray, y: np.ndarray, *, bytes_keys: bool = False) -> bytes:
    # The official encoding, written out by hand: a row holds all 1024 red values
    # (row-major), then green, then blue.
    rows = np.empty((len(x), 3072), dtype=np.uint8)
    for ch in range(3):
        rows[:, ch * 1024 : (ch + 1) * 1024] = x[..., ch].reshape(len(x), 1024)
    entry = {"data": rows, "labels": [int(v) for v in y], "batch_label": "synthetic"}
    if bytes_keys:  # what Python 2 pickles look like when read with latin1
        entry = {k.encode(): v for k, v in entry.items()}
    return pickle.dumps(entry, protocol=2)


def _meta_blob() -> bytes:
    return pickle.dumps({b"label_names": [n.encode() for n in CLASS_NAMES]}, protocol=2)


@pytest.fixture(scope="module")
def reference() -> RawCifar:
    train_x, train_y = _images(5 * PER_BATCH, seed=1)
    test_x, test_y = _images(PER_BATCH, seed=2)
    return RawCifar(train_x, train_y, test_x, test_y, list(CLASS_NAMES))


def _blobs(ref: RawCifar) -> dict[str, bytes]:
    blobs = {
        f"data_batch_{i + 1}": _batch_blob(
            ref.train_x[i * PER_BATCH : (i + 1) * PER_BATCH],
            ref.train_y[i * PER_BATCH : (i + 1) * PER_BATCH],
            bytes_keys=i == 0,
        )
        for i in range(5)
    }
    blobs["test_batch"] = _batch_blob(ref.test_x, ref.test_y)
    blobs["batches.meta"] = _meta_blob()
    return blobs


def write_batches(root: Path, ref: RawCifar) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, blob in _blobs(ref).items():
        (folder / name).write_bytes(blob)
    return folder


def write_archive(path: Path, ref: RawCifar) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in _blobs(ref).items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def assert_same(raw: RawCifar, ref: RawCifar) -> None:
    for key in ("train_x", "train_y", "test_x", "test_y"):
        got, want = getattr(raw, key), getattr(ref, key)
        assert got.dtype == want.dtype and got.shape == want.shape, key
        np.testing.assert_array_equal(got, want, err_msg=key)
    assert raw.classes == CLASS_NAMES


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder and home, and no data variable: defaults find nothing."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


# --------------------------------------------------------------------------- reading


def test_batches_folder_round_trips_pixels_and_labels(tmp_path, reference):
    write_batches(tmp_path, reference)
    raw = load_cifar10(tmp_path, download=False)
    assert_same(raw, reference)
    assert raw.train_x.shape == (100, 32, 32, 3) and raw.train_x.dtype == np.uint8
    assert raw.train_y.dtype == np.int64


def test_channel_major_rows_become_nhwc_pixels(tmp_path, reference):
    write_batches(tmp_path, reference)
    blob = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())
    raw = load_cifar10(tmp_path, download=False)
    # image 3, row 5, column 7: red at 5*32+7, green 1024 later, blue 2048 later
    row = blob["data"][3]
    assert list(raw.test_x[3, 5, 7]) == [row[167], row[1024 + 167], row[2048 + 167]]


def test_batches_folder_itself(tmp_path, reference):
    folder = write_batches(tmp_path, reference)
    assert_same(load_cifar10(folder, download=False), reference)


@pytest.mark.parametrize("point_at_file", [False, True])
def test_official_archive(tmp_path, reference, point_at_file):
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", reference)
    raw = load_cifar10(archive if point_at_file else tmp_path, download=False)
    assert_same(raw, reference)
    assert not (tmp_path / "cifar-10-batches-py").exists()  # read in place, not extracted


@pytest.mark.parametrize("point_at_file", [False, True])
def test_npz(tmp_path, reference, point_at_file):
    path = tmp_path / "cifar10.npz"
    r = reference
    np.savez(path, x_train=r.train_x, y_train=r.train_y, x_test=r.test_x, y_test=r.test_y)
    raw = load_cifar10(path if point_at_file else tmp_path, download=False)
    np.testing.assert_array_equal(raw.train_x, r.train_x)
    np.testing.assert_array_equal(raw.test_y, r.test_y)
    assert len(raw.classes) == 10


def test_environment_variable(tmp_path, reference, isolated, monkeypatch):
    write_batches(tmp_path / "elsewhere", reference)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "elsewhere"))
    assert_same(load_cifar10(download=False), reference)


def test_default_folder(reference, isolated):
    write_batches(isolated / "data", reference)
    assert_same(load_cifar10(download=False), reference)


def test_not_found_lists_paths_and_how_to_fix(isolated):
    with pytest.raises(DataNotFoundError) as err:
        load_cifar10(download=False)
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert str((isolated / "data").resolve()) in message
    assert str(Path.home() / ".cache" / "autosearch" / "cifar10") in message
    assert "--data-dir" in message and ENV_VAR in message and "disabled" in message


def test_incomplete_folder_is_not_taken(tmp_path, reference):
    folder = write_batches(tmp_path, reference)
    (folder / "test_batch").unlink()
    with pytest.raises(DataNotFoundError, match="--data-dir"):
        load_cifar10(tmp_path, download=False)


def test_download_fallback_reads_what_it_fetched(tmp_path, reference, monkeypatch):
    def fake_download(root: Path) -> None:
        write_batches(root, reference)

    monkeypatch.setattr(data_module, "_download", fake_download)
    (tmp_path / "fresh").mkdir()
    assert_same(load_cifar10(tmp_path / "fresh"), reference)


def test_a_missing_data_dir_is_refused_not_created(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "_download", lambda root: root.mkdir(parents=True))
    with pytest.raises(DataNotFoundError, match="typo-dir.*does not exist"):
        load_cifar10(tmp_path / "typo-dir")
    assert not (tmp_path / "typo-dir").exists()


def test_download_failure_is_reported(tmp_path, monkeypatch):
    def offline(root: Path) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(data_module, "_download", offline)
    (tmp_path / "missing").mkdir()
    with pytest.raises(DataNotFoundError) as err:
        load_cifar10(tmp_path / "missing")
    message = str(err.value)
    assert "network unreachable" in message and "failed" in message
    assert str((tmp_path / "missing").resolve()) in message


def test_pickled_code_is_refused(tmp_path, reference):
    folder = write_batches(tmp_path, reference)

    class Evil:
        def __reduce__(self):
            return (print, ("unpickling ran code",))

    (folder / "data_batch_2").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_cifar10(tmp_path, download=False)


# --------------------------------------------------------------------------- splits

IMBALANCED = np.random.default_rng(0).permutation(np.repeat(np.arange(5), [30, 20, 10, 7, 3]))


def _check_proportional(labels: np.ndarray, picked: np.ndarray) -> None:
    for c in np.unique(labels):
        exact = np.sum(labels == c) * len(picked) / len(labels)
        assert abs(np.sum(labels[picked] == c) - exact) < 1, c


def test_split_is_stratified_disjoint_and_covering():
    train, val = stratified_split(IMBALANCED, 13, seed=0)
    assert len(val) == 13 and len(train) == len(IMBALANCED) - 13
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(70))
    _check_proportional(IMBALANCED, val)
    assert train.dtype == val.dtype == np.int64


@settings(max_examples=40, deadline=None, database=None)
@given(
    counts=st.lists(st.integers(1, 30), min_size=1, max_size=8),
    fraction=st.floats(0, 0.99),
    seed=st.integers(0, 2**32),
)
def test_split_proportions_hold_for_any_class_mix(counts, fraction, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    val_size = min(int(fraction * len(labels)), len(labels) - 1)
    train, val = stratified_split(labels, val_size, seed)
    assert len(val) == val_size and len(np.unique(val)) == val_size
    assert len(train) + len(val) == len(labels)
    _check_proportional(labels, val)


def test_split_depends_on_seed_only():
    a = stratified_split(IMBALANCED, 20, seed=3)
    b = stratified_split(IMBALANCED, 20, seed=3)
    c = stratified_split(IMBALANCED, 20, seed=4)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_empty_validation_is_allowed():
    train, val = stratified_split(IMBALANCED, 0, seed=0)
    assert len(val) == 0 and len(train) == 70


@pytest.mark.parametrize("bad", [-1, 70, 71, 2.5])
def test_split_rejects_bad_size(bad):
    with pytest.raises(ValueError, match="val_size"):
        stratified_split(IMBALANCED, bad, seed=0)


def test_subset_is_stratified_and_seeded():
    picked = stratified_subset(IMBALANCED, 35, seed=1)
    assert len(picked) == len(np.unique(picked)) == 35
    _check_proportional(IMBALANCED, picked)
    np.testing.assert_array_equal(picked, stratified_subset(IMBALANCED, 35, seed=1))
    assert not np.array_equal(picked, stratified_subset(IMBALANCED, 35, seed=2))
    assert len(stratified_subset(IMBALANCED, 70, seed=0)) == 70
    with pytest.raises(ValueError, match="n=71"):
        stratified_subset(IMBALANCED, 71, seed=0)


# --------------------------------------------------------------------------- prepare_data


@pytest.fixture(scope="module")
def tagged() -> RawCifar:
    """500 train and 100 test images, each carrying its own index in two pixels."""

    def make(n: int, offset: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = _images(n, seed)
        ids = np.arange(n) + offset
        x[:, 0, 0, 0], x[:, 0, 0, 1] = ids % 256, ids // 256
        return x, y

    train_x, train_y = make(500, 0, seed=3)
    test_x, test_y = make(100, 500, seed=4)
    return RawCifar(train_x, train_y, test_x, test_y, list(CLASS_NAMES))


def _ids(x: torch.Tensor) -> np.ndarray:
    pixels = x[:, :2, 0, 0].cpu().numpy().astype(np.int64)
    return pixels[:, 0] + 256 * pixels[:, 1]


def test_full_split_sizes_types_and_disjointness(tagged):
    data = prepare_data(raw=tagged, val_size=100, seed=0)
    assert data.train_x.shape == (400, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.val_x.shape == (100, 3, 32, 32) and data.test_x.shape == (100, 3, 32, 32)
    assert data.train_y.dtype == data.val_y.dtype == data.test_y.dtype == torch.int64
    assert data.train_x.device.type == "cpu" and data.num_classes == 10
    train, val = _ids(data.train_x), _ids(data.val_x)
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(500))
    np.testing.assert_array_equal(np.sort(_ids(data.test_x)), np.arange(500, 600))
    # labels travel with their images
    np.testing.assert_array_equal(data.val_y.numpy(), tagged.train_y[_ids(data.val_x)])
    # NCHW tensors hold the same pixels as the NHWC arrays
    first = _ids(data.train_x[:1])[0]
    np.testing.assert_array_equal(data.train_x[0].permute(1, 2, 0).numpy(), tagged.train_x[first])


def test_mean_and_std_come_from_the_training_split(tagged):
    data = prepare_data(raw=tagged, val_size=100, seed=0)
    pixels = tagged.train_x[np.sort(_ids(data.train_x))].astype(np.float64) / 255
    np.testing.assert_allclose(data.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(data.std, pixels.std(axis=(0, 1, 2)), rtol=1e-9)
    standard = normalize(data.train_x, data.mean, data.std).double()
    np.testing.assert_allclose(standard.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(standard.std(dim=(0, 2, 3), correction=0).numpy(), 1, atol=1e-5)


def test_subset_sizes_and_stratification(tagged):
    data = prepare_data(raw=tagged, val_size=100, subset=200, seed=0)
    # val: round(200 * 100 / 500) = 40; test: max(10, 200 // 5) = 40
    assert len(data.train_y) == 160 and len(data.val_y) == 40 and len(data.test_y) == 40
    for labels, per_class in ((data.train_y, 16), (data.val_y, 4), (data.test_y, 4)):
        assert torch.bincount(labels, minlength=10).tolist() == [per_class] * 10
    assert np.intersect1d(_ids(data.train_x), _ids(data.val_x)).size == 0


def test_tiny_subset_keeps_every_class_in_validation(tagged):
    data = prepare_data(raw=tagged, val_size=100, subset=20, seed=0)
    assert torch.bincount(data.val_y, minlength=10).tolist() == [1] * 10
    assert torch.bincount(data.train_y, minlength=10).tolist() == [1] * 10
    assert len(data.test_y) == 10


def test_prepare_is_seeded(tagged):
    a = prepare_data(raw=tagged, val_size=100, subset=100, seed=5)
    b = prepare_data(raw=tagged, val_size=100, subset=100, seed=5)
    c = prepare_data(raw=tagged, val_size=100, subset=100, seed=6)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.test_x, b.test_x)
    assert not torch.equal(a.val_x, c.val_x)


def test_prepare_reads_from_disk(tmp_path, reference):
    write_batches(tmp_path, reference)
    data = prepare_data(tmp_path, val_size=20, download=False)
    assert len(data.train_y) == 80 and len(data.val_y) == 20 and len(data.test_y) == 20


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"subset": 501}, "subset=501"),
        ({"subset": 19}, "subset=19"),
        ({"subset": 100.0}, "subset"),
        ({"val_size": 500}, "val_size=500"),
        ({"val_size": -1}, "val_size=-1"),
        ({"seed": -2}, "seed"),
    ],
)
def test_prepare_rejects_bad_values(tagged, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prepare_data(raw=tagged, **{"val_size": 100, **kwargs})
