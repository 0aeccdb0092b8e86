"""Studies: creating or resuming one, its space, budget, data settings and identity.

Samplers (`tuning.samplers`), pruners (`tuning.pruners`) and the stored settings
(`tuning.settings`) live in their own modules; their public names are here too.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
from autosearch.search.space import (
    SPACES,
    SearchSpace,
    SpaceError,
    get_space,
    load_space,
    seed_params,
    space_from_stored,
)
from autosearch.search.tuning.pruners import make_pruner
from autosearch.search.tuning.samplers import make_sampler
from autosearch.search.tuning.settings import (
    DATA_ATTR,
    PRUNERS,
    RUN_ATTR,
    SAMPLERS,
    DataSettings,
    RunSettings,
    StudyError,
    load_data_settings,
    load_run_settings,
    store_run_settings,
    stored_data_settings,
    stored_run_settings,
)

__all__ = [
    "DATA_ATTR",
    "FINGERPRINT_ATTR",
    "MAX_PARAMS_ATTR",
    "PRUNERS",
    "RUN_ATTR",
    "SAMPLERS",
    "SEED_ATTR",
    "SPACE_ATTR",
    "UID_ATTR",
    "DataSettings",
    "RunSettings",
    "StudyError",
    "check_compatible",
    "choose_space",
    "delete_study",
    "load_data_settings",
    "load_existing",
    "load_run_settings",
    "make_pruner",
    "make_sampler",
    "open_study",
    "store_run_settings",
    "stored_run_settings",
    "stored_space_name",
    "study_uid",
]

log = logging.getLogger(__name__)

DEFAULT_PRESET = "zigzag"  # the space of a new study that names none

SPACE_ATTR = "space"


FINGERPRINT_ATTR = "space_fingerprint"


MAX_PARAMS_ATTR = "max_params"


SEED_ATTR = "seed_config"  # user attribute of enqueued seed trials: index into space.seeds


UID_ATTR = "study_uid"  # a UUID made with the study: its identity beyond name and storage


# ---------------------------------------------------------------------- opening


def load_existing(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """The study called `name`, or a `StudyError` that lists the studies there are."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise StudyError(
            f"no study named {name!r} in this storage; studies: {', '.join(names) or 'none'}"
        ) from None


def choose_space(
    study_name: str, preset: str | None, space_file: str | None, storage
) -> SearchSpace:
    """--space FILE, else --preset, else the study's name as a preset, else the space
    stored on the existing study, else `DEFAULT_PRESET` for a new one."""
    try:
        if space_file is not None:
            return load_space(space_file)
        if preset is not None:
            return get_space(preset)
        if study_name in SPACES:
            return SPACES[study_name]
    except SpaceError as e:
        raise StudyError(str(e)) from None
    if study_name in optuna.get_all_study_names(storage):
        stored = optuna.load_study(study_name=study_name, storage=storage).user_attrs
        if SPACE_ATTR in stored:
            return space_from_stored(stored[SPACE_ATTR])
        raise StudyError(f"study {study_name!r} was not created by autosearch (no space recorded)")
    return SPACES[DEFAULT_PRESET]


def open_study(
    name: str,
    storage: optuna.storages.BaseStorage | str,
    space: SearchSpace,
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    max_params: int = 5_000_000,
    data: DataSettings | None = None,
) -> optuna.Study:
    """Create the study, or resume it when it exists with the same space, budget and
    data settings (`data` None: the defaults on a new study, any on an existing one).

    Only the process that creates the study enqueues the space's seed configurations,
    so they run once however many workers join; a seed the space cannot rebuild exactly
    is left out with a warning. Resuming with another space, budget or data settings
    raises `StudyError`, naming each change, before anything is written.
    """
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            direction="maximize",
            load_if_exists=False,
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        check_compatible(study, space, max_params, data)
        if (
            data is not None and DATA_ATTR not in study.user_attrs
        ):  # made before data settings were kept
            study.set_user_attr(DATA_ATTR, data.to_dict())
        return study
    study.set_user_attr(UID_ATTR, uuid.uuid4().hex)
    study.set_user_attr(DATA_ATTR, (data or DataSettings()).to_dict())
    study.set_user_attr(SPACE_ATTR, space.to_dict())
    study.set_user_attr(MAX_PARAMS_ATTR, max_params)
    seeds, left_out = seed_params(space, max_params=max_params)
    for line in left_out:
        log.warning("%s", line)
    for i, params in seeds.items():
        study.enqueue_trial(params, user_attrs={SEED_ATTR: i})
    # The fingerprint goes last: a worker that loads the study meanwhile waits for it.
    study.set_user_attr(FINGERPRINT_ATTR, space.fingerprint())
    return study


