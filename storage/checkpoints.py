"""Atomic, checksummed training checkpoints, so a dead worker's trial resumes mid-run.

Layout: ``<root>/<study>/<key>/epoch-0003.pt`` (the newest `keep` epochs) and, for
trials whose weights are worth keeping, ``final.pt``. ``<study>`` is `study_folder`:
the study's name and its identity, a UUID made when the study was created, so that a
study of the same name in another storage, or one deleted and made again, never reads,
nor prunes, this one's files. An integer key is a trial number (use
`storage.stale.root_trial_number`, so a retry finds its predecessor's files) and
becomes ``trial-00042``.

Each file is a 16-byte magic, the SHA-256 of the payload, then the payload: a
`torch.save` of ``{"epoch": int, "state": dict, "torch": version}``. A file is written
under a temporary name, fsynced, renamed over its final name and the folder fsynced, so
a reader sees either the old file or the whole new one. A truncated or altered file
fails its checksum and is skipped, never loaded. States hold only tensors, containers
and plain scalars, so they load with ``weights_only=True``. The caller puts the spec,
recipe and git revision that made the run into the state.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

DEFAULT_ROOT = Path("checkpoints")
FINAL_NAME = "final.pt"

_MAGIC = b"AUTOSEARCH-CKPT1"  # 16 bytes; bump the digit if the layout changes
_DIGEST_SIZE = hashlib.sha256().digest_size  # 32 bytes
_HEADER_SIZE = len(_MAGIC) + _DIGEST_SIZE
_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pt$")
_TEMP_FILE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")  # .<name>.<pid>.<random>.tmp
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file is damaged, or a name or argument is unusable."""


def key_name(key: str | int) -> str:
    """Folder name for a trial key: ``trial-00042`` for the int 42, else the string."""
    if isinstance(key, int) and not isinstance(key, bool):
        if key < 0:
            raise CheckpointError(f"trial key {key} must be non-negative")
        return f"trial-{key:05d}"
    return _check_name("key", str(key))


def study_folder(name: str, identity: str) -> str:
    """The folder of one study's checkpoints: ``<name>.<identity>``.

    The name is for people; the identity (a UUID stored on the study when it was made)
    keeps apart studies that share a name across storages or over time.
    """
    return f"{_check_name('study name', name)}.{_check_name('study identity', identity)}"


def _check_name(what: str, name: str) -> str:
    # Names become folder names; a slash or `..` would escape the checkpoint root.
    if not _SAFE_NAME.match(name) or ".." in name:
        raise CheckpointError(f"{what} {name!r} is not a safe folder name")
    return name


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; without it a power cut can forget the new name.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, epoch: int, state: dict[str, Any]) -> Path:
    buffer = io.BytesIO()
    # The torch version travels along (as a plain str: TorchVersion is not weights_only-safe).
    torch.save({"epoch": epoch, "state": state, "torch": str(torch.__version__)}, buffer)
    payload = buffer.getbuffer()
    try:
        # A state that weights_only refuses would save fine and then never resume; find
        # out in the first epoch, not after the worker has died.
        torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path.name}: state does not load with weights_only: {e}") from e
    digest = hashlib.sha256(payload).digest()
    # pid + random suffix: a retry of the same key never races a live writer, but a
    # stale file of a dead pid must not be confused with ours.
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temp, "wb") as f:
            f.write(_MAGIC)
            f.write(digest)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> tuple[int, dict[str, Any]]:
    """Verify and load one checkpoint file.

    Args:
        path: An ``epoch-*.pt`` or ``final.pt`` file written by `CheckpointStore`.
        map_location: Passed to `torch.load`.

    Returns:
        ``(epoch, state)``.

    Raises:
        CheckpointError: The file is truncated, altered or not a checkpoint.
        OSError: The file cannot be read.
    """
    data = Path(path).read_bytes()
    if len(data) < _HEADER_SIZE or not data.startswith(_MAGIC):
        raise CheckpointError(f"{path}: not a checkpoint (bad header, {len(data)} bytes)")
    expected = data[len(_MAGIC) : _HEADER_SIZE]
    payload = memoryview(data)[_HEADER_SIZE:]
    if hashlib.sha256(payload).digest() != expected:
        raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupted)")
    try:
        record = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:  # a payload that matches its digest but was written wrongly
        raise CheckpointError(f"{path}: cannot unpickle: {e}") from e
    if not isinstance(record, dict) or not isinstance(record.get("state"), dict):
        raise CheckpointError(f"{path}: payload is not a checkpoint record")
    return int(record["epoch"]), record["state"]


