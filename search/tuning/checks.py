"""Checks on a session's request, all made before any storage, folder or file is touched.

`start` and `worker` refuse a bad study name, number, device, data folder, space or
storage URL with one `StudyError` naming the value, and nothing is written: no SQLite
file, no study row, no data or log folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from autosearch.search.space import SPACES, SearchSpace, SpaceError, get_space, load_space
from autosearch.search.training.datasets import (
    DataError,
    DataSource,
    SourceInfo,
    describe_source,
    parse_data,
)
from autosearch.search.training.device import resolve_device
from autosearch.search.training.sources import DataNotFoundError
from autosearch.search.tuning.settings import PRUNERS, SAMPLERS, StudyError
from autosearch.search.tuning.slots import LaunchError, parse_gpus, plan_slots, visible_gpus
from autosearch.search.tuning.tracking import parse_tracks
from autosearch.storage.names import StudyNameError, check_study_name
from autosearch.storage.urls import (
    StorageURLError,
    is_memory,
    is_sqlite,
    mask_url,
    resolve_url,
    sqlite_file,
)

TRAIN_IMAGES = 50_000  # CIFAR's training split, from which validation is held out
MAX_SEED = 2**32 - 1  # NumPy and the samplers take seeds below 2**32


def _integer(flag: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StudyError(f"{flag} must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise StudyError(f"{flag} must be {span}, got {value}")
    return value


def study_name(name: Any) -> str:
    try:
        return check_study_name(name)
    except StudyNameError as e:
        raise StudyError(str(e)) from None


def storage_url(url: str | None, *, shared: bool, must_exist: bool) -> str:
    """The resolved URL, refused when an in-memory database would have to be shared
    between processes, or when it must exist (to read or join a study) and does not."""
    try:
        resolved = resolve_url(url)
    except StorageURLError as e:
        raise StudyError(str(e)) from None
    if is_memory(resolved) and (shared or must_exist):
        raise StudyError(
            f"{mask_url(resolved)} is an in-memory database, which only this process sees: "
            "give a SQLite file or a PostgreSQL URL to share a study between processes"
        )
    path = sqlite_file(resolved) if is_sqlite(resolved) else None
    if must_exist and path is not None and not path.is_file():
        raise StudyError(
            f"no study storage at {mask_url(resolved)}: {path} does not exist; check the "
            "path (`autosearch start` creates it)"
        )
    return resolved


def placement(p: Any) -> None:
    """Where trials run on this machine: workers, GPUs or device, and folders."""
    _integer("--workers", p.workers, 1)
    _integer("--max-restarts", p.max_restarts, 0)
    if p.gpus is not None and p.workers > 1:
        raise StudyError(
            "give --gpus (with --workers-per-gpu) or --workers (CPU workers), not both"
        )
    try:
        if p.gpus is not None:
            if p.workers_per_gpu != "auto":
                plan_slots(["0"], p.workers_per_gpu, 1)  # the number alone
            parse_gpus(p.gpus, visible_gpus())
        else:
            resolve_device(p.device)
    except (LaunchError, ValueError) as e:
        raise StudyError(str(e)) from None
    for flag, folder in (("--checkpoint-dir", p.checkpoint_dir), ("--log-dir", p.log_dir)):
        if folder is not None and Path(folder).expanduser().is_file():
            raise StudyError(f"{flag} {folder!r} is a file, not a folder")


def _source(text: str | None, data_dir: str | None, image_size: int | None) -> DataSource:
    try:
        return parse_data(text, data_dir=data_dir, image_size=image_size)
    except DataError as e:
        raise StudyError(str(e)) from None


def _describe(source: DataSource, *, locate: bool = True) -> SourceInfo:
    try:
        return describe_source(source, locate=locate)
    except (DataError, DataNotFoundError) as e:
        raise StudyError(str(e)) from None


def data_settings(subset: Any, val_size: Any, info: SourceInfo | None = None) -> None:
    """--subset and --val-size against the data's training images (CIFAR's 50,000
    when `info` does not count them)."""
    total = info.train_images if info is not None and info.train_images else TRAIN_IMAGES
    classes = info.num_classes if info is not None else 10
    if subset is not None:
        # two images per class: one to train on, one to validate
        _integer("--subset", subset, 2 * classes, total)
    # A search scores trials on validation accuracy: without a validation split every
    # trial would end without a value.
    if val_size is not None:
        _integer("--val-size", val_size, 1, total - 1)


def start_data(r: Any) -> tuple[DataSource, SourceInfo]:
    """The data a `StartRequest` names, found and described, with its split checked.

    With `enqueue_only` CIFAR need not be on this machine (its name is its identity);
    a folder or npz must be, to record what it holds.
    """
    source = _source(r.placement.data, r.placement.data_dir, r.image_size)
    info = _describe(source, locate=not r.enqueue_only)
    data_settings(r.subset, r.val_size, info)
    return source, info


def settings_source(run: Any, data: Any, p: Any) -> DataSource:
    """The data a study trains on, read where this machine keeps it: its own --data (a
    folder or npz kept in another place) or the study's, CIFAR in --data-dir. `run` and
    `data` are the study's `RunSettings` and `DataSettings`."""
    text = p.data or run.data
    kind = text.partition(":")[0].lower()
    cifar = kind in ("cifar10", "cifar100")
    size = data.image_size if kind == "folder" else None  # CIFAR and npz keep their own
    return _source(text, p.data_dir if cifar else None, size)


