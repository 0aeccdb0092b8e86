"""The Optuna objective: sample, check the budget, train, report and record.

One `Objective` serves every trial of a worker process. It loads the data once, on the
first trial that passes the budget check, so an infeasible trial never touches data or
the GPU.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import optuna
import torch
from autosearch.models import ArchSpec, build_model, count_flops, count_params
from autosearch.search.space import SearchSpace, sample
from autosearch.search.training.data import CifarData, prepare_data
from autosearch.search.training.datasets import DataSource, describe_source, parse_data
from autosearch.search.training.device import resolve_device
from autosearch.search.training.recipe import TrainRecipe
from autosearch.search.training.trainer import EpochReport, TrainResult, train
from autosearch.search.tuning.outcomes import (
    DIVERGED,
    FAILED,
    FINISHED,
    INFEASIBLE,
    PRUNED,
    TrialFailed,
)
from autosearch.search.tuning.study import SEED_ATTR, study_uid
from autosearch.storage.checkpoints import CheckpointStore, keep_best, study_folder
from autosearch.storage.stale import root_trial_number

log = logging.getLogger(__name__)


KEEP_BEST_WEIGHTS = 3  # final weights kept for this many best trials


@dataclass(frozen=True)
class RunConfig:
    """Everything a worker needs besides the trial: the space and where data lives.

    `data` is a `DataSource` or a --data value (default CIFAR-10, found in `data_dir`);
    its class count and image size shape every sampled architecture. `val_size` None
    holds out a fifth of the training images for validation.
    """

    space: SearchSpace
    max_params: int = 5_000_000
    device: str = "auto"
    data_dir: str | None = None
    subset: int | None = None
    val_size: int | None = 10_000
    seed: int = 0
    checkpoint_dir: str | None = "checkpoints"  # None: no checkpoints, no resume
    data: DataSource | str | None = None


Trainer = Callable[..., TrainResult]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def _record_config(
    trial: optuna.Trial, arch: ArchSpec, recipe: TrainRecipe, scale: int, max_params: int
) -> int:
    """Store what the trial trains and its budget constraint; returns the count."""
    params = count_params(arch)
    trial.set_user_attr("arch", arch.to_dict())
    trial.set_user_attr("recipe", recipe.to_dict())
    trial.set_user_attr("params", params)
    trial.set_user_attr("flops", count_flops(arch))
    # The widths the trial's shape and fill came to (for display; the params fix them).
    trial.set_user_attr("widths", list(arch.widths))
    trial.set_user_attr("width_scale", scale)
    # Feasible when <= 0; the samplers learn from the sign and size.
    trial.set_constraint("params", float(params - max_params))
    return params


def _record_result(trial: optuna.Trial, result: TrainResult, wall_seconds: float) -> None:
    trial.set_user_attr("epochs_run", result.epochs_run)
    trial.set_user_attr("best_val_acc", result.best_val_acc)
    trial.set_user_attr("final_val_acc", result.final_val_acc)
    trial.set_user_attr("train_seconds", result.wall_time)
    trial.set_user_attr("wall_seconds", wall_seconds)
    trial.set_user_attr("images_per_s", result.images_per_s)


EpochListener = Callable[[optuna.Trial, EpochReport], None]


class _EpochReporter:
    """The trainer's per-epoch callback: report to the pruner, tell the listeners (an
    experiment tracker), stop when the pruner says so."""

    def __init__(self, trial: optuna.Trial, listeners: Sequence[EpochListener] = ()) -> None:
        self.trial = trial
        self.listeners = listeners
        self.first = True
        self.pruned = False

    def __call__(self, report: EpochReport) -> bool:
        if self.first:
            # The first epoch trained by this trial, as opposed to inherited ones.
            self.trial.set_user_attr("first_epoch", report.epoch)
            self.first = False
        self.trial.report(report.val_acc, report.epoch)
        self.trial.set_user_attr("epochs_run", report.epoch)
        for listener in self.listeners:
            listener(self.trial, report)
        # Optuna's percentile pruners answer with a numpy bool, which the trainer, asking
        # `is True`, would not take for a stop.
        self.pruned = bool(self.trial.should_prune())
        return self.pruned


class Objective:
    """Callable objective for `study.optimize`.

    Args:
        config: The run's space, budget, device and data settings.
        trainer: The training function; the default is `search.trainer.train`. Tests
            pass a recording stand-in to prove infeasible trials never reach it.
        data: Already prepared data, for tests and for callers that share one copy.
        epoch_listeners: Called with the trial and its `EpochReport` after each epoch is
            reported (`tuning.tracking` logs epochs to MLflow or TensorBoard this way).
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        trainer: Trainer = train,
        data: CifarData | None = None,
        epoch_listeners: Sequence[EpochListener] = (),
    ):
        self.config = config
        self.trainer = trainer
        self._data = data
        self.epoch_listeners = tuple(epoch_listeners)
        self._device: torch.device | None = None
        self.source = parse_data(config.data, data_dir=config.data_dir)
        self._shape: tuple[int, int] | None = None

    @property
    def device(self) -> torch.device:
        if self._device is None:
            self._device = resolve_device(self.config.device)
        return self._device

    def data(self) -> CifarData:
        if self._data is None:
            c = self.config
            self._data = prepare_data(
                source=self.source,
                val_size=c.val_size,
                subset=c.subset,
                seed=c.seed,
                device=self.device,
            )
        return self._data

    def data_shape(self) -> tuple[int, int]:
        """(classes, image side) of the data, known without decoding an image."""
        if self._shape is None:
            if self._data is not None:
                self._shape = (self._data.num_classes, self._data.image_size)
            else:
                info = describe_source(self.source)
                self._shape = (info.num_classes, info.image_size)
        return self._shape

    def suggest(self, trial: optuna.Trial) -> tuple[ArchSpec, TrainRecipe, int]:
        """Sample the trial's configuration for the data's classes and image size. A
        seed trial's parameters rebuild its seed exactly (`seed_params`); it only takes
        the seed's names."""
        classes, size = self.data_shape()
        s = sample(
            trial,
            self.config.space,
            max_params=self.config.max_params,
            num_classes=classes,
            input_size=size,
        )
        index = trial.user_attrs.get(SEED_ATTR)
        if index is not None:
            arch_name, recipe_name = self.config.space.seeds[int(index)]
            arch, recipe = replace(s.arch, name=arch_name), s.recipe.replace(name=recipe_name)
            return arch, recipe, s.scale
        return s.arch, s.recipe, s.scale

    def __call__(self, trial: optuna.Trial) -> float:
        arch, recipe, scale = self.suggest(trial)
        params = _record_config(trial, arch, recipe, scale, self.config.max_params)
        if params > self.config.max_params:
            # Ended as PRUNED with no value, not COMPLETE with a made-up score: Optuna's
            # own tools (optuna-dashboard, `optuna trials`) then show no accuracy for
            # it, and TPE still ranks it below every feasible trial by its constraint.
            trial.set_user_attr("stopped", INFEASIBLE)
            raise optuna.TrialPruned(
                f"{params:,} parameters, over the limit of {self.config.max_params:,}"
            )
        trial.set_user_attr("device", _device_name(self.device))
        # Which process runs it: to find the log, or the process, of a trial gone wrong.
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        store = self._checkpoints(trial)
        reporter = _EpochReporter(trial, self.epoch_listeners)
        started = time.perf_counter()
        model, result = self._train(trial, arch, recipe, store, reporter)
        _record_result(trial, result, time.perf_counter() - started)
        if result.status == "diverged":
            if store is not None:
                store.clear()
            return self._fail(trial, DIVERGED, result.message or "non-finite loss")
        if reporter.pruned:
            trial.set_user_attr("stopped", PRUNED)
            self._finish_checkpoints(trial, store, model, keep=False)
            raise optuna.TrialPruned(f"pruned after epoch {result.epochs_run}")
        trial.set_user_attr("stopped", FINISHED)
        self._finish_checkpoints(trial, store, model, keep=True, value=result.final_val_acc)
        return result.final_val_acc

    def _train(
        self,
        trial: optuna.Trial,
        arch: ArchSpec,
        recipe: TrainRecipe,
        store: CheckpointStore | None,
        reporter: _EpochReporter,
    ) -> tuple[torch.nn.Module, TrainResult]:
        """Build the model and train it, resuming from the chain's last checkpoint."""
        # A retry trains with its chain's first number: the same seed, the same run.
        root = store.key if store is not None else root_trial_number(trial)
        resume = self._resume_state(trial, store, arch, recipe) if store is not None else None
        seed = self.config.seed + root
        # Initial weights come from the global generator: seed it like the trainer, so a
        # trial (and its retry) can be rebuilt exactly.
        torch.manual_seed(seed)
        model = build_model(arch)
        try:
            result = self.trainer(
                model,
                self.data(),
                recipe,
                device=self.device,
                seed=seed,
                callback=reporter,
                # The arch rides along with the recipe: a checkpoint says what made it.
                on_checkpoint=(
                    (lambda s: store.save(int(s["epoch"]), {**s, "arch": arch.to_dict()}))
                    if store
                    else None
                ),
                resume=resume,
            )
        except torch.OutOfMemoryError as e:
            del model
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if store is not None:
                store.clear()
            self._fail(trial, FAILED, f"out of memory: {str(e).splitlines()[0]}")
        return model, result

    # -------------------------------------------------------------------- helpers

    @staticmethod
    def _resume_state(
        trial: optuna.Trial, store: CheckpointStore, arch: ArchSpec, recipe: TrainRecipe
    ) -> dict[str, Any] | None:
        """The newest valid checkpoint of this trial's chain, or None to start afresh.

        Damaged files are skipped (and named in the "skipped_checkpoints" attribute), and
        so is a checkpoint of another architecture or recipe than this trial's.
        Epochs the checkpoint holds but the trial never reported (the worker died
        between writing the checkpoint and reporting) are reported now, so the curve
        has no gap; epochs already reported are left alone, so it has no duplicate.
        """
        found = store.load_latest(map_location="cpu")
        skipped = list(store.skipped)
        if found is not None:
            epoch, resume = found
            ours = {"arch": arch.to_dict(), "recipe": recipe.to_dict()}
            wrong = [k for k, v in ours.items() if resume.get(k) != v]
            if wrong:
                # Never load weights into another network: refuse, start afresh, and drop
                # the files so that the new run's epochs are the newest ones there.
                skipped.append(f"{store.path(epoch).name}: made for another {' and '.join(wrong)}")
                log.warning("trial %d: %s; starting afresh", trial.number, skipped[-1])
                store.clear()
                found = None
        if skipped:
            trial.set_user_attr("skipped_checkpoints", skipped)
        if found is None:
            return None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is already reported")
            for r in resume.get("history", []):
                trial.report(float(r["val_acc"]), int(r["epoch"]))
        trial.set_user_attr("resumed_from_epoch", epoch)
        log.info("trial %d resumes after epoch %d", trial.number, epoch)
        return resume

    @staticmethod
    def _fail(trial: optuna.Trial, why: str, message: str):
        trial.set_user_attr("stopped", why)
        trial.set_user_attr("fail_reason", message)
        raise TrialFailed(f"trial {trial.number} {why}: {message}")

    def _checkpoints(self, trial: optuna.Trial) -> CheckpointStore | None:
        if self.config.checkpoint_dir is None or isinstance(trial, optuna.trial.FixedTrial):
            return None
        study = trial.study
        return CheckpointStore(
            self.config.checkpoint_dir,
            study_folder(study.study_name, study_uid(study)),
            root_trial_number(trial),
        )

    def _finish_checkpoints(
        self,
        trial: optuna.Trial,
        store: CheckpointStore | None,
        model,
        *,
        keep: bool,
        value: float = math.nan,
    ) -> None:
        """Drop epoch checkpoints; keep final weights only while among the best trials."""
        if store is None:
            return
        if not keep:
            store.clear()
            return
        # The spec rides along: `export --no-retrain` checks the weights against it.
        state = {"model": model.state_dict(), "arch": model.spec.to_dict()}
        store.finalize(keep_weights=True, state=state)
        live, finished = _retention_facts(trial.study)
        # This trial is still RUNNING in the study but done training: rank it as finished.
        live.discard(store.key)
        finished.append((value, store.key))
        keep_best(
            self.config.checkpoint_dir,
            store.study,
            live=live,
            finished=finished,
            keep=KEEP_BEST_WEIGHTS,
        )


def _retention_facts(study: optuna.Study) -> tuple[set[int], list[tuple[float, int]]]:
    """The checkpoint keys of live trials, and (value, key) of each finished trial.

    Live means WAITING or RUNNING: a running trial's epochs, and a queued retry's
    predecessor's epochs it will resume from.
    """
    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    live = {root_trial_number(t) for t in trials if t.state in (states.WAITING, states.RUNNING)}
    finished = [
        (t.value, root_trial_number(t))
        for t in trials
        if t.state == states.COMPLETE and t.user_attrs.get("stopped") == FINISHED
    ]
    return live, finished


def catchable() -> tuple[type[Exception], ...]:
    """Exceptions that fail one trial but let the study go on."""
    return (TrialFailed,)
