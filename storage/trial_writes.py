"""Trial writes that are safe to repeat after a lost reply, and dead trials found early.

When a connection drops after the server committed a write but before the reply came
back, the client cannot tell whether the write happened, and the retry runs it again.
For the writes that change who owns a trial, or how many trials there are, running
twice is not harmless: a claim would be lost (the trial RUNNING with nobody on it), a
trial or a retry created twice. Each of these writes therefore carries a token in the
same transaction, and a repeat first looks for its own token.

`RepeatableWrites` is mixed into `ResilientRDBStorage`, whose `_retry` runs each write.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState

CLAIM_ATTR = "autosearch:claim"  # system attribute: the token of the claim that holds it
CREATE_ATTR = "autosearch:created"  # system attribute: the token of the write that made it
FAILED_BY_ATTR = "autosearch:failed_by"  # system attribute: who failed it as dead
UNSETTLED = object()  # a repeat's check found no trace of the first attempt


class RepeatableWrites:
    """Claim, create, end and fail trials so that a repeated call finds its first try."""

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        """`RDBStorage.set_trial_state_values`; a repeat that finds the trial already
        ended as asked (same state, same values) reports success."""

        def settle() -> Any:
            if not state.is_finished():
                return UNSETTLED
            stored = RDBStorage.get_trial(self, trial_id)
            same = values is None or stored.values == [float(v) for v in values]
            return True if stored.state == state and same else UNSETTLED

        return self._retry(
            "set_trial_state_values",
            lambda: RDBStorage.set_trial_state_values(self, trial_id, state, values),
            settle,
        )

    # ------------------------------------------------------------------------ claims

    def claim_trial(self, trial_id: int, token: str) -> bool:
        """Move a WAITING trial to RUNNING for the caller, with its first heartbeat.

        The state change, a system attribute holding `token` and the heartbeat are one
        transaction, so no claimed trial is ever without a heartbeat (a worker that
        dies right after claiming leaves a trial that goes stale like any other). A
        repeat after a lost reply finds `token` and reports the claim as its own.

        Returns:
            True when the trial is now this caller's; False when another took it.
        """
        return self._retry("claim_trial", lambda: self._claim(trial_id, token))

    def _claim(self, trial_id: int, token: str) -> bool:
        with _create_scoped_session(self.scoped_session) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
            if trial.state != TrialState.WAITING:
                return trial.state == TrialState.RUNNING and _holds(
                    session, trial, CLAIM_ATTR, token
                )
            trial.state = TrialState.RUNNING
            trial.datetime_start = datetime.now()
            # A retry inherits its predecessor's token; this overwrites it.
            self._set_trial_attr_without_commit(
                session, models.TrialSystemAttributeModel, trial_id, CLAIM_ATTR, token
            )
            if self.heartbeat_interval is not None:
                beat = models.TrialHeartbeatModel.where_trial_id(trial_id, session, True)
                if beat is None:
                    session.add(models.TrialHeartbeatModel(trial_id=trial_id))
                else:
                    beat.heartbeat = session.execute(sqlalchemy.func.now()).scalar()
        return True

    # ----------------------------------------------------------------- dead trials

    def fail_stale_trial(self, trial_id: int, token: str, user_attrs: dict[str, Any]) -> bool:
        """Fail a RUNNING trial whose worker is gone, recording `user_attrs` (why).

        One transaction; a repeat after a lost reply finds `token`. Returns True when
        this call failed the trial, so that exactly one caller queues its retry; False
        when it had ended already or another process failed it.
        """
        return self._retry(
            "fail_stale_trial", lambda: self._fail_stale(trial_id, token, user_attrs)
        )

    def _fail_stale(self, trial_id: int, token: str, user_attrs: dict[str, Any]) -> bool:
        with _create_scoped_session(self.scoped_session) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
            if trial.state != TrialState.RUNNING:
                return trial.state == TrialState.FAIL and _holds(
                    session, trial, FAILED_BY_ATTR, token
                )
            for key, value in user_attrs.items():
                self._set_trial_attr_without_commit(
                    session, models.TrialUserAttributeModel, trial_id, key, value
                )
            self._set_trial_attr_without_commit(
                session, models.TrialSystemAttributeModel, trial_id, FAILED_BY_ATTR, token
            )
            trial.state = TrialState.FAIL
            trial.datetime_complete = datetime.now()
        return True

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Running trials whose heartbeat is older than the grace period, and running
        trials that never beat at all and started longer than the grace period ago."""
        return self._retry("_get_stale_trial_ids", lambda: self._stale_ids(study_id))

    def _stale_ids(self, study_id: int) -> list[int]:
        stale = RDBStorage._get_stale_trial_ids(self, study_id)
        grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
        with _create_scoped_session(self.scoped_session, True) as session:
            silent = (
                session.query(models.TrialModel.trial_id, models.TrialModel._datetime_start_utc)
                .filter(models.TrialModel.study_id == study_id)
                .filter(models.TrialModel.state == TrialState.RUNNING)
                .filter(
                    ~sqlalchemy.exists().where(
                        models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id
                    )
                )
                .all()
            )
        # The start time is the claiming client's clock, stored as naive UTC. Claims made
        # here always beat at once, so this catches trials started elsewhere (such as by
        # `study.ask()`) that never beat; a few seconds of clock skew do not matter.
        cutoff = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=grace)
        return stale + [t for t, started in silent if started is not None and started < cutoff]

    # -------------------------------------------------------------------- creation

    def _create_new_trial(
        self, study_id: int, template_trial: FrozenTrial | None = None
    ) -> FrozenTrial:
        """`RDBStorage._create_new_trial` (queued slots, enqueued and retried trials):
        a repeat after a lost reply returns the trial the first attempt made."""
        if template_trial is None:  # `study.ask()`: a RUNNING trial that goes stale if doubled
            return self._retry(
                "_create_new_trial", lambda: RDBStorage._create_new_trial(self, study_id)
            )
        token = uuid.uuid4().hex
        template = copy.deepcopy(template_trial)
        template.system_attrs = {**template.system_attrs, CREATE_ATTR: token}

        def settle() -> Any:
            with _create_scoped_session(self.scoped_session) as session:
                found = _trial_with(session, study_id, CREATE_ATTR, token)
                if found is None:
                    return UNSETTLED
                return _frozen_copy(template, found)

        return self._retry("_create_new_trial", lambda: self._create(study_id, template), settle)

    def _create(self, study_id: int, template: FrozenTrial) -> FrozenTrial:
        # One attempt, where Optuna's own method loops up to five times on any failure
        # and so could make the trial twice without our token check in between.
        with _create_scoped_session(self.scoped_session) as session:
            # Locks the study: trial numbers are counted, not drawn from a sequence.
            models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
            trial = self._get_prepared_new_trial(study_id, template, session)
            return _frozen_copy(template, trial)


def _holds(session: Any, trial: Any, key: str, token: str) -> bool:
    attr = models.TrialSystemAttributeModel.find_by_trial_and_key(trial, key, session)
    return attr is not None and attr.value_json == json.dumps(token)


def _trial_with(session: Any, study_id: int, key: str, token: str) -> Any:
    return (
        session.query(models.TrialModel)
        .join(models.TrialSystemAttributeModel)
        .filter(models.TrialModel.study_id == study_id)
        .filter(models.TrialSystemAttributeModel.key == key)
        .filter(models.TrialSystemAttributeModel.value_json == json.dumps(token))
        .one_or_none()
    )


def _frozen_copy(template: FrozenTrial, trial: Any) -> FrozenTrial:
    """What Optuna returns for a created trial: the template with the row's identity."""
    frozen = copy.deepcopy(template)
    frozen.number = trial.number
    frozen.datetime_start = trial.datetime_start
    frozen._trial_id = trial.trial_id
    return frozen