def joined_data(run: Any, data: Any, p: Any) -> DataSource:
    """`settings_source`, refused unless it is the study's data (by its identity)."""
    source = settings_source(run, data, p)
    info = _describe(source)
    if info.identity != data.source:
        raise StudyError(
            f"--data {source.spec} here is {info.identity}, but the study trains on "
            f"{run.data} ({data.source}); point --data at the same data"
        )
    return source


def space(study: str, preset: str | None, space_file: str | None) -> SearchSpace | None:
    """The space from --space, --preset or the study's name; None when it is the one
    stored on an existing study, or the default preset for a new one."""
    try:
        if space_file is not None:
            return load_space(space_file)
        if preset is not None:
            return get_space(preset)
    except SpaceError as e:
        raise StudyError(str(e)) from None
    return SPACES.get(study)


def start_request(r: Any) -> SearchSpace | None:
    """Check a `StartRequest`; returns its space (None: the stored one) and raises
    `StudyError` naming the first bad value. Nothing is opened or written."""
    study_name(r.study)
    _integer("--trials", r.trials, 0)
    if r.timeout is not None and (
        isinstance(r.timeout, bool) or not math.isfinite(r.timeout) or r.timeout <= 0
    ):
        raise StudyError(
            f"--timeout must be a positive number of seconds, got {r.timeout!r} "
            "(leave it out for no time limit)"
        )
    if r.epochs is not None:
        _integer("--epochs", r.epochs, 1, 10_000)
    _integer("--max-params", r.max_params, 1)
    if r.seed is not None:
        _integer("--seed", r.seed, 0, MAX_SEED)
    _integer("--heartbeat", r.heartbeat, 1)
    _integer("--grace", r.grace, r.heartbeat + 1)
    if r.sampler not in SAMPLERS:
        raise StudyError(f"unknown sampler {r.sampler!r}; choose from {', '.join(SAMPLERS)}")
    if r.pruner not in PRUNERS:
        raise StudyError(f"unknown pruner {r.pruner!r}; choose from {', '.join(PRUNERS)}")
    parse_tracks(r.track)
    data_settings(r.subset, r.val_size)
    chosen = space(r.study, r.preset, r.space_file)
    storage_url(r.storage, shared=r.enqueue_only or r.placement.launching, must_exist=False)
    placement(r.placement)
    return chosen


def join_request(r: Any) -> str:
    """Check a `JoinRequest`; returns the storage URL, which must exist already."""
    study_name(r.study)
    if r.worker_index is not None:
        _integer("--worker-index", r.worker_index, 0)
    if r.placement.track is not None:
        parse_tracks(r.placement.track)
    url = storage_url(r.storage, shared=True, must_exist=True)
    placement(r.placement)  # the data is checked against the study's (`joined_data`)
    return url
