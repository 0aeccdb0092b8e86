"""Optuna `RDBStorage` set up for many workers: WAL SQLite or bounded PostgreSQL pools.

Workers that die mid-trial are caught by Optuna's heartbeat: a trial whose heartbeat is
older than the grace period is failed by the next worker that starts a trial, and
`RetryHeartbeatStaleTrialCallback` queues a copy with the same parameters and user
attributes. `root_trial_number` maps every copy back to the first trial of its chain,
which is the key under which `storage.checkpoints` keeps that trial's epochs.
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
from autosearch.storage.urls import is_grpc, is_postgres, is_sqlite, mask_url, resolve_url
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

SQLITE_BUSY_TIMEOUT_S = 60  # how long a writer waits for the file lock before failing
PG_MAX_OVERFLOW = 1  # connections a worker may open beyond `pool_size` under a burst
PG_POOL_RECYCLE_S = 1800  # reopen connections older than this; outlives idle-kill proxies
PG_POOL_TIMEOUT_S = 30  # wait for a free pooled connection before raising
PG_CONNECT_TIMEOUT_S = 10  # a wrong host fails in seconds, not after the TCP default
DB_RETRY_S = 300.0  # how long one storage call keeps retrying through a database outage
_BACKOFF_FIRST_S, _BACKOFF_MAX_S = 0.25, 5.0  # doubling waits between retries

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class StorageError(RuntimeError):
    """The study storage cannot be opened. The message names the URL, password masked."""


def _sqlite_is_memory(url: str) -> bool:
    parsed = make_url(url)
    return parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"


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


def _reason(error: BaseException, password: str | None) -> str:
    # SQLAlchemy wraps the driver error and appends the SQL and a help link; the driver's
    # own first line says what went wrong (unknown host, missing database, bad login).
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()
    text = reason[0] if reason else type(error).__name__
    if password:
        text = text.replace(password, "***")
    return text


def is_transient(error: BaseException) -> bool:
    """Whether `error` (or what it wraps) is a lost or refused connection or a lock wait
    that ran out: failures that a later attempt of the same call can get past."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (OperationalError, InterfaceError)):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retrying(method: Callable[..., _T]) -> Callable[..., _T]:
    @functools.wraps(method)
    def call(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> _T:
        give_up = time.monotonic() + self.db_retry_s
        wait = _BACKOFF_FIRST_S
        failures = 0
        while True:
            try:
                result = method(self, *args, **kwargs)
            except Exception as e:
                if not is_transient(e) or time.monotonic() + wait > give_up:
                    raise
                failures += 1
                if failures == 1:
                    log.warning(
                        "storage call %s failed (%s); retrying for up to %.0f s",
                        method.__name__,
                        _reason(e, getattr(self, "_password", None)),
                        self.db_retry_s,
                    )
                time.sleep(wait)
                wait = min(2 * wait, _BACKOFF_MAX_S)
                continue
            if failures:
                log.warning("storage call %s succeeded after %d retries", method.__name__, failures)
            return result

    return call


class ResilientRDBStorage(RDBStorage):
    """`RDBStorage` whose calls survive a database restart or a busy SQLite file.

    Each call that fails with a lost connection, a refused connection or a lock timeout
    is run again, with waits doubling from 0.25 s to 5 s, for up to `db_retry_s`
    seconds; the pool's pre-ping replaces the dead connections. Only the innermost
    methods (those that `optuna.storages._CachedStorage` calls) retry, so one failure
    is never retried twice over. The heartbeat is not retried: the heartbeat thread
    writes again one interval later anyway.

    A write whose commit reached the server but whose reply was lost is run twice.
    For the state change that claims a trial, the second run finds the trial RUNNING
    and reports the claim as lost, so the trial stays RUNNING with no heartbeat and is
    never failed as stale; this needs the connection to drop in the instant between
    commit and reply, and is left as a known, rare gap.
    """

    def __init__(self, *args: Any, db_retry_s: float = DB_RETRY_S, **kwargs: Any) -> None:
        self.db_retry_s = db_retry_s
        super().__init__(*args, **kwargs)
        self._password = make_url(self.url).password

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
    _create_new_trial = _retrying(RDBStorage._create_new_trial)
    _set_trial_param = _retrying(RDBStorage._set_trial_param)
    get_trial_param = _retrying(RDBStorage.get_trial_param)
    set_trial_state_values = _retrying(RDBStorage.set_trial_state_values)
    set_trial_intermediate_value = _retrying(RDBStorage.set_trial_intermediate_value)
    set_trial_user_attr = _retrying(RDBStorage.set_trial_user_attr)
    set_trial_system_attr = _retrying(RDBStorage.set_trial_system_attr)
    get_trial_id_from_study_id_trial_number = _retrying(
        RDBStorage.get_trial_id_from_study_id_trial_number
    )
    get_trial = _retrying(RDBStorage.get_trial)
    _get_trials = _retrying(RDBStorage._get_trials)
    _get_best_trial_id = _retrying(RDBStorage._get_best_trial_id)
    _get_stale_trial_ids = _retrying(RDBStorage._get_stale_trial_ids)


def make_storage(
    url: str | None = None,
    *,
    heartbeat_interval: int | None = 30,
    grace_period: int | None = 120,
    max_retry: int | None = 1,
    pool_size: int = 2,
    db_retry_s: float = DB_RETRY_S,
) -> BaseStorage:
    """Open (creating tables if needed) the Optuna storage at `url`.

    SQLite gets a busy timeout of `SQLITE_BUSY_TIMEOUT_S` and WAL journaling on every
    connection, and its folder is created. PostgreSQL gets a bounded pool. A worker
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
    wal = is_sqlite(resolved) and not _sqlite_is_memory(resolved)
    try:
        if wal:
            Path(make_url(resolved).database).parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # Heartbeats are an experimental Optuna feature that we choose knowingly.
            warnings.simplefilter("ignore", ExperimentalWarning)
            storage = ResilientRDBStorage(
                resolved,
                db_retry_s=db_retry_s,
                engine_kwargs=_engine_kwargs(resolved, pool_size),
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period if heartbeat_interval is not None else None,
                heartbeat_stale_trial_callback=_retry_callback(heartbeat_interval, max_retry),
            )
    except (SQLAlchemyError, ImportError, OSError) as e:
        # `from None`: the chained driver exception may carry connection parameters.
        raise StorageError(
            f"cannot open the study storage at {mask_url(resolved)}: "
            f"{_reason(e, make_url(resolved).password)}"
        ) from None
    if wal:
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
        raise StorageError(
            f"{url} is a storage proxy, which needs grpcio ({e.msg}): "
            "pip install 'autosearch[grpc]'"
        ) from None
    return connect_proxy(
        url,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period if heartbeat_interval is not None else None,
        stale_callback=_retry_callback(heartbeat_interval, max_retry),
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


def _retry_callback(
    heartbeat_interval: int | None, max_retry: int | None
) -> RetryHeartbeatStaleTrialCallback | None:
    """Queues a dead worker's trial again, or None when heartbeats or retries are off."""
    if heartbeat_interval is None or max_retry is None:
        return None
    # inherit_intermediate_values=True: the retry resumes from the dead trial's last
    # complete checkpoint (epoch k) and reports only epochs after k, so the inherited
    # values for epochs <= k plus the new ones form one curve without gaps for the
    # pruner. The trainer should report an epoch after its checkpoint is written; if
    # it reports first and dies before the write, that epoch is trained again and
    # Optuna ignores (with a warning) the second report of a step, so no duplicates.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(
            max_retry=max_retry, inherit_intermediate_values=True
        )


def root_trial_number(trial: optuna.trial.BaseTrial | FrozenTrial) -> int:
    """The number of the first trial in `trial`'s retry chain, or its own if not a retry.

    A retried trial gets a new number; keying checkpoints by this root number lets the
    retry find the epochs its dead predecessor saved.

    Args:
        trial: A live `optuna.trial.Trial`, a `FrozenTrial`, or a `FixedTrial` (which
            is never a retry).

    Returns:
        The trial number that started the chain.
    """
    if isinstance(trial, optuna.trial.Trial):
        # A live trial exposes no system attributes; the storage holds them, copied onto
        # the retry by the callback when it was queued.
        frozen = trial.study._storage.get_trial(trial._trial_id)
    elif isinstance(trial, FrozenTrial):
        frozen = trial
    else:
        return trial.number
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        first = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        history = RetryHeartbeatStaleTrialCallback.retry_history(frozen)
    if first is not None:
        return first
    return history[0] if history else frozen.number
