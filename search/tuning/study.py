"""Studies: samplers, pruners, creating or resuming a study, and its stored settings."""

from __future__ import annotations

import logging
import shutil
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
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

log = logging.getLogger(__name__)


SAMPLERS = ("tpe", "random", "cmaes", "gp")


PRUNERS = ("median", "hyperband", "sha", "none")


SPACE_ATTR = "space"


FINGERPRINT_ATTR = "space_fingerprint"


MAX_PARAMS_ATTR = "max_params"


RUN_ATTR = "run_settings"


SEED_ATTR = "seed_config"  # user attribute of enqueued seed trials: index into space.seeds


UID_ATTR = "study_uid"  # a UUID made with the study: its identity beyond name and storage


class StudyError(ValueError):
    """A study cannot be created or resumed as asked."""


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
    """--space FILE, else --preset, else the study's name as a preset, else the stored one."""
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
    raise StudyError(
        f"study {study_name!r} is new and not a preset name: pass --preset "
        f"({', '.join(SPACES)}) or --space FILE"
    )


def make_sampler(name: str, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler called `name`, seeded so that the same seed gives the same trials."""
    if name == "tpe":
        # multivariate + group model the conditional parameters (per-stage widths exist
        # only for the drawn stage count); constant_liar spreads parallel workers apart.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed,
                multivariate=True,
                group=True,
                constant_liar=True,
                n_startup_trials=10,
            )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        # CMA-ES handles the numeric parameters; categorical ones fall back to random.
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise StudyError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")


def sampler_seed(seed: int, *, finished: int, worker: int = 0) -> int:
    """The sampler seed for a process that joins a study holding `finished` trials.

    A fresh study's first process uses `seed` itself, so one seed gives one sequence
    of trials. A resumed study or a second worker mixes in the trial count and the
    worker index; otherwise a rerun with the same --seed would draw the same random
    start-up trials again, and parallel workers would draw each other's.
    """
    if finished == 0 and worker == 0:
        return seed
    return int(np.random.SeedSequence([seed, finished, worker]).generate_state(1)[0])


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    """The pruner called `name`; the resource is the epoch (1 to `max_epochs`)."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max(max_epochs, 1), reduction_factor=3
        )
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise StudyError(f"unknown pruner {name!r}; choose from {', '.join(PRUNERS)}")


def open_study(
    name: str,
    storage: optuna.storages.BaseStorage | str,
    space: SearchSpace,
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    max_params: int = 5_000_000,
) -> optuna.Study:
    """Create the study, or resume it when it exists with the same space and budget.

    Only the process that creates the study enqueues the space's seed configurations,
    so they run once however many workers join; a seed the space cannot rebuild exactly
    is left out with a warning. Resuming with another space or budget
    raises `StudyError` before anything is written.
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
        check_compatible(study, space, max_params)
        return study
    study.set_user_attr(UID_ATTR, uuid.uuid4().hex)
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


def check_compatible(study: optuna.Study, space: SearchSpace, max_params: int) -> None:
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
    if attrs[FINGERPRINT_ATTR] != space.fingerprint():
        stored = attrs.get(SPACE_ATTR, {}).get("name", "?")
        raise StudyError(
            f"study {study.study_name!r} was created with space {stored!r} "
            f"(fingerprint {attrs[FINGERPRINT_ATTR]}), not with space {space.name!r} "
            f"(fingerprint {space.fingerprint()}); use another --study name or the same "
            "space and --epochs"
        )
    if attrs.get(MAX_PARAMS_ATTR) != max_params:
        raise StudyError(
            f"study {study.study_name!r} was created with --max-params "
            f"{attrs.get(MAX_PARAMS_ATTR)}, not {max_params}"
        )


@dataclass(frozen=True)
class RunSettings:
    """What every worker of a study must agree on, stored on the study by `start`.

    A worker that joins with `autosearch worker` reads these, so it needs only
    machine-local flags (data folder, GPUs, checkpoint folder).
    """

    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0  # worker i samples with seed + i; trials train with seed + trial number
    subset: int | None = None  # stratified training subset; None: all 50,000 images
    val_size: int = 10_000
    heartbeat_interval: int = 30  # s between heartbeats of a running trial
    grace_period: int = 120  # s without a heartbeat before a trial counts as dead
    deadline: float | None = None  # time.time() after which no worker starts a trial
    track: tuple[str, ...] = ()  # experiment trackers, "mlflow:URI" / "tensorboard:DIR"

    def __post_init__(self) -> None:
        object.__setattr__(self, "track", tuple(self.track))  # a list after JSON
        if self.sampler not in SAMPLERS:
            raise StudyError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise StudyError(f"unknown pruner {self.pruner!r}; choose from {', '.join(PRUNERS)}")
        if self.grace_period <= self.heartbeat_interval:
            raise StudyError(
                f"grace period {self.grace_period} s must exceed the heartbeat interval "
                f"{self.heartbeat_interval} s, or live trials would be failed as dead"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def store_run_settings(study: optuna.Study, settings: RunSettings) -> None:
    """Record the settings of this run; the latest `start` of a study defines them."""
    study.set_user_attr(RUN_ATTR, settings.to_dict())


def load_run_settings(study: optuna.Study) -> RunSettings:
    """The settings `start` stored on `study`; `StudyError` if there are none."""
    data = study.user_attrs.get(RUN_ATTR)
    if data is None:
        raise StudyError(
            f"study {study.study_name!r} holds no run settings; run `autosearch start "
            f"--study {study.study_name}` once before joining workers to it"
        )
    return RunSettings.from_dict(data)


def stored_space_name(study: optuna.Study) -> str | None:
    return study.user_attrs.get(SPACE_ATTR, {}).get("name")
