"""Experiment tracking: every trial logged to MLflow or TensorBoard. Off by default.

A choice is a string ``KIND:WHERE`` (``--track``):

- ``mlflow:URI`` logs each trial as one MLflow run, in an experiment named after the
  study: the epoch's metrics as each epoch ends (MLflow's client API), then, when the
  trial ends, optuna-integration's `MLflowCallback` adds the parameters, the objective
  value, the state and the user attributes (arch, recipe, why it stopped, ...) as tags
  to the same run. A failed trial's run is marked FAILED. ``file:`` URIs (MLflow's file
  store) are allowed explicitly: MLflow 3 keeps them only on request.
- ``tensorboard:DIR`` writes each trial's scalars under ``DIR/<study>/trial-<number>``
  (torch's `SummaryWriter`): the epoch's metrics, then the value and hyperparameters.

The objective knows none of this: it calls its epoch listeners (`Tracking.on_epoch`)
after reporting each epoch, and the worker loop calls `Tracking.on_trial_end`. A tracker
that fails (a tracking server down) logs a warning; the trial goes on.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import optuna
from autosearch.search.training.trainer import EpochReport
from autosearch.search.tuning.study import StudyError
from optuna.trial import FrozenTrial, TrialState

TRACKERS = {"mlflow": "mlflow:URI", "tensorboard": "tensorboard:DIR"}
# What each tracker imports; the extra of the same name installs it.
MODULES = {"mlflow": ("mlflow", "optuna_integration"), "tensorboard": ("tensorboard",)}
# What each epoch logs: the `EpochReport` fields, by name.
EPOCH_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "lr", "seconds", "images_per_s")
RUN_ID_ATTR = "mlflow_run_id"  # the trial's system attribute that MLflowCallback resumes

log = logging.getLogger(__name__)
TrialEnd = Callable[[optuna.Study, FrozenTrial], None]


def parse_track(spec: str) -> str:
    """`spec` checked and made absolute, so that workers started elsewhere agree.

    Raises:
        StudyError: Not ``mlflow:URI`` or ``tensorboard:DIR``; the message names it.
    """
    kind, sep, where = spec.strip().partition(":")
    if kind not in TRACKERS or not sep or not where.strip():
        raise StudyError(
            f"--track {spec!r}: expected {' or '.join(TRACKERS.values())}, "
            "e.g. mlflow:file:./mlruns or tensorboard:runs"
        )
    where = where.strip()
    if kind == "tensorboard":
        return f"tensorboard:{Path(where).expanduser().resolve()}"
    if where.startswith("file:"):
        path = where.removeprefix("file://") if where.startswith("file://") else where[5:]
        return f"mlflow:{Path(path).expanduser().resolve().as_uri()}"
    return f"mlflow:{where}"


def _installed(module: str) -> bool:
    # optuna_integration swaps itself for a lazy module without a spec once imported.
    return module in sys.modules or importlib.util.find_spec(module) is not None


def parse_tracks(specs: Iterable[str]) -> tuple[str, ...]:
    """Each of `specs` parsed, and its library checked to be installed; "none" alone
    means no tracking.

    Raises:
        StudyError: A malformed choice, or one whose library is missing.
    """
    specs = [s for s in specs if s.strip()]
    if [s.strip().lower() for s in specs] == ["none"]:
        return ()
    parsed = tuple(dict.fromkeys(parse_track(s) for s in specs))
    for spec in parsed:
        kind = spec.partition(":")[0]
        missing = [m for m in MODULES[kind] if not _installed(m)]
        if missing:
            raise StudyError(
                f"--track {spec} needs {', '.join(missing)}: pip install 'autosearch[{kind}]'"
            )
    return parsed


class Tracker(Protocol):
    def on_epoch(self, trial: optuna.Trial, report: EpochReport) -> None: ...

    def on_trial_end(self, study: optuna.Study, trial: FrozenTrial) -> None: ...


# --------------------------------------------------------------------------- MLflow


class MlflowTracker:
    """One MLflow run per trial: epochs as they end, then Optuna's end-of-trial record."""

    def __init__(self, uri: str) -> None:
        if uri.startswith("file:"):
            # The user named a file store; MLflow 3 refuses one unless asked to keep it.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        with warnings.catch_warnings():
            # Deprecated in optuna-integration 4.9 (removal planned for 6.0); pinned <6.
            warnings.simplefilter("ignore", FutureWarning)
            from optuna_integration.mlflow import MLflowCallback

            self.callback = MLflowCallback(tracking_uri=uri, metric_name="value")
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        self._runs: dict[int, str] = {}  # trial id -> run id, for this process's trials

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another worker created it a moment ago
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def on_epoch(self, trial: optuna.Trial, report: EpochReport) -> None:
        from mlflow.entities import Metric

        run_id = self._runs.get(trial._trial_id)
        if run_id is None:
            experiment = self._experiment(trial.study.study_name)
            run = self.client.create_run(experiment, run_name=str(trial.number))
            run_id = self._runs[trial._trial_id] = run.info.run_id
            # MLflowCallback resumes the run named here at the end of the trial; a retry
            # is a new trial, without this attribute, and gets its own run.
            trial.storage.set_trial_system_attr(trial._trial_id, RUN_ID_ATTR, run_id)
        stamp = int(time.time() * 1000)  # ms
        values = report.to_dict()
        metrics = [Metric(k, float(values[k]), stamp, report.epoch) for k in EPOCH_METRICS]
        self.client.log_batch(run_id, metrics=metrics)

    def on_trial_end(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._experiment(study.study_name)  # MLflowCallback's own creation is not race-safe
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.callback(study, trial)
        run_id = self._runs.pop(trial._trial_id, None) or trial.system_attrs.get(RUN_ID_ATTR)
        if trial.state == TrialState.FAIL and run_id is not None:
            self.client.set_terminated(run_id, "FAILED")


# ---------------------------------------------------------------------- TensorBoard


class TensorBoardTracker:
    """Scalars of each trial in its own TensorBoard run: ``DIR/<study>/trial-<number>``."""

    def __init__(self, folder: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer_class = SummaryWriter
        self.folder = Path(folder)
        self._writers: dict[int, object] = {}

    def _writer(self, study_name: str, trial_id: int, number: int):
        if trial_id not in self._writers:
            run = self.folder / study_name / f"trial-{number:05d}"
            self._writers[trial_id] = self._writer_class(log_dir=str(run))
        return self._writers[trial_id]

    def on_epoch(self, trial: optuna.Trial, report: EpochReport) -> None:
        writer = self._writer(trial.study.study_name, trial._trial_id, trial.number)
        values = report.to_dict()
        for key in EPOCH_METRICS:
            writer.add_scalar(f"epoch/{key}", float(values[key]), report.epoch)
        writer.flush()

    def on_trial_end(self, study: optuna.Study, trial: FrozenTrial) -> None:
        writer = self._writer(study.study_name, trial._trial_id, trial.number)
        value = trial.value if trial.value is not None else math.nan
        writer.add_scalar("trial/value", value, trial.number)
        writer.add_text("trial/state", f"{trial.state.name} ({trial.user_attrs.get('stopped')})")
        hparams = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in trial.params.items()
        }
        if hparams:
            # run_name ".": the hyperparameters go into the trial's own run folder.
            writer.add_hparams(hparams, {"trial/value": value}, run_name=".")
        writer.close()
        del self._writers[trial._trial_id]


# --------------------------------------------------------------------------- together


def _open(spec: str) -> Tracker:
    kind, _, where = spec.partition(":")
    try:
        return MlflowTracker(where) if kind == "mlflow" else TensorBoardTracker(where)
    except ImportError as e:
        raise StudyError(
            f"--track {spec} needs {e.name or 'a missing package'}: "
            f"pip install 'autosearch[{kind}]'"
        ) from None


class Tracking:
    """The trackers of one worker process, as an epoch listener and a trial-end hook."""

    def __init__(self, specs: Sequence[str] = ()) -> None:
        self.specs = tuple(specs)
        self.trackers = [_open(s) for s in self.specs]
        self._warned: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.trackers)

    @property
    def epoch_listeners(self) -> list[Callable[[optuna.Trial, EpochReport], None]]:
        return [self.on_epoch] if self.trackers else []

    def _guarded(self, what: str, call: Callable[[Tracker], None]) -> None:
        for spec, tracker in zip(self.specs, self.trackers, strict=True):
            try:
                call(tracker)
            except Exception as e:  # tracking is a record, never a reason to lose a trial
                if spec not in self._warned:
                    log.warning("--track %s: %s failed (%s); the trial goes on", spec, what, e)
                    self._warned.add(spec)

    def on_epoch(self, trial: optuna.Trial, report: EpochReport) -> None:
        self._guarded("logging an epoch", lambda t: t.on_epoch(trial, report))

    def on_trial_end(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._guarded("logging a trial", lambda t: t.on_trial_end(study, trial))

    def chain(self, then: TrialEnd | None) -> TrialEnd | None:
        """A trial-end hook that tracks, then calls `then` (the caller's own)."""
        if not self.trackers:
            return then

        def both(study: optuna.Study, trial: FrozenTrial) -> None:
            self.on_trial_end(study, trial)
            if then is not None:
                then(study, trial)

        return both
