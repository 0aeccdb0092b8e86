"""The trainer: one model, one recipe, data already on the device, results back.

Pure: no globals, no printing, no hard-coded device. The same code trains a 64-image
CPU test and a full CIFAR-10 run on an H100, where it uses bf16 autocast, channels-last
tensors, fused optimizers and never waits on the GPU inside an epoch: losses and correct
counts are summed on the device and read once per epoch. Every step takes a full batch,
so the per-epoch validation the pruner compares is not moved by a last small batch at a
high learning rate, and every step has the same input shape.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from autosearch.search.training.augment import augment_batch
from autosearch.search.training.data import CifarData
from autosearch.search.training.device import (
    autocast,
    channel_tensors,
    memory_format,
    resolve_device,
)
from autosearch.search.training.evaluation import evaluate
from autosearch.search.training.optimizers import WeightEMA, make_optimizer
from autosearch.search.training.recipe import TrainRecipe
from autosearch.search.training.schedules import Schedule, make_schedule
from torch import nn

MIN_BATCH = 2  # BatchNorm needs at least 2 images per batch in training mode


# ---------------------------------------------------------------------------- results


@dataclass
class EpochReport:
    """One epoch. Losses are mean cross-entropy per image; accuracies are in [0, 1].

    `train_loss` includes label smoothing; `val_loss` does not. `lr` is the learning rate
    of the epoch's last optimizer step. `seconds` and `images_per_s` cover the training
    steps only, not the evaluation.
    """

    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    images_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """The outcome of `train`.

    `status` is "finished" (all epochs ran), "stopped" (the callback asked to stop) or
    "diverged" (the training loss became NaN or infinite). `wall_time` is the seconds
    spent in training steps over all epochs, evaluation excluded, and `images_per_s`
    the training images per second over those seconds. Accuracies are NaN when no epoch
    produced one (an empty validation split).
    """

    history: list[EpochReport]
    status: str
    message: str
    best_val_acc: float
    final_val_acc: float
    epochs_run: int
    wall_time: float
    images_per_s: float
    device: str

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["history"] = [r.to_dict() for r in self.history]
        return data


# ---------------------------------------------------------------------------- training


def _snapshot(obj: Any) -> Any:
    """A detached CPU copy of nested dicts/lists of tensors, safe to keep or save."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_snapshot(v) for v in obj]
    return obj


def training_state(loop: _Loop, epoch: int) -> dict[str, Any]:
    """Everything `train(resume=...)` needs to continue after `epoch`, as CPU copies.

    Only tensors, dicts, lists, ints, floats, strings and None, so a saved state loads
    with `torch.load(path, weights_only=True)`. The recipe and seed ride along so a
    checkpoint says what made it.
    """
    cuda = loop.device.type == "cuda"
    return _snapshot(
        {
            "epoch": epoch,
            "model": loop.model.state_dict(),
            "optimizer": loop.optimizer.state_dict(),
            "schedule": loop.schedule.state_dict(),
            "ema": loop.ema.state_dict() if loop.ema is not None else None,
            "rng": {
                "cpu": torch.get_rng_state(),
                "generator": loop.generator.get_state(),
                "cuda": torch.cuda.get_rng_state(loop.device) if cuda else None,
            },
            "history": [r.to_dict() for r in loop.history],
            "best_val_acc": loop.best_val_acc,
            "recipe": loop.recipe.to_dict(),
            "seed": loop.seed,
        }
    )


def _steps_per_epoch(n: int, batch_size: int) -> tuple[int, int]:
    """(optimizer steps, images per step) of one epoch over `n` training images.

    Every step takes a full batch of `batch_size`: the n mod batch_size images left after
    the last full batch sit this epoch out. Each epoch draws a fresh permutation, so which
    images those are changes and every image is trained on over the run. A split smaller
    than one batch trains one step per epoch on all of its images (the batch is clamped
    to n), so a small subset never has an empty epoch.
    """
    batch = min(batch_size, n)
    return n // batch, batch


@dataclass
class _Loop:
    """The live state of one `train` call: model, data on the device, optimizer, history."""

    model: nn.Module
    recipe: TrainRecipe
    device: torch.device
    seed: int
    data: CifarData  # moved to `device`
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    ema: WeightEMA | None
    generator: torch.Generator
    mean_t: torch.Tensor  # (1, 3, 1, 1)
    inv_std: torch.Tensor  # (1, 3, 1, 1)
    steps_per_epoch: int
    batch: int  # images per step: recipe.batch_size, or n_train when the split is smaller
    seen_per_epoch: int  # images a training epoch actually sees
    history: list[EpochReport] = field(default_factory=list)
    best_val_acc: float = math.nan


