"""Which database failures are worth another try, and saying what really went wrong.

A storage call can fail three ways. Optuna's own answers (no such study, a finished
trial, a duplicate name) are part of its contract and pass through untouched. A
transient failure (the server restarting, a dropped connection, a busy SQLite file) is
retried with doubling waits. A permanent one (a read-only file, a refused login, a
missing table, a schema from another Optuna) fails at once: waiting does not fix it.
Either way the message names the driver's own first line, never Optuna's wrapper text
("An exception is raised during the commit...").
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)

# SQLite reports every failure as OperationalError; only these words mean "try later".
_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "busy")
# PostgreSQL SQLSTATE classes that no retry gets past: 28 bad login, 3D missing
# database, 42 missing table or privilege, 25 read-only transaction.
_PG_PERMANENT = ("28", "3D", "42", "25")


class StorageError(RuntimeError):
    """The study storage cannot be opened or used. The message names the URL, password
    masked, and the database's own reason."""


class PermanentStorageError(StorageError):
    """A failure that retrying cannot fix: read-only, permission, schema, a bad login."""


class StorageUnavailableError(StorageError):
    """A transient failure that lasted longer than the retry window."""


def causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and everything it was raised from, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def database_error(error: BaseException) -> SQLAlchemyError | None:
    """The SQLAlchemy error behind `error` when it is a database failure; None for
    Optuna's own answers and for integrity races, which Optuna handles itself."""
    for e in causes(error):
        if isinstance(e, IntegrityError):
            return None
        if isinstance(e, SQLAlchemyError):
            return e
    return None


def _sqlstate(error: SQLAlchemyError) -> str:
    orig = getattr(error, "orig", None)
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")


def is_transient(error: BaseException) -> bool:
    """Whether `error` (or what it wraps) is a lost or refused connection or a lock wait
    that ran out: failures that a later attempt of the same call can get past.

    The whole chain counts: when a server restart drops a connection mid-query, a
    caller that goes on with the same session (Optuna's `_get_trials` does, on its
    fallback path) raises "can't reconnect until invalid transaction is rolled back",
    and only the error under it says the connection was lost.
    """
    for e in causes(error):
        if isinstance(e, IntegrityError):
            return False
        if isinstance(e, SQLAlchemyError) and _transient(e):
            return True
    return False


def _transient(db: SQLAlchemyError) -> bool:
    if isinstance(db, DBAPIError) and db.connection_invalidated:
        return True
    if not isinstance(db, (OperationalError, InterfaceError)):
        return False
    if type(getattr(db, "orig", None)).__module__ == "sqlite3":
        text = str(db.orig).lower()
        return any(word in text for word in _SQLITE_TRANSIENT)
    return not _sqlstate(db).startswith(_PG_PERMANENT)


def reason(error: BaseException, password: str | None = None) -> str:
    """The first line of the innermost driver error: what the database said.

    SQLAlchemy appends the SQL and a help link, and Optuna wraps commit failures in a
    generic sentence about "invalid data"; neither says what went wrong.
    """
    chain = list(causes(error))
    driver = [getattr(e, "orig", None) for e in chain if getattr(e, "orig", None) is not None]
    innermost = driver[-1] if driver else chain[-1]
    lines = str(innermost).strip().splitlines()
    text = lines[0] if lines else type(innermost).__name__
    if password:
        text = text.replace(password, "***")
    return text
