"""Fixtures for storage tests: a backend switch over SQLite and the PostgreSQL database
of `postgres_test_url` (in tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from autosearch.storage.optuna_storage import make_storage


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage URL for each backend; tests give their studies unique names."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    return request.getfixturevalue("postgres_test_url")


@pytest.fixture
def open_storage(storage_url: str) -> Iterator[Callable[..., optuna.storages.RDBStorage]]:
    """`make_storage` on the backend under test; its connections close at teardown."""
    made: list[optuna.storages.RDBStorage] = []

    def _open(**kwargs: object) -> optuna.storages.RDBStorage:
        storage = make_storage(storage_url, **kwargs)
        made.append(storage)
        return storage

    yield _open
    for storage in made:
        storage.remove_session()
        storage.engine.dispose()


@pytest.fixture
def study_name() -> str:
    """A study name no other test of this session uses (the PostgreSQL database is shared)."""
    return f"study-{uuid.uuid4().hex[:12]}"