def _set_up(
    model: nn.Module, data: CifarData, recipe: TrainRecipe, device: torch.device, seed: int
) -> _Loop:
    n_train = len(data.train_y)
    if n_train < MIN_BATCH:
        raise ValueError(f"the training split has {n_train} image(s); at least 2 are needed")
    steps, batch = _steps_per_epoch(n_train, recipe.batch_size)
    model.to(device)
    model.to(memory_format=memory_format(device))
    optimizer = make_optimizer(model, recipe)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    mean_t, inv_std = channel_tensors(data.mean, data.std, device)
    return _Loop(
        model=model,
        recipe=recipe,
        device=device,
        seed=seed,
        data=data.to(device),  # moved once (a no-op when already there), never per batch
        optimizer=optimizer,
        schedule=make_schedule(optimizer, recipe, steps),
        ema=WeightEMA(model, recipe.ema) if recipe.ema > 0 else None,
        generator=generator,
        mean_t=mean_t,
        inv_std=inv_std,
        steps_per_epoch=steps,
        batch=batch,
        # images/s and the per-epoch means count only the images the steps trained on
        seen_per_epoch=min(n_train, steps * batch),
    )


def _restore(loop: _Loop, resume: dict[str, Any]) -> int:
    """Load a `training_state` into `loop`; returns the epoch to continue with."""
    loop.model.load_state_dict(resume["model"])
    loop.optimizer.load_state_dict(resume["optimizer"])
    loop.schedule.load_state_dict(resume["schedule"])
    if loop.ema is not None:
        if resume.get("ema") is None:
            raise ValueError("the resume state has no EMA weights but recipe.ema > 0")
        loop.ema.load_state_dict(resume["ema"])
    rng = resume["rng"]
    torch.set_rng_state(rng["cpu"])
    loop.generator.set_state(rng["generator"])
    if loop.device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"], loop.device)
    loop.history = [EpochReport(**r) for r in resume["history"]]
    loop.best_val_acc = float(resume["best_val_acc"])
    return int(resume["epoch"]) + 1


def _train_epoch(loop: _Loop) -> tuple[float, float, float, float]:
    """One pass over a fresh permutation: (mean loss, accuracy, last lr, seconds).

    `steps_per_epoch` full batches; the permutation's tail beyond them waits for another
    epoch. Losses and correct counts are summed on the device and read back once, at the
    end.
    """
    model, recipe, device = loop.model, loop.recipe, loop.device
    x_all, y_all, batch = loop.data.train_x, loop.data.train_y, loop.batch
    layout = memory_format(device)
    model.train()
    started = time.perf_counter()
    perm = torch.randperm(len(y_all), device=device, generator=loop.generator)
    loss_sum = torch.zeros((), device=device)  # sum over images, on the device
    correct = torch.zeros((), dtype=torch.int64, device=device)
    lr = loop.schedule.lr
    for step in range(loop.steps_per_epoch):
        idx = perm[step * batch : (step + 1) * batch]
        x = x_all[idx].float().div_(255)  # (B, 3, 32, 32) in [0, 1]
        y = y_all[idx]
        if recipe.augment:
            x = augment_batch(x, recipe.augment, loop.generator)
        x = ((x - loop.mean_t) * loop.inv_std).contiguous(memory_format=layout)
        with autocast(device):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = loop.schedule.lr
        loop.optimizer.step()
        loop.schedule.step_batch()
        if loop.ema is not None:
            loop.ema.update()
        loss_sum += loss.detach().float() * len(idx)
        correct += (logits.argmax(1) == y).sum()
    # The one host sync of the training steps; it also ends the epoch's timing.
    total_loss, hits = torch.stack([loss_sum, correct.float()]).tolist()
    seconds = time.perf_counter() - started
    return total_loss / loop.seen_per_epoch, hits / loop.seen_per_epoch, lr, seconds