class CheckpointStore:
    """The checkpoints of one trial (one retry chain) of one study.

    Args:
        root: Folder holding every study's checkpoints; None means ``./checkpoints``.
        study: The study's folder name, `study_folder(name, identity)`.
        key: The trial key: the root trial number, or any safe folder name.
        keep: How many of the newest epoch files to keep (at least 1).

    Example:
        >>> store = CheckpointStore(tmp, "demo", 7)  # doctest: +SKIP
        >>> store.save(0, {"model": model.state_dict()})  # doctest: +SKIP
        >>> epoch, state = store.load_latest()  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | Path | None,
        study: str,
        key: str | int,
        *,
        keep: int = 2,
    ) -> None:
        if keep < 1:
            raise CheckpointError(f"keep={keep} must be at least 1")
        self.root = Path(DEFAULT_ROOT if root is None else root)
        self.study = _check_name("study folder", study)
        self.key = key
        self.keep = keep
        self.folder = self.root / self.study / key_name(key)
        # Files the last `load_latest` refused, with the reason: a caller records them.
        self.skipped: list[str] = []

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self.folder)!r}, keep={self.keep})"

    def path(self, epoch: int) -> Path:
        """The file name an epoch is saved under."""
        return self.folder / f"epoch-{epoch:04d}.pt"

    def epochs(self) -> list[int]:
        """Epochs with a file on disk, oldest first (files are not verified here)."""
        if not self.folder.is_dir():
            return []
        found = (_EPOCH_FILE.match(p.name) for p in self.folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def save(self, epoch: int, state: dict[str, Any]) -> Path:
        """Write the state after `epoch` atomically, then drop all but the newest `keep`.

        Args:
            epoch: The epoch just completed (0-based or 1-based, the caller decides).
            state: Tensors, dicts, lists, tuples and plain scalars only.

        Returns:
            The path written.

        Raises:
            CheckpointError: `state` would not load with ``weights_only=True``; nothing
                is written.
        """
        if epoch < 0:
            raise CheckpointError(f"epoch={epoch} must be non-negative")
        self.folder.mkdir(parents=True, exist_ok=True)
        path = _write_atomic(self.path(epoch), epoch, state)
        for old in self.epochs()[: -self.keep]:
            self.path(old).unlink(missing_ok=True)
        return path

    def load_latest(self, map_location: Any = "cpu") -> tuple[int, dict[str, Any]] | None:
        """The newest epoch whose file verifies, as ``(epoch, state)``, or None.

        A damaged file is logged as a warning and skipped in favour of the one before
        it. Temporary files left by a dead writer are removed.
        """
        self._sweep_temp()
        self.skipped = []
        for epoch in reversed(self.epochs()):
            path = self.path(epoch)
            try:
                stored_epoch, state = read_checkpoint(path, map_location)
            except (CheckpointError, OSError) as e:
                log.warning("skipping checkpoint %s: %s", path, e)
                self.skipped.append(f"{path.name}: {e}")
                continue
            if stored_epoch != epoch:
                log.warning("skipping checkpoint %s: holds epoch %d", path, stored_epoch)
                self.skipped.append(f"{path.name}: holds epoch {stored_epoch}")
                continue
            return epoch, state
        return None

    def save_final(self, state: dict[str, Any]) -> Path:
        """Write the final weights (kept after the epoch files are pruned)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return _write_atomic(self.folder / FINAL_NAME, -1, state)

    def load_final(self, map_location: Any = "cpu") -> dict[str, Any] | None:
        """The final state, or None if there is none or it fails verification."""
        path = self.folder / FINAL_NAME
        if not path.is_file():
            return None
        try:
            return read_checkpoint(path, map_location)[1]
        except (CheckpointError, OSError) as e:
            log.warning("final weights %s unusable: %s", path, e)
            return None

    def finalize(self, keep_weights: bool, state: dict[str, Any] | None = None) -> Path | None:
        """Retire a finished trial: delete its epoch files, keep final weights if asked.

        Args:
            keep_weights: Keep final weights (a good trial); else remove the whole folder.
            state: The final state to keep. Without it the newest valid epoch's state
                is kept.

        Returns:
            The ``final.pt`` path, or None when nothing was kept.
        """
        if not keep_weights:
            self.clear()
            return None
        if state is None:
            latest = self.load_latest()
            state = latest[1] if latest is not None else None
        final = self.save_final(state) if state is not None else None
        for epoch in self.epochs():
            self.path(epoch).unlink(missing_ok=True)
        self._sweep_temp()
        if final is None:
            log.warning("%r: no valid state to keep as final weights", self)
        return final

    def clear(self) -> None:
        """Delete this trial's folder and everything in it."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _sweep_temp(self) -> None:
        # Our own pid's temp files exist only inside `_write_atomic`, which cleans up.
        if not self.folder.is_dir():
            return
        for p in self.folder.iterdir():
            m = _TEMP_FILE.match(p.name)
            if m and int(m.group(1)) != os.getpid():
                p.unlink(missing_ok=True)


def prune_finished(root: str | Path, study: str, keep_keys: set[str | int]) -> list[Path]:
    """Delete the checkpoint folders of a study's trials whose keys are not in `keep_keys`.

    Only ``<root>/<study>`` is looked at: another study's files, of the same name or
    not, are never touched.

    Args:
        root: Folder holding every study's checkpoints.
        study: The study's folder name (`study_folder`) whose trial folders to prune.
        keep_keys: Keys (trial numbers or names) whose folders stay.

    Returns:
        The folders removed.

    Note:
        Include the keys of running trials, or their checkpoints go too.
    """
    own = Path(root) / _check_name("study folder", study)
    if not own.is_dir():
        return []
    keep = {key_name(k) for k in keep_keys}
    removed = []
    for folder in sorted(own.iterdir()):
        if folder.is_dir() and folder.name not in keep:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def keep_best(
    root: str | Path,
    study: str,
    *,
    live: set[int],
    finished: list[tuple[float, int]],
    keep: int,
) -> list[Path]:
    """The retention policy of a study's checkpoints: disk use stays bounded.

    Keeps the folders of `live` trials (running, or queued to resume) and of the `keep`
    best `finished` ones, given as (value, key) pairs, the lower key first among equal
    values; deletes every other trial folder of the study. Returns the folders removed.
    """
    # Ties go to the earlier trial, as they do when the best trial is chosen (the first
    # of equal values): the trial `export` picks keeps its weights.
    ranked = sorted(finished, key=lambda pair: (-pair[0], pair[1]))
    best = {key for _, key in ranked[:keep]}
    return prune_finished(root, study, live | best)
