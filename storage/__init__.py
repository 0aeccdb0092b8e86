"""Where things are kept: study storage URLs and names, the Optuna storage (and a
read-only view of it), training checkpoints.

The checkpoint names (`CheckpointStore` and friends) load torch, so they are imported on
first use: a storage proxy or a status command never pays for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from autosearch.storage.names import StudyNameError, check_study_name
from autosearch.storage.optuna_storage import (
    PermanentStorageError,
    ResilientRDBStorage,
    StorageError,
    StorageUnavailableError,
    is_transient,
    make_storage,
    root_trial_number,
)
from autosearch.storage.readonly import ReadOnlyStorage, ReadOnlyStorageError
from autosearch.storage.urls import (
    DEFAULT_DB_FILE,
    StorageURLError,
    is_memory,
    is_postgres,
    is_sqlite,
    mask_url,
    resolve_url,
    sqlite_file,
)

__all__ = [
    "DEFAULT_DB_FILE",
    "DEFAULT_ROOT",
    "CheckpointError",
    "CheckpointStore",
    "PermanentStorageError",
    "ReadOnlyStorage",
    "ReadOnlyStorageError",
    "ResilientRDBStorage",
    "StorageError",
    "StorageURLError",
    "StorageUnavailableError",
    "StudyNameError",
    "check_study_name",
    "is_memory",
    "is_postgres",
    "is_sqlite",
    "is_transient",
    "make_storage",
    "mask_url",
    "prune_finished",
    "read_checkpoint",
    "resolve_url",
    "root_trial_number",
    "sqlite_file",
]

_CHECKPOINTS = ("DEFAULT_ROOT", "CheckpointError", "CheckpointStore", "prune_finished")
_CHECKPOINTS += ("read_checkpoint",)


def __getattr__(name: str) -> Any:
    if name in _CHECKPOINTS:
        value = getattr(importlib.import_module("autosearch.storage.checkpoints"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autosearch.storage' has no attribute {name!r}")