def study_uid(study: optuna.Study) -> str:
    """The study's identity: a UUID stored on it when it was made.

    Checkpoints are filed under it, so a study of the same name in another storage, or
    one deleted and made again, never shares them. A study made outside autosearch gets
    its identity on first use.
    """
    uid = study.user_attrs.get(UID_ATTR)
    if uid is None:
        study.set_user_attr(UID_ATTR, uuid.uuid4().hex)
        # Read back: when two workers race to make it, both use the one stored last.
        uid = study.user_attrs[UID_ATTR]
    return str(uid)


def delete_study(
    name: str, storage: optuna.storages.BaseStorage, checkpoint_dir: str | Path | None
) -> Path | None:
    """Remove study `name` with its trials, then its checkpoint folder under
    `checkpoint_dir`; returns the folder removed, if there was one.

    The database goes first: should that fail, the checkpoints are still there.
    """
    from autosearch.storage.checkpoints import study_folder  # torch: only when deleting

    study = load_existing(name, storage)
    uid = study.user_attrs.get(UID_ATTR)
    optuna.delete_study(study_name=name, storage=storage)
    if uid is None or checkpoint_dir is None:
        return None
    folder = Path(checkpoint_dir) / study_folder(name, str(uid))
    if not folder.is_dir():
        return None
    shutil.rmtree(folder)
    return folder


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    """'key old -> new' for each leaf that differs between two JSON-like values."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            found += _differences(old.get(key), new.get(key), where)
        return found
    return [] if old == new else [f"{path} {old!r} -> {new!r}"]


def check_compatible(
    study: optuna.Study, space: SearchSpace, max_params: int, data: DataSettings | None = None
) -> None:
    """Refuse to resume `study` with another space, budget or data settings, naming each
    setting that changed with its old and new value."""
    attrs = study.user_attrs
    for _ in range(50):  # the creator may still be writing its attributes
        if FINGERPRINT_ATTR in attrs:
            break
        time.sleep(0.1)
        attrs = study.user_attrs
    else:
        raise StudyError(
            f"study {study.study_name!r} was not created by autosearch (no space recorded)"
        )
    changes = []
    if attrs[FINGERPRINT_ATTR] != space.fingerprint():
        asked = json.loads(json.dumps(space.to_dict()))  # lists, as the stored copy has
        found = _differences(attrs.get(SPACE_ATTR, {}), asked)
        changes += [f"space {c}" for c in found[:6]] + (["..."] if len(found) > 6 else [])
        if not found:
            changes.append(f"space fingerprint {attrs[FINGERPRINT_ATTR]} -> {space.fingerprint()}")
    if attrs.get(MAX_PARAMS_ATTR) != max_params:
        changes.append(f"max params {attrs.get(MAX_PARAMS_ATTR)} -> {max_params}")
    stored = stored_data_settings(attrs)
    if data is not None and stored is not None:
        changes += stored.changes(data)
    if changes:
        raise StudyError(
            f"study {study.study_name!r} was made with other settings ({'; '.join(changes)}); "
            "resume it with the study's own (space and --epochs, --max-params, --subset, "
            "--val-size, --seed) or use another --study name"
        )


def stored_space_name(study: optuna.Study) -> str | None:
    return study.user_attrs.get(SPACE_ATTR, {}).get("name")
