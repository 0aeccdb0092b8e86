"""Fixtures for storage tests: a throwaway PostgreSQL database and a backend switch.

`postgres_test_url` depends on nothing else in this file, so it can move to a shared
conftest unchanged.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from storage.optuna_storage import make_storage
from storage.urls import resolve_url

PG_ENV = "AUTOSEARCH_TEST_PG"


@pytest.fixture(scope="session")
def postgres_test_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this test session, dropped afterwards.

    The server comes from `AUTOSEARCH_TEST_PG`, a URL whose user may CREATE DATABASE
    (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``). Tests that use
    this fixture are skipped when the variable is unset.
    """
    admin = os.environ.get(PG_ENV)
    if not admin:
        pytest.skip(f"{PG_ENV} is not set; PostgreSQL tests skipped")
    admin_url = make_url(resolve_url(admin))
    name = f"autosearch_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    # CREATE/DROP DATABASE cannot run inside a transaction; NullPool leaves no idle
    # connection behind to hold the server's slots.
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            # A storage a test forgot to dispose would otherwise block the DROP.
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        engine.dispose()


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
