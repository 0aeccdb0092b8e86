"""What a session is asked to do, and how it ended: plain data, no work.

`StartRequest` is `autosearch start`, `JoinRequest` is `autosearch worker`, and both
carry a `Placement`: where this machine runs trials. `Outcome` is how a session ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import optuna
from autosearch.models import DEFAULT_MAX_PARAMS
from autosearch.search.tuning.slots import Slot


@dataclass(frozen=True)
class Placement:
    """Where this machine runs trials: one process here, or launched worker processes.

    `gpus` ("all" or indices like "0,1") with `workers_per_gpu` (a number or "auto")
    launches GPU workers; `workers` > 1 launches CPU workers; otherwise the trials run
    in this process on `device`.
    """

    gpus: str | None = None
    workers_per_gpu: str = "1"
    workers: int = 1
    device: str = "auto"
    data_dir: str | None = None  # where CIFAR is (see training.sources)
    checkpoint_dir: str = "checkpoints"
    max_restarts: int = 3
    log_dir: str = "logs"
    track: tuple[str, ...] | None = None  # this machine's trackers; None: the study's
    data: str | None = None  # --data; None: CIFAR-10 for `start`, the study's for workers

    @property
    def launching(self) -> bool:
        return self.gpus is not None or self.workers > 1

    def worker_args(self, study: str) -> list[str]:
        """The flags of `autosearch worker` that are this machine's business."""
        args = ["--study", study, "--device", self.device, "--checkpoint-dir", self.checkpoint_dir]
        if self.data_dir is not None:
            args += ["--data-dir", self.data_dir]
        if self.data is not None:
            args += ["--data", self.data]
        if self.track is not None:
            args += [a for spec in self.track or ("none",) for a in ("--track", spec)]
        return args


@dataclass(frozen=True)
class StartRequest:
    """Everything `autosearch start` is asked to do.

    The space is `space_file` (TOML), else `preset`, else the study's own name as a
    preset, else the space stored on an existing study, else `zigzag` for a new one.
    `seed` seeds the sampler (trial n draws from the stream of (seed, n)) and, on a
    new study, the data split; None seeds the sampler from the operating system and
    keeps a resumed study's split seed (0 on a new study).
    """

    study: str
    storage: str | None = None
    preset: str | None = None
    space_file: str | None = None
    trials: int = 20
    timeout: float | None = None  # s after which no new trial starts
    epochs: int | None = None  # pins the space's epoch range
    max_params: int = DEFAULT_MAX_PARAMS
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int | None = None
    subset: int | None = None
    val_size: int | None = None  # None: a fifth of the training images (10,000 of CIFAR)
    image_size: int | None = None  # folder: images are resized to this side (32)
    heartbeat: int = 30
    grace: int = 120
    placement: Placement = field(default_factory=Placement)
    enqueue_only: bool = False
    track: tuple[str, ...] = ()  # "mlflow:URI", "tensorboard:DIR"; stored for the workers


@dataclass(frozen=True)
class JoinRequest:
    """Everything `autosearch worker` is asked to do; the rest comes from the study."""

    study: str
    storage: str | None = None
    # Names this worker in logs; set by the launcher. With a launching placement: the
    # first launched worker's index. Seeds do not depend on it (`tuning.samplers`).
    worker_index: int | None = None
    placement: Placement = field(default_factory=Placement)


@dataclass
class Outcome:
    """How a session ended.

    `mode` is "queued" (only enqueued), "here" (ran in this process) or "launched".
    `left` counts trials still WAITING or RUNNING after launched workers stopped.
    """

    study: optuna.Study
    url: str
    mode: str
    trials_run: int = 0
    interrupted: bool = False
    left: int = 0
    timed_out: bool = False
    crashes: int = 0
    restarts: int = 0
    given_up: list[Slot] = field(default_factory=list)
    log_dir: Path | None = None
