"""Optuna `RDBStorage` set up for many workers: WAL SQLite or bounded PostgreSQL pools.

Calls ride out database outages (`storage.retries` says which failures are worth
another try), claims of queued trials are atomic and carry their first heartbeat, and
dead workers' trials are found and queued again (`storage.stale`).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from autosearch.storage.retries import (
    PermanentStorageError,
    StorageError,
    StorageUnavailableError,
    database_error,
    is_transient,
    reason,
)
from autosearch.storage.stale import retry_callback, root_trial_number
from autosearch.storage.trial_writes import UNSETTLED, RepeatableWrites
from autosearch.storage.urls import (
    is_grpc,
    is_postgres,
    is_sqlite,
    mask_url,
    resolve_url,
    sqlite_file,
)
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, RDBStorage
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

SQLITE_BUSY_TIMEOUT_S = 60  # how long a writer waits for the file lock before failing
PG_MAX_OVERFLOW = 1  # connections a worker may open beyond `pool_size` under a burst
PG_POOL_RECYCLE_S = 1800  # reopen connections older than this; outlives idle-kill proxies
PG_POOL_TIMEOUT_S = 30  # wait for a free pooled connection before raising
PG_CONNECT_TIMEOUT_S = 10  # a wrong host fails in seconds, not after the TCP default
DB_RETRY_S = 300.0  # how long one storage call keeps retrying through a database outage
_BACKOFF_FIRST_S, _BACKOFF_MAX_S = 0.25, 5.0  # doubling waits between retries

log = logging.getLogger(__name__)
_T = TypeVar("_T")

__all__ = [
    "PermanentStorageError",
    "ResilientRDBStorage",
    "StorageError",
    "StorageUnavailableError",
    "is_transient",
    "make_storage",
    "root_trial_number",
]


def _engine_kwargs(url: str, pool_size: int) -> dict[str, Any]:
    # Pre-ping costs one round trip per checkout and saves a trial from a connection the
    # server or a proxy closed while the worker was training for minutes.
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if is_sqlite(url):
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    elif is_postgres(url):
        kwargs.update(
            pool_size=pool_size,
            max_overflow=PG_MAX_OVERFLOW,
            pool_recycle=PG_POOL_RECYCLE_S,
            pool_timeout=PG_POOL_TIMEOUT_S,
            connect_args={
                "connect_timeout": PG_CONNECT_TIMEOUT_S,
                "application_name": "autosearch",
            },
        )
    return kwargs


def _use_wal(engine: Engine) -> None:
    """Put every connection of `engine`, present and future, in WAL mode, and make each
    transaction take the write lock when it begins.

    WAL lets readers (the dashboard, other workers sampling) proceed while one worker
    writes; synchronous=NORMAL is durable against a process crash in WAL mode, which is
    the failure we guard against, and spares an fsync per commit. WAL needs a local
    filesystem: put the database file on local disk, not NFS.

    Python's sqlite3 starts a transaction only at the first write, so Optuna's
    read-then-write claim of a WAITING trial is not atomic across processes: two
    workers could both read WAITING and both mark it RUNNING. ``BEGIN IMMEDIATE``
    takes the lock before the read; other writers wait for it under the busy timeout.
    Transactions are milliseconds long, so serialising them costs little for a few
    local workers.
    """

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level: the "begin" hook below opens transactions.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    # RDBStorage already opened a connection (table creation) before the listener existed;
    # dropping the pool makes the next checkout a fresh connection that runs the pragmas.
    engine.dispose()


def _retrying(method: Callable[..., _T]) -> Callable[..., _T]:
    def call(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> _T:
        return self._retry(method.__name__, lambda: method(self, *args, **kwargs))

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


class ResilientRDBStorage(RepeatableWrites, RDBStorage):
    """`RDBStorage` whose calls survive a database restart or a busy SQLite file.

    Each call that fails with a lost connection, a refused connection or a lock timeout
    is run again, with waits doubling from 0.25 s to 5 s, for up to `db_retry_s`
    seconds; the pool's pre-ping replaces the dead connections. A permanent failure (a
    read-only file, a refused login, a missing table) raises `PermanentStorageError` at
    once, and an outage longer than the window `StorageUnavailableError`; both name
    the database's own reason. Only the innermost methods (those that
    `optuna.storages._CachedStorage` calls) retry, so one failure is never retried twice
    over. The heartbeat is not retried: the heartbeat thread writes again one interval
    later anyway.

    A write whose commit reached the server but whose reply was lost is run again. The
    writes that matter are safe to repeat (`storage.trial_writes`): claims, created
    trials and dead trials failed carry a token and find their own earlier commit;
    ending a trial finds it already ended as asked; intermediate values, attributes and
    heartbeats overwrite themselves.
    """

    def __init__(self, *args: Any, db_retry_s: float = DB_RETRY_S, **kwargs: Any) -> None:
        self.db_retry_s = db_retry_s
        super().__init__(*args, **kwargs)
        self._password = make_url(self.url).password

    def _retry(
        self, name: str, call: Callable[[], _T], settle: Callable[[], Any] | None = None
    ) -> _T:
        """Run `call`, again on transient failures. Before each repeat, `settle()` may
        find that the failed attempt took effect after all and return its result (else
        `UNSETTLED`)."""
        give_up = time.monotonic() + self.db_retry_s
        wait, failures = _BACKOFF_FIRST_S, 0
        while True:
            try:
                settled = settle() if failures and settle is not None else UNSETTLED
                result = call() if settled is UNSETTLED else settled
            except Exception as e:
                if database_error(e) is None:
                    raise  # Optuna's own answer: no such study, a finished trial, ...
                why = reason(e, self._password)
                where = mask_url(self.url)
                if not is_transient(e):
                    raise PermanentStorageError(
                        f"the study storage at {where} refused {name}: {why}"
                    ) from None
                if time.monotonic() + wait > give_up:
                    raise StorageUnavailableError(
                        f"the study storage at {where} failed {name} for "
                        f"{self.db_retry_s:.0f} s: {why}"
                    ) from None
                failures += 1
                if failures == 1:
                    log.warning(
                        "storage call %s failed (%s); retrying for up to %.0f s",
                        name,
                        why,
                        self.db_retry_s,
                    )
                time.sleep(wait)
                wait = min(2 * wait, _BACKOFF_MAX_S)
                continue
            if failures:
                how = "found its first attempt done" if settled is not UNSETTLED else "succeeded"
                log.warning("storage call %s %s after %d retries", name, how, failures)
            return result

    # Leaf methods only: the public wrappers around them (create_new_trial,
    # get_all_trials, set_trial_param, get_best_trial) call these.
    create_new_study = _retrying(RDBStorage.create_new_study)
    delete_study = _retrying(RDBStorage.delete_study)
    set_study_user_attr = _retrying(RDBStorage.set_study_user_attr)
    set_study_system_attr = _retrying(RDBStorage.set_study_system_attr)
    get_study_id_from_name = _retrying(RDBStorage.get_study_id_from_name)
    get_study_name_from_id = _retrying(RDBStorage.get_study_name_from_id)
    get_study_directions = _retrying(RDBStorage.get_study_directions)
    get_study_user_attrs = _retrying(RDBStorage.get_study_user_attrs)
    get_study_system_attrs = _retrying(RDBStorage.get_study_system_attrs)
    get_trial_user_attrs = _retrying(RDBStorage.get_trial_user_attrs)
    get_trial_system_attrs = _retrying(RDBStorage.get_trial_system_attrs)
    get_all_studies = _retrying(RDBStorage.get_all_studies)
    _set_trial_param = _retrying(RDBStorage._set_trial_param)
    get_trial_param = _retrying(RDBStorage.get_trial_param)
    set_trial_intermediate_value = _retrying(RDBStorage.set_trial_intermediate_value)
    set_trial_user_attr = _retrying(RDBStorage.set_trial_user_attr)
    set_trial_system_attr = _retrying(RDBStorage.set_trial_system_attr)
    get_trial_id_from_study_id_trial_number = _retrying(
        RDBStorage.get_trial_id_from_study_id_trial_number
    )
    get_trial = _retrying(RDBStorage.get_trial)
    _get_trials = _retrying(RDBStorage._get_trials)
    _get_best_trial_id = _retrying(RDBStorage._get_best_trial_id)


def make_storage(
    url: str | None = None,
    *,
    heartbeat_interval: int | None = 30,
    grace_period: int | None = 120,
    max_retry: int | None = 1,
    pool_size: int = 2,
    db_retry_s: float = DB_RETRY_S,
    create: bool = True,
) -> BaseStorage:
    """Open the Optuna storage at `url`, creating its tables (and SQLite file) if asked.

    SQLite gets a busy timeout of `SQLITE_BUSY_TIMEOUT_S` and WAL journaling on every
    connection; with `create` its folder and file are made. PostgreSQL gets a bounded pool. A worker
    process uses at most ``pool_size + PG_MAX_OVERFLOW`` connections: Optuna keeps one
    session per thread, and a worker has two threads that touch the database (the
    trial loop and the heartbeat), so the default ``2 + 1 = 3`` leaves one spare. N
    workers therefore hold at most ``3 * N`` connections; with PostgreSQL's default
    ``max_connections = 100`` (3 reserved for superusers) that is about 30 workers, plus
    room for a dashboard. Raise ``max_connections`` or lower `pool_size` for more.

    Args:
        url: Storage URL or SQLite file path; see `storage.urls.resolve_url` for the
            fallbacks when None.
        heartbeat_interval: Seconds between heartbeats of a running trial; None disables
            heartbeats, and with them the detection and retry of dead workers' trials.
        grace_period: Seconds without a heartbeat before a running trial counts as dead
            and is failed; must exceed `heartbeat_interval`. None means twice the
            interval.
        max_retry: How many times a dead worker's trial is queued again with the same
            parameters; None disables retries.
        pool_size: Persistent PostgreSQL connections per worker process.
        db_retry_s: How long a storage call retries through lost connections and lock
            timeouts (a database restart) before it raises; 0 disables retrying.
        create: Make the SQLite file and the tables when missing. Commands that only read
            or join a study pass False: a mistyped path is then an error, not a new file.

    Returns:
        A `ResilientRDBStorage`, ready for `optuna.create_study(storage=...)`; for a
        ``grpc://host:port`` URL, a `storage.proxy.ProxyStorage` client of that proxy
        (whose database has its own pool, and its own retries of `db_retry_s`).

    Raises:
        StorageURLError: `url` is not a storage URL.
        StorageError: The database cannot be reached or opened.
        ValueError: A heartbeat setting is out of range.

    Example:
        >>> storage = make_storage("sqlite:////tmp/demo/autosearch.db")  # doctest: +SKIP
        >>> study = optuna.create_study(study_name="demo", storage=storage)  # doctest: +SKIP
    """
    resolved = resolve_url(url)
    _check_settings(heartbeat_interval, grace_period, pool_size, db_retry_s)
    if is_grpc(resolved):
        return _connect_proxy(resolved, heartbeat_interval, grace_period, max_retry, db_retry_s)
    path = sqlite_file(resolved) if is_sqlite(resolved) else None
    _check_sqlite_file(resolved, path, create)
    try:
        if path is not None and create:
            path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # Heartbeats are an experimental Optuna feature that we choose knowingly.
            warnings.simplefilter("ignore", ExperimentalWarning)
            storage = ResilientRDBStorage(
                resolved,
                db_retry_s=db_retry_s,
                engine_kwargs=_engine_kwargs(resolved, pool_size),
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period if heartbeat_interval is not None else None,
                heartbeat_stale_trial_callback=retry_callback(heartbeat_interval, max_retry),
                skip_table_creation=not create,
            )
    except (SQLAlchemyError, ImportError, OSError, RuntimeError) as e:
        # RuntimeError: Optuna's schema check (tables of another Optuna version).
        # `from None`: the chained driver exception may carry connection parameters.
        kind = StorageError if is_transient(e) else PermanentStorageError
        raise kind(
            f"cannot open the study storage at {mask_url(resolved)}: "
            f"{reason(e, make_url(resolved).password)}"
        ) from None
    if path is not None:
        _use_wal(storage.engine)
    return storage


def _connect_proxy(
    url: str,
    heartbeat_interval: int | None,
    grace_period: int | None,
    max_retry: int | None,
    db_retry_s: float,
) -> BaseStorage:
    try:
        from autosearch.storage.proxy import connect_proxy
    except ImportError as e:
        raise PermanentStorageError(
            f"{url} is a storage proxy, which needs grpcio ({e.msg}): "
            "pip install 'autosearch[grpc]'"
        ) from None
    return connect_proxy(
        url,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period if heartbeat_interval is not None else None,
        stale_callback=retry_callback(heartbeat_interval, max_retry),
        # The proxy retries a database outage for its own db_retry_s; outwait it.
        wait_s=2 * db_retry_s,
    )


def close_storage(storage: BaseStorage) -> None:
    """Release what `storage` holds: its database connections, or its proxy channel."""
    if isinstance(storage, RDBStorage):
        storage.remove_session()
        storage.engine.dispose()
    elif hasattr(storage, "close"):
        storage.close()


def _check_sqlite_file(url: str, path: Path | None, create: bool) -> None:
    if path is None or create:
        return
    if not path.is_file():
        raise PermanentStorageError(
            f"no study storage at {mask_url(url)}: {path} does not exist (check the path; "
            "`autosearch start` creates it)"
        )


def _check_settings(
    heartbeat_interval: int | None, grace_period: int | None, pool_size: int, db_retry_s: float
) -> None:
    if heartbeat_interval is not None and grace_period is not None:
        if grace_period <= heartbeat_interval:
            raise ValueError(
                f"grace_period={grace_period} s must exceed heartbeat_interval="
                f"{heartbeat_interval} s, or live trials would be failed as dead"
            )
    if pool_size < 1:
        raise ValueError(f"pool_size={pool_size} must be at least 1")
    if db_retry_s < 0:
        raise ValueError(f"db_retry_s={db_retry_s} must be non-negative")
