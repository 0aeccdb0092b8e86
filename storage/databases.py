"""Throw-away PostgreSQL databases, for tests and benchmarks that need a clean study."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from autosearch.storage.urls import resolve_url
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool


@contextmanager
def temporary_database(admin_url: str, prefix: str = "autosearch_tmp") -> Iterator[str]:
    """Create a uniquely named database on `admin_url`'s server; drop it afterwards.

    `admin_url` must name a user allowed to CREATE DATABASE. Yields the new database's
    URL (with its password: it is for connecting, not for printing).
    """
    admin = make_url(resolve_url(admin_url))
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    # CREATE/DROP DATABASE cannot run inside a transaction; NullPool leaves no idle
    # connection behind to hold the server's slots.
    engine = create_engine(admin, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            # A storage someone forgot to dispose would otherwise block the DROP.
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        engine.dispose()
