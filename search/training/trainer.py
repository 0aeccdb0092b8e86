"""The trainer: one model, one recipe, data already on the device, results back.

Pure: no globals, no printing, no hard-coded device. The same code trains a 64-image
CPU test and a full CIFAR-10 run on an H100, where it uses bf16 autocast, channels-last
tensors, fused optimizers and never waits on the GPU inside an epoch: losses and correct
counts are summed on the device and read once per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from autosearch.search.training.augment import augment_batch
from autosearch.search.training.data import CifarData
from autosearch.search.training.device import autocast, channel_tensors, resolve_device
from autosearch.search.training.evaluation import evaluate
from autosearch.search.training.optimizers import WeightEMA, make_optimizer
from autosearch.search.training.recipe import TrainRecipe
from autosearch.search.training.schedules import make_schedule
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


def training_state(
    *,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    ema: WeightEMA | None,
    generator: torch.Generator,
    device: torch.device,
    history: list[EpochReport],
    best_val_acc: float,
    recipe: TrainRecipe,
    seed: int,
) -> dict[str, Any]:
    """Everything `train(resume=...)` needs to continue after `epoch`, as CPU copies.

    Only tensors, dicts, lists, ints, floats, strings and None, so a saved state loads
    with `torch.load(path, weights_only=True)`. The recipe and seed ride along so a
    checkpoint says what made it.
    """
    return _snapshot(
        {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "rng": {
                "cpu": torch.get_rng_state(),
                "generator": generator.get_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            },
            "history": [r.to_dict() for r in history],
            "best_val_acc": best_val_acc,
            "recipe": recipe.to_dict(),
            "seed": seed,
        }
    )


def _steps_per_epoch(n: int, batch_size: int) -> int:
    full, rest = divmod(n, batch_size)
    return full + (rest >= MIN_BATCH)


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

    Each epoch: a fresh permutation from a device generator seeded with `seed`, batches
    of `recipe.batch_size` (a last batch under 2 images is dropped), augmentation,
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
    cuda = device.type == "cuda"
    # Moved once (a no-op when already there), never per batch.
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    val_x, val_y = data.val_x.to(device), data.val_y.to(device)
    n_train, n_val = len(train_y), len(val_y)
    if n_train < MIN_BATCH:
        raise ValueError(f"the training split has {n_train} image(s); at least 2 are needed")
    batch_size = recipe.batch_size
    steps_per_epoch = _steps_per_epoch(n_train, batch_size)
    # Images actually seen per epoch: the dropped remainder of 1 image is not counted.
    seen_per_epoch = min(n_train, steps_per_epoch * batch_size)

    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe)
    schedule = make_schedule(optimizer, recipe, steps_per_epoch)
    ema = WeightEMA(model, recipe.ema) if recipe.ema > 0 else None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    mean_t, inv_std = channel_tensors(data.mean, data.std, device)
    augments = recipe.augment

    history: list[EpochReport] = []
    best_val_acc = math.nan
    start_epoch = 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        if ema is not None:
            if resume.get("ema") is None:
                raise ValueError("the resume state has no EMA weights but recipe.ema > 0")
            ema.load_state_dict(resume["ema"])
        rng = resume["rng"]
        torch.set_rng_state(rng["cpu"])
        generator.set_state(rng["generator"])
        if cuda and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], device)
        history = [EpochReport(**r) for r in resume["history"]]
        best_val_acc = float(resume["best_val_acc"])
        start_epoch = int(resume["epoch"]) + 1

    status, message = "finished", ""
    benchmark = torch.backends.cudnn.benchmark
    if cuda:
        # A handful of batch shapes recur thousands of times: let cuDNN pick kernels once.
        torch.backends.cudnn.benchmark = True
    try:
        for epoch in range(start_epoch, recipe.epochs + 1):
            model.train()
            started = time.perf_counter()
            perm = torch.randperm(n_train, device=device, generator=generator)
            loss_sum = torch.zeros((), device=device)  # sum over images, on the device
            correct = torch.zeros((), dtype=torch.int64, device=device)
            lr = schedule.lr
            for step in range(steps_per_epoch):
                idx = perm[step * batch_size : (step + 1) * batch_size]
                x = train_x[idx].float().div_(255)  # (B, 3, 32, 32) in [0, 1]
                y = train_y[idx]
                if augments:
                    x = augment_batch(x, augments, generator)
                x = (x - mean_t) * inv_std
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device):
                    logits = model(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                lr = schedule.lr
                optimizer.step()
                schedule.step_batch()
                if ema is not None:
                    ema.update()
                loss_sum += loss.detach().float() * len(idx)
                correct += (logits.argmax(1) == y).sum()
            # The one host sync of the training steps; it also ends the epoch's timing.
            total_loss, hits = torch.stack([loss_sum, correct.float()]).tolist()
            seconds = time.perf_counter() - started

            eval_model = ema.averaged() if ema is not None else model
            val_loss, val_acc = evaluate(
                eval_model, val_x, val_y, data.mean, data.std, tta=recipe.tta, device=device
            )
            schedule.step_epoch(val_loss, val_acc)
            report = EpochReport(
                epoch=epoch,
                train_loss=total_loss / seen_per_epoch,
                train_acc=hits / seen_per_epoch,
                val_loss=val_loss,
                val_acc=val_acc,
                lr=lr,
                seconds=seconds,
                images_per_s=seen_per_epoch / seconds if seconds > 0 else math.inf,
            )
            history.append(report)
            if math.isnan(best_val_acc) or val_acc > best_val_acc:
                best_val_acc = val_acc
            # NaN weights after a last finite-loss step show up as a NaN validation loss.
            if not math.isfinite(report.train_loss) or (n_val and math.isnan(val_loss)):
                status = "diverged"
                message = (
                    f"training diverged in epoch {epoch}: mean training loss "
                    f"{report.train_loss}, validation loss {val_loss} at lr {lr:.4g}; "
                    "stopped rather than train on NaN"
                )
                break
            if on_checkpoint is not None:
                on_checkpoint(
                    training_state(
                        epoch=epoch,
                        model=model,
                        optimizer=optimizer,
                        schedule=schedule,
                        ema=ema,
                        generator=generator,
                        device=device,
                        history=history,
                        best_val_acc=best_val_acc,
                        recipe=recipe,
                        seed=seed,
                    )
                )
            if callback is not None and callback(report) is True:
                status, message = "stopped", f"stopped by the callback after epoch {epoch}"
                break
    finally:
        torch.backends.cudnn.benchmark = benchmark

    if status == "finished":
        message = f"trained {len(history)} epoch(s) of {recipe.epochs}"
    if ema is not None and status != "diverged":
        # The caller gets the weights that were validated, so a test pass or an export
        # of `model` measures what the search measured.
        model.load_state_dict(ema.averaged().state_dict())
    wall_time = sum(r.seconds for r in history)
    images = seen_per_epoch * len(history)
    return TrainResult(
        history=history,
        status=status,
        message=message,
        best_val_acc=best_val_acc,
        final_val_acc=history[-1].val_acc if history else math.nan,
        epochs_run=len(history),
        wall_time=wall_time,
        images_per_s=images / wall_time if wall_time > 0 else 0.0,
        device=torch.cuda.get_device_name(device) if cuda else "cpu",
    )
