"""Claims, created trials and ended trials survive a lost reply; dead trials are found
even without a heartbeat; permanent database failures fail at once with their cause.

A lost reply is made for real: the write runs and commits, then the call raises the
error a dropped connection gives, so the retry wrapper runs it again.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from autosearch.storage import optuna_storage, stale, trial_writes
from autosearch.storage.optuna_storage import PermanentStorageError, make_storage
from autosearch.storage.trial_writes import CLAIM_ATTR, CREATE_ATTR
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

Open = Callable[..., RDBStorage]
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
optuna.logging.set_verbosity(optuna.logging.WARNING)


class _Dropped(Exception):
    """What the driver raises when the server closed the connection."""


def lose_first_reply(real: Callable) -> Callable:
    """`real`, whose first call commits and then raises as if the reply were lost."""
    calls = []

    def flaky(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(result)
        if len(calls) == 1:
            raise OperationalError("COMMIT", {}, _Dropped("server closed the connection"))
        return result

    flaky.calls = calls
    return flaky


def waiting_slot(study: optuna.Study) -> int:
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING))
    return study.trials[-1]._trial_id


def test_a_claim_whose_reply_is_lost_is_still_ours(open_storage: Open, study_name: str) -> None:
    storage = open_storage(heartbeat_interval=5, grace_period=10)
    study = optuna.create_study(study_name=study_name, storage=storage)
    trial_id = waiting_slot(study)
    storage._claim = lose_first_reply(storage._claim)
    assert storage.claim_trial(trial_id, "worker-a") is True
    assert len(storage._claim.calls) == 2  # it ran again, and found its own token
    frozen = storage.get_trial(trial_id)
    assert frozen.state == TrialState.RUNNING
    assert frozen.system_attrs[CLAIM_ATTR] == "worker-a"
    # The heartbeat came with the claim: the trial can go stale like any other.
    assert storage._get_stale_trial_ids(study._study_id) == []
    assert storage.claim_trial(trial_id, "worker-b") is False  # taken


def test_a_created_trial_whose_reply_is_lost_exists_once(
    open_storage: Open, study_name: str
) -> None:
    storage = open_storage()
    study = optuna.create_study(study_name=study_name, storage=storage)
    storage._create = lose_first_reply(storage._create)
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, user_attrs={"k": 1}))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 1 and trials[0].user_attrs == {"k": 1}
    assert CREATE_ATTR in trials[0].system_attrs
    assert len(storage._create.calls) == 1  # the repeat found the trial instead of making one


def test_a_tell_whose_reply_is_lost_succeeds(
    open_storage: Open, study_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(heartbeat_interval=None)
    study = optuna.create_study(study_name=study_name, storage=storage)
    trial = study.ask()
    flaky = lose_first_reply(RDBStorage.set_trial_state_values)
    monkeypatch.setattr(RDBStorage, "set_trial_state_values", flaky)
    study.tell(trial, 0.5)  # no UpdateFinishedTrialError from the repeat
    monkeypatch.undo()
    frozen = study.trials[0]
    assert frozen.state == TrialState.COMPLETE and frozen.value == 0.5
    assert len(flaky.calls) == 1


def test_a_trial_that_never_beat_goes_stale_after_grace(
    open_storage: Open, study_name: str
) -> None:
    storage = open_storage(heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name=study_name, storage=storage)
    with pytest.warns(UserWarning):
        silent = study.ask()  # RUNNING, and no heartbeat was ever written
    assert storage._get_stale_trial_ids(study._study_id) == []
    time.sleep(3.1)
    assert storage._get_stale_trial_ids(study._study_id) == [silent._trial_id]


def test_a_dead_trial_is_failed_by_exactly_one_caller(open_storage: Open, study_name: str) -> None:
    storage = open_storage(heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name=study_name, storage=storage)
    trial_id = waiting_slot(study)
    assert storage.claim_trial(trial_id, "gone")
    why = {"stopped": "failed", "fail_reason": "no heartbeat"}
    storage._fail_stale = lose_first_reply(storage._fail_stale)
    assert storage.fail_stale_trial(trial_id, "first", why) is True  # found its own commit
    assert storage.fail_stale_trial(trial_id, "second", why) is False
    frozen = storage.get_trial(trial_id)
    assert frozen.state == TrialState.FAIL and frozen.user_attrs == why


def test_a_retry_starts_without_the_dead_attempts_ending(study_name: str) -> None:
    study = optuna.create_study(study_name=study_name)
    attrs = {"arch": {"w": 1}, "stopped": "failed", "fail_reason": "no heartbeat"}
    dead = optuna.trial.create_trial(
        state=TrialState.FAIL, user_attrs=attrs, system_attrs={CLAIM_ATTR: "x", "keep": 1}
    )
    study.add_trial(dead)
    stale.RetryStaleTrial(max_retry=1)(study, study.trials[0])
    retry = study.trials[1]
    assert retry.state == TrialState.WAITING and retry.user_attrs == {"arch": {"w": 1}}
    assert retry.system_attrs["keep"] == 1 and CLAIM_ATTR not in retry.system_attrs


# ------------------------------------------------------------------ permanent errors


def test_a_read_only_database_fails_at_once_with_its_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ro.db"
    make_storage(str(path)).engine.dispose()  # tables exist
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///file:{path}?mode=ro&uri=true"
    storage = make_storage(url, create=False)
    with caplog.at_level(logging.WARNING), pytest.raises(PermanentStorageError) as info:
        optuna.create_study(study_name="s", storage=storage)
    assert "readonly database" in str(info.value)
    assert "invalid data" not in str(info.value)  # Optuna's wrapper text is not the cause
    assert "retrying" not in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro.db"]  # no stray ./file: folder


def test_a_missing_file_is_not_created_when_only_reading(tmp_path: Path) -> None:
    typo = tmp_path / "a" / "b" / "studies.db"
    with pytest.raises(PermanentStorageError, match="does not exist"):
        make_storage(str(typo), create=False)
    assert not (tmp_path / "a").exists()


def test_reason_names_the_driver_error_not_the_wrapper() -> None:
    from autosearch.storage.retries import reason

    try:
        try:
            raise OperationalError("SELECT 1", {}, _Dropped("terminating connection"))
        except OperationalError as e:
            raise optuna.exceptions.StorageInternalError(
                "An exception is raised during the commit. This typically happens due to "
                "invalid data in the commit, e.g. exceeding max length."
            ) from e
    except optuna.exceptions.StorageInternalError as wrapped:
        assert reason(wrapped) == "terminating connection"


# ------------------------------------------------------------------- Optuna's privates


def test_every_private_optuna_name_we_touch_exists() -> None:
    """optuna>=5,<6 is required; this fails first when a release renames what we use."""
    from optuna.storages._rdb import models

    used: set[tuple[object, str]] = set()
    for module in (optuna_storage, trial_writes, stale):
        source = inspect.getsource(module)
        used |= {(RDBStorage, n) for n in re.findall(r"RDBStorage\.(_\w+)", source)}
        used |= {(models, n) for n in re.findall(r"models\.(\w+)", source)}
        used |= {
            (RDBStorage, n) for n in re.findall(r"self\.(_set_trial_attr\w*|_get_\w+)", source)
        }
    names = {
        (models.TrialModel, "_datetime_start_utc"),
        (models.TrialModel, "find_or_raise_by_id"),
        (models.TrialSystemAttributeModel, "find_by_trial_and_key"),
        (models.TrialHeartbeatModel, "where_trial_id"),
        (models.StudyModel, "find_or_raise_by_id"),
        (optuna.storages._rdb.storage, "_create_scoped_session"),
        (optuna.storages._cached_storage._CachedStorage, "_backend"),
        (optuna.Study, "_study_id"),
        (optuna.trial.Trial, "_trial_id"),
    }
    missing = [f"{owner}.{name}" for owner, name in used | names if not _has(owner, name)]
    assert len(used) >= 10 and not missing, missing
    assert int(optuna.__version__.split(".")[0]) == 5


def _has(owner: object, name: str) -> bool:
    if hasattr(owner, name):
        return True
    # Instance attributes of Study and Trial are set in __init__.
    init = getattr(owner, "__init__", None)
    return init is not None and f"self.{name}" in inspect.getsource(init)


def test_pyproject_holds_optuna_to_the_version_the_storage_is_written_for() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert "optuna>=5,<6" in project["dependencies"]
    assert all("<" in d for d in project["dependencies"])  # each held below its next major
