from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from autosearch.storage.optuna_storage import (
    PG_MAX_OVERFLOW,
    StorageError,
    make_storage,
    root_trial_number,
)
from autosearch.storage.urls import mask_url
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

Open = Callable[..., RDBStorage]
SECRET = "hunter2"

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _objective(trial: optuna.trial.Trial) -> float:
    x = trial.suggest_float("x", -1.0, 1.0)
    for step in range(2):
        trial.report(x * x + step, step)
    return x * x


class TestStorage:
    """Runs on every backend that `storage_url` provides."""

    def test_study_runs_and_reopens(self, open_storage: Open, study_name: str) -> None:
        study = optuna.create_study(study_name=study_name, storage=open_storage())
        study.optimize(_objective, n_trials=3)
        again = optuna.load_study(study_name=study_name, storage=open_storage())
        trials = again.get_trials(states=(TrialState.COMPLETE,))
        assert len(trials) == 3
        assert all(t.intermediate_values.keys() == {0, 1} for t in trials)

    def test_heartbeat_settings_applied(self, open_storage: Open) -> None:
        storage = open_storage(heartbeat_interval=5, grace_period=20, max_retry=3)
        assert storage.get_heartbeat_interval() == 5
        assert storage.grace_period == 20
        assert isinstance(
            storage.get_heartbeat_stale_trial_callback(), RetryHeartbeatStaleTrialCallback
        )
        assert storage.engine.pool._pre_ping

    @pytest.mark.parametrize(
        ("kwargs", "interval"),
        [({"heartbeat_interval": None}, None), ({"max_retry": None}, 30)],
    )
    def test_heartbeat_or_retry_disabled(
        self, open_storage: Open, kwargs: dict[str, object], interval: int | None
    ) -> None:
        storage = open_storage(**kwargs)
        assert storage.get_heartbeat_interval() == interval
        assert storage.get_heartbeat_stale_trial_callback() is None

    # study.ask() on a heartbeat storage warns; a real worker runs study.optimize().
    @pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
    def test_stale_trial_is_failed_and_retried(self, open_storage: Open, study_name: str) -> None:
        storage = open_storage(heartbeat_interval=1, grace_period=2, max_retry=1)
        study = optuna.create_study(study_name=study_name, storage=storage)
        dead = study.ask()
        x = dead.suggest_float("x", -1.0, 1.0)
        dead.set_user_attr("spec", {"widths": [16, 32]})
        dead.report(0.5, 0)
        # One beat, then silence: the worker "died" after its first epoch.
        storage.record_heartbeat(dead._trial_id)
        # Heartbeats are compared in whole seconds on SQLite; 3.1 s is stale for any phase.
        time.sleep(3.1)
        fail_stale_trials(study)

        trials = study.get_trials(deepcopy=False)
        assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
        queued = trials[1]
        assert queued.params == {"x": x}
        assert queued.user_attrs == {"spec": {"widths": [16, 32]}}
        assert queued.intermediate_values == {0: 0.5}  # inherited, so the retry resumes
        assert root_trial_number(queued) == dead.number

        retry = study.ask()  # a worker picks the queued copy up
        assert retry.number == queued.number != dead.number
        assert retry.suggest_float("x", -1.0, 1.0) == x
        assert root_trial_number(retry) == dead.number
        assert root_trial_number(dead) == dead.number

        # max_retry=1: a retry that dies too is not queued again.
        storage.get_heartbeat_stale_trial_callback()(study, study.trials[retry.number])
        assert len(study.trials) == 2

    def test_bad_heartbeat_settings(self, storage_url: str) -> None:
        with pytest.raises(ValueError, match="grace_period=2"):
            make_storage(storage_url, heartbeat_interval=2, grace_period=2)
        with pytest.raises(ValueError, match="pool_size=0"):
            make_storage(storage_url, pool_size=0)


