"""What a study is run with, stored on the study: its data settings and its run settings.

The data settings (source, training subset, validation size, split seed) are fixed when
the study is made: every trial of a study is scored on the same validation split, so a
resume that asks for another split is refused (`study.check_compatible`), naming each
changed setting. The run
settings (sampler, pruner, heartbeat, deadline, trackers) belong to the latest `start`:
a change of sampler or pruner is allowed, with a notice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Self

import optuna

SAMPLERS = ("tpe", "random", "cmaes", "gp")


PRUNERS = ("median", "quartile", "hyperband", "sha", "none")


RUN_ATTR = "run_settings"


DATA_ATTR = "data_settings"


DEFAULT_SPLIT_SEED = 0  # a new study's split seed when --seed is not given


class StudyError(ValueError):
    """A study cannot be created or resumed as asked."""


class _Stored:
    """Settings kept as a JSON dict in a study's user attributes. Keys a newer or older
    version wrote and this one lacks are skipped, so an old study stays readable."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class DataSettings(_Stored):
    """Which images a study's trials train on and are scored on; fixed for its life."""

    # The data's identity (`training.datasets`): "cifar10", "cifar100", or a digest of
    # a folder's files or an npz, the same wherever the data is kept.
    source: str = "cifar10"
    image_size: int = 32  # the side images are trained at (folders are resized to it)
    subset: int | None = None  # stratified training subset; None: all training images
    val_size: int = 10_000  # validation images held out of the training split
    split_seed: int = DEFAULT_SPLIT_SEED  # the split's seed; trials train with it + number

    def changes(self, new: DataSettings) -> list[str]:
        """One 'name old -> new' phrase per setting that differs in `new`."""
        return [
            f"{f.name.replace('_', ' ')} {getattr(self, f.name)!r} -> {getattr(new, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(new, f.name)
        ]


@dataclass(frozen=True)
class RunSettings(_Stored):
    """What every worker of a study must agree on, stored on the study by `start`.

    A worker that joins with `autosearch worker` reads these, so it needs only
    machine-local flags (data folder, GPUs, checkpoint folder).
    """

    sampler: str = "tpe"
    pruner: str = "median"
    # The sampler's seed: trial n draws from the stream of (seed, n). None: every
    # process seeds from the operating system.
    seed: int | None = None
    heartbeat_interval: int = 30  # s between heartbeats of a running trial
    grace_period: int = 120  # s without a heartbeat before a trial counts as dead
    deadline: float | None = None  # time.time() after which no worker starts a trial
    track: tuple[str, ...] = ()  # experiment trackers, "mlflow:URI" / "tensorboard:DIR"
    # --data as the latest `start` gave it (folder: and npz: with the path on that
    # machine): a worker reads it unless given its own --data. The data's identity is
    # in the data settings.
    data: str = "cifar10"

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

    def notice(self, previous: RunSettings | None) -> str | None:
        """One line naming a changed sampler or pruner since `previous`, or None."""
        if previous is None:
            return None
        changed = [
            f"{name} {getattr(previous, name)} -> {getattr(self, name)}"
            for name in ("sampler", "pruner")
            if getattr(previous, name) != getattr(self, name)
        ]
        return f"note: this run changes the study's {', '.join(changed)}" if changed else None


def store_run_settings(study: optuna.Study, settings: RunSettings) -> None:
    """Record the settings of this run; the latest `start` of a study defines them."""
    study.set_user_attr(RUN_ATTR, settings.to_dict())


def stored_run_settings(attrs: dict[str, Any]) -> RunSettings | None:
    """The run settings in a study's user attributes, or None when it holds none."""
    data = attrs.get(RUN_ATTR)
    return RunSettings.from_dict(data) if data is not None else None


def load_run_settings(study: optuna.Study) -> RunSettings:
    """The settings `start` stored on `study`; `StudyError` if there are none."""
    settings = stored_run_settings(study.user_attrs)
    if settings is None:
        raise StudyError(
            f"study {study.study_name!r} holds no run settings; run `autosearch start "
            f"--study {study.study_name}` once before joining workers to it"
        )
    return settings


def stored_data_settings(attrs: dict[str, Any]) -> DataSettings | None:
    """The data settings in a study's user attributes, or None when it holds none.

    Studies made before data settings were kept apart stored them in the run settings.
    """
    if DATA_ATTR in attrs:
        return DataSettings.from_dict(attrs[DATA_ATTR])
    run = attrs.get(RUN_ATTR)
    if run is None:
        return None
    return DataSettings(
        subset=run.get("subset"),
        val_size=run.get("val_size", DataSettings.val_size),
        split_seed=run.get("seed") or DEFAULT_SPLIT_SEED,
    )


def load_data_settings(study: optuna.Study) -> DataSettings:
    """The data settings of `study`; `StudyError` if there are none."""
    data = stored_data_settings(study.user_attrs)
    if data is None:
        raise StudyError(
            f"study {study.study_name!r} holds no data settings; run `autosearch start "
            f"--study {study.study_name}` once before joining workers to it"
        )
    return data
