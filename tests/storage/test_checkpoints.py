from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path

import autosearch.storage.checkpoints as ckpt
import pytest
import torch
from autosearch.storage.checkpoints import (
    CheckpointError,
    CheckpointStore,
    keep_best,
    prune_finished,
    read_checkpoint,
)
from torch import nn


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 2))


def _training_state(seed: int) -> dict[str, object]:
    """A model + optimizer state after one real step, so AdamW's moments and step exist."""
    torch.manual_seed(seed)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": torch.get_rng_state(),
        "meta": {"epoch_loss": [0.5, 0.25], "spec": ("w", 16), "ema": None, "tta": True},
    }


def _assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def _files(store: CheckpointStore) -> list[str]:
    return sorted(p.name for p in store.folder.iterdir())


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path, "study-a", 7, keep=2)


def _save_epochs(store: CheckpointStore, epochs: range) -> dict[int, dict[str, object]]:
    states = {e: _training_state(e) for e in epochs}
    for e, state in states.items():
        store.save(e, state)
    return states


def test_round_trip_model_and_optimizer(store: CheckpointStore) -> None:
    state = _training_state(0)
    path = store.save(3, state)
    assert path == store.folder / "epoch-0003.pt"
    assert store.folder == store.root / "study-a" / "trial-00007"
    epoch, loaded = store.load_latest()
    assert epoch == 3
    _assert_same(state, loaded)
    # The loaded state drives a model and optimizer again.
    model = _model()
    model.load_state_dict(loaded["model"])
    torch.optim.AdamW(model.parameters()).load_state_dict(loaded["optimizer"])


def test_only_newest_keep_files_remain(store: CheckpointStore) -> None:
    _save_epochs(store, range(5))
    assert store.epochs() == [3, 4]
    assert _files(store) == ["epoch-0003.pt", "epoch-0004.pt"]  # no temp files either


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


# Offsets: the magic, the stored digest, the payload's middle, its last byte.
@pytest.mark.parametrize("offset", [0, 20, 2000, -1])
def test_flipped_byte_falls_back_to_previous(
    store: CheckpointStore, offset: int, caplog: pytest.LogCaptureFixture
) -> None:
    states = _save_epochs(store, range(2))
    _flip(store.path(1), offset)
    with caplog.at_level(logging.WARNING, logger="storage.checkpoints"):
        epoch, state = store.load_latest()
    assert epoch == 0
    _assert_same(states[0], state)
    assert "epoch-0001.pt" in caplog.text


@pytest.mark.parametrize("keep_bytes", [0, 10, 48, 1000, -1])
def test_truncated_file_falls_back_to_previous(store: CheckpointStore, keep_bytes: int) -> None:
    states = _save_epochs(store, range(2))
    path = store.path(1)
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes])
    epoch, state = store.load_latest()
    assert epoch == 0
    _assert_same(states[0], state)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_all_corrupted_gives_none(store: CheckpointStore) -> None:
    _save_epochs(store, range(2))
    _flip(store.path(0), 500)
    store.path(1).write_bytes(store.path(1).read_bytes()[:-1])
    assert store.load_latest() is None


def test_empty_store_gives_none(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, "s", "nothing-yet")
    assert store.load_latest() is None
    assert store.epochs() == []


def test_renamed_file_is_not_trusted(store: CheckpointStore) -> None:
    _save_epochs(store, range(1))
    os.replace(store.path(0), store.path(5))
    assert store.load_latest() is None


