"""A study storage that can be read and never written, for the dashboard.

optuna-dashboard serves an unauthenticated HTTP API that can delete and rename studies,
tell trials and write notes. Served on `ReadOnlyStorage`, every such request fails
with `ReadOnlyStorageError` before it reaches the database, and nothing changes.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any

from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState


class ReadOnlyStorageError(PermissionError):
    """A write was attempted through a read-only storage."""


class ReadOnlyStorage(BaseStorage):
    """Every read of `storage`; every write raises `ReadOnlyStorageError`.

    Example:
        >>> served = ReadOnlyStorage(make_storage(url, create=False))  # doctest: +SKIP
        >>> optuna_dashboard.run_server(served)  # doctest: +SKIP
    """

    def __init__(self, storage: BaseStorage) -> None:
        self._inner = storage

    def _refuse(self, what: str) -> Any:
        raise ReadOnlyStorageError(f"this storage is read-only: {what} is not allowed")

    # ---------------------------------------------------------------------- writes

    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        return self._refuse(f"creating study {study_name!r}")

    def delete_study(self, study_id: int) -> None:
        self._refuse(f"deleting study {study_id}")

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._refuse(f"setting attribute {key!r} of study {study_id}")

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._refuse(f"setting attribute {key!r} of study {study_id}")

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._refuse(f"adding a trial to study {study_id}")

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any
    ) -> None:
        self._refuse(f"setting parameter {param_name!r} of trial {trial_id}")

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        return self._refuse(f"ending trial {trial_id}")

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        self._refuse(f"reporting a value of trial {trial_id}")

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._refuse(f"setting attribute {key!r} of trial {trial_id}")

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._refuse(f"setting attribute {key!r} of trial {trial_id}")

    # ----------------------------------------------------------------------- reads

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._inner.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._inner.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._inner.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._inner.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._inner.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._inner.get_all_studies()

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._inner.get_trial(trial_id)

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        return self._inner.get_all_trials(study_id, deepcopy=deepcopy, states=states)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._inner.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def remove_session(self) -> None:
        self._inner.remove_session()