def test_root_of_a_chain_of_retries() -> None:
    study = optuna.create_study()
    study.add_trial(optuna.create_trial(state=TrialState.FAIL))
    attrs = {"failed_trial": 0, "retry_history": [0, 1]}
    study.add_trial(optuna.create_trial(state=TrialState.FAIL, system_attrs=attrs))
    first, second = study.trials
    assert root_trial_number(first) == 0
    assert root_trial_number(second) == 0
    assert root_trial_number(optuna.trial.FixedTrial({"x": 0.0}, number=4)) == 4


# ---- SQLite specifics ----------------------------------------------------------------


def test_sqlite_wal_busy_timeout_and_folder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "studies.db"
    storage = make_storage(str(path))
    try:
        study = optuna.create_study(storage=storage)
        study.optimize(_objective, n_trials=2)
        with storage.engine.connect() as conn:
            pragma = conn.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert pragma("PRAGMA busy_timeout").scalar() == 60_000
    finally:
        storage.remove_session()
        storage.engine.dispose()
    # WAL is a property of the file, so a plain connection sees it as well.
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()


def test_sqlite_in_memory_still_works() -> None:
    storage = make_storage("sqlite:///:memory:", heartbeat_interval=None)
    study = optuna.create_study(storage=storage)
    study.optimize(_objective, n_trials=2)
    assert len(study.trials) == 2


def test_sqlite_unusable_folder_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="cannot open the study storage"):
        make_storage(str(blocker / "studies.db"))


# ---- connection errors and PostgreSQL specifics --------------------------------------


def test_unreachable_server_error_masks_password(caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql://bob:{SECRET}@127.0.0.1:1/nodb"  # port 1: refused at once
    with caplog.at_level(logging.DEBUG), pytest.raises(StorageError) as info:
        make_storage(url)
    message = str(info.value)
    assert mask_url(url.replace("postgresql", "postgresql+psycopg")) in message
    assert SECRET not in message and SECRET not in caplog.text
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.postgres
def test_missing_database_error_masks_password(postgres_test_url: str) -> None:
    url = make_url(postgres_test_url).set(password=SECRET, database="no_such_db_here")
    with pytest.raises(StorageError, match="no_such_db_here") as info:
        make_storage(url.render_as_string(hide_password=False))
    assert SECRET not in str(info.value)
    assert ":***@" in str(info.value)


@pytest.mark.postgres
def test_postgres_pool_is_bounded(postgres_test_url: str) -> None:
    storage = make_storage(postgres_test_url, pool_size=3)
    try:
        pool = storage.engine.pool
        assert pool.size() == 3
        assert pool._max_overflow == PG_MAX_OVERFLOW
        assert pool._recycle > 0
    finally:
        storage.remove_session()
        storage.engine.dispose()


def test_a_stuck_session_over_a_lost_connection_is_transient() -> None:
    """A server restart ends connections mid-query; Optuna's trial read then retries on
    the same session and raises "can't reconnect until invalid transaction is rolled
    back". Only the error under it says the connection was lost, and that decides."""
    import psycopg
    from autosearch.storage.retries import is_transient
    from sqlalchemy.exc import OperationalError, PendingRollbackError, ProgrammingError

    def chain(inner: BaseException) -> PendingRollbackError:
        try:
            try:
                raise inner
            except Exception:  # chained implicitly, as in Optuna's fallback read
                raise PendingRollbackError("Can't reconnect until rolled back")  # noqa: B904
        except PendingRollbackError as outer:
            return outer

    lost = OperationalError(
        "SELECT 1", {}, psycopg.errors.AdminShutdown("terminating connection"),
        connection_invalidated=True,
    )  # fmt: skip
    missing = ProgrammingError("SELECT 1", {}, psycopg.errors.UndefinedTable("no table"))
    assert is_transient(chain(lost))
    assert not is_transient(chain(missing))
    assert not is_transient(PendingRollbackError("rolled back"))