def test_failed_write_leaves_no_temp_and_keeps_old(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    states = _save_epochs(store, range(1))

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        store.save(1, _training_state(1))
    monkeypatch.undo()
    assert _files(store) == ["epoch-0000.pt"]
    _assert_same(states[0], store.load_latest()[1])


def test_dead_writers_temp_files_are_swept(store: CheckpointStore) -> None:
    _save_epochs(store, range(1))
    leftover = store.folder / ".epoch-0001.pt.999999999.deadbeef.tmp"
    leftover.write_bytes(b"half a checkpoint")
    assert store.load_latest()[0] == 0
    assert not leftover.exists()


def test_unsafe_state_is_refused_at_save(store: CheckpointStore) -> None:
    store.save(0, {"ok": torch.ones(2)})
    with pytest.raises(CheckpointError, match="weights_only"):
        store.save(1, {"bad": Path("/x")})
    assert _files(store) == ["epoch-0000.pt"]


def test_loading_is_weights_only(store: CheckpointStore) -> None:
    # A file whose checksum holds but whose pickle names arbitrary classes is refused,
    # never unpickled.
    buffer = io.BytesIO()
    torch.save({"epoch": 1, "state": {"bad": Path("/x")}}, buffer)
    payload = buffer.getvalue()
    store.save(0, {"ok": torch.ones(2)})
    store.path(1).write_bytes(ckpt._MAGIC + hashlib.sha256(payload).digest() + payload)
    assert store.load_latest()[0] == 0
    with pytest.raises(CheckpointError, match="unpickle"):
        read_checkpoint(store.path(1))


def test_finalize_keeps_given_final_weights(store: CheckpointStore) -> None:
    _save_epochs(store, range(3))
    weights = {"model": _training_state(9)["model"]}
    path = store.finalize(keep_weights=True, state=weights)
    assert path == store.folder / "final.pt"
    assert _files(store) == ["final.pt"]
    _assert_same(weights, store.load_final())


def test_finalize_without_state_keeps_latest_epoch(store: CheckpointStore) -> None:
    states = _save_epochs(store, range(3))
    store.finalize(keep_weights=True)
    assert _files(store) == ["final.pt"]
    _assert_same(states[2], store.load_final())


def test_finalize_discarding_removes_folder(store: CheckpointStore) -> None:
    _save_epochs(store, range(2))
    assert store.finalize(keep_weights=False) is None
    assert not store.folder.exists()
    assert store.load_final() is None


def test_corrupted_final_is_not_returned(store: CheckpointStore) -> None:
    store.save_final({"w": torch.zeros(3)})
    _flip(store.folder / "final.pt", 100)
    assert store.load_final() is None


def test_prune_finished_keeps_listed_keys(tmp_path: Path) -> None:
    for key in (0, 1, 2, "named"):
        CheckpointStore(tmp_path, "s", key).save(0, {"x": torch.zeros(1)})
    other = CheckpointStore(tmp_path, "other", 0)
    other.save(0, {"x": torch.zeros(1)})
    removed = prune_finished(tmp_path, "s", {1, "named"})
    assert sorted(p.name for p in removed) == ["trial-00000", "trial-00002"]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["named", "trial-00001"]
    assert other.epochs() == [0]
    assert prune_finished(tmp_path, "absent", set()) == []


@pytest.mark.parametrize("bad", ["../up", "a/b", "", ".hidden"])
def test_unsafe_names_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(CheckpointError):
        CheckpointStore(tmp_path, "s", bad)
    with pytest.raises(CheckpointError):
        CheckpointStore(tmp_path, bad, 0)


def test_default_root_and_keep_validation(tmp_path: Path) -> None:
    assert CheckpointStore(None, "s", 1).folder == Path("checkpoints/s/trial-00001")
    with pytest.raises(CheckpointError, match="keep=0"):
        CheckpointStore(tmp_path, "s", 1, keep=0)


def test_keep_best_breaks_ties_toward_the_earlier_trial(tmp_path: Path) -> None:
    """The best trial is the first of equal values; its weights must be the ones kept."""
    for key in range(5):
        CheckpointStore(tmp_path, "study-a", key).save(1, {"w": torch.zeros(1)})
    finished = [(0.5, 0), (0.5, 1), (0.25, 2), (0.5, 3), (0.75, 4)]
    keep_best(tmp_path, "study-a", live={2}, finished=finished, keep=3)
    assert sorted(p.name for p in (tmp_path / "study-a").iterdir()) == [
        "trial-00000",
        "trial-00001",
        "trial-00002",
        "trial-00004",
    ]