def _validate(loop: _Loop, epoch: int, train_stats: tuple[float, float, float, float]):
    """Evaluate (the EMA weights when averaging), step the schedule, record the epoch."""
    train_loss, train_acc, lr, seconds = train_stats
    d = loop.data
    eval_model = loop.ema.averaged() if loop.ema is not None else loop.model
    val_loss, val_acc = evaluate(
        eval_model, d.val_x, d.val_y, d.mean, d.std, tta=loop.recipe.tta, device=loop.device
    )
    loop.schedule.step_epoch(val_loss, val_acc)
    report = EpochReport(
        epoch=epoch,
        train_loss=train_loss,
        train_acc=train_acc,
        val_loss=val_loss,
        val_acc=val_acc,
        lr=lr,
        seconds=seconds,
        images_per_s=loop.seen_per_epoch / seconds if seconds > 0 else math.inf,
    )
    loop.history.append(report)
    if math.isnan(loop.best_val_acc) or val_acc > loop.best_val_acc:
        loop.best_val_acc = val_acc
    return report


def _divergence(report: EpochReport, n_val: int) -> str | None:
    """Why the run diverged in this epoch, or None."""
    # NaN weights after a last finite-loss step show up as a NaN validation loss.
    if math.isfinite(report.train_loss) and not (n_val and math.isnan(report.val_loss)):
        return None
    return (
        f"training diverged in epoch {report.epoch}: mean training loss "
        f"{report.train_loss}, validation loss {report.val_loss} at lr {report.lr:.4g}; "
        "stopped rather than train on NaN"
    )


def _result(loop: _Loop, status: str, message: str) -> TrainResult:
    if status == "finished":
        message = f"trained {len(loop.history)} epoch(s) of {loop.recipe.epochs}"
    if loop.ema is not None and status != "diverged":
        # The caller gets the weights that were validated, so a test pass or an export
        # of `model` measures what the search measured.
        loop.model.load_state_dict(loop.ema.averaged().state_dict())
    wall_time = sum(r.seconds for r in loop.history)
    images = loop.seen_per_epoch * len(loop.history)
    cuda = loop.device.type == "cuda"
    return TrainResult(
        history=loop.history,
        status=status,
        message=message,
        best_val_acc=loop.best_val_acc,
        final_val_acc=loop.history[-1].val_acc if loop.history else math.nan,
        epochs_run=len(loop.history),
        wall_time=wall_time,
        images_per_s=images / wall_time if wall_time > 0 else 0.0,
        device=torch.cuda.get_device_name(loop.device) if cuda else "cpu",
    )


def train(
    model: nn.Module,
    data: CifarData,
    recipe: TrainRecipe,
    *,
    device: torch.device | str,
    seed: int = 0,
    callback: Callable[[EpochReport], bool | None] | None = None,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `model` on `data.train_*` following `recipe`; validate on `data.val_*`.

    Each epoch: a fresh permutation from a device generator seeded with `seed`, n // B
    full batches of B = `recipe.batch_size` (the n mod B left over sit the epoch out; a
    split of fewer than B images makes one batch of all of them), augmentation,
    normalisation, a step, and the lr schedule; then evaluation (on the EMA weights when
    `recipe.ema` > 0, with flip TTA when `recipe.tta`). After each epoch:

    - a non-finite training loss ends the run with status "diverged";
    - `on_checkpoint(state)` gets a `training_state` snapshot;
    - `callback(report)` gets the `EpochReport`; returning True ends with "stopped".

    `resume` takes such a state and continues at its epoch + 1 exactly as if never
    interrupted (same weights, optimizer, schedule, EMA, random streams and history).
    The model is moved to `device` in place and, with EMA, ends holding the averaged
    weights that were validated. Exceptions from the callbacks propagate.
    """
    device = resolve_device(device)
    loop = _set_up(model, data, recipe, device, seed)
    first = _restore(loop, resume) if resume is not None else 1
    status, message = "finished", ""
    benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        # A handful of batch shapes recur thousands of times: let cuDNN pick kernels once.
        torch.backends.cudnn.benchmark = True
    try:
        for epoch in range(first, recipe.epochs + 1):
            report = _validate(loop, epoch, _train_epoch(loop))
            diverged = _divergence(report, len(loop.data.val_y))
            if diverged is not None:
                status, message = "diverged", diverged
                break
            if on_checkpoint is not None:
                on_checkpoint(training_state(loop, epoch))
            if callback is not None and callback(report) is True:
                status, message = "stopped", f"stopped by the callback after epoch {epoch}"
                break
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return _result(loop, status, message)
