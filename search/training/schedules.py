"""Learning-rate schedules built from a `TrainRecipe`, one interface for every kind.

`make_schedule` returns a `Schedule`, so the trainer never branches on the kind:

    schedule = make_schedule(optimizer, recipe, steps_per_epoch)
    for epoch in ...:
        for batch in ...:
            optimizer.step()
            schedule.step_batch()  # after every optimizer step
        schedule.step_epoch(val_loss, val_acc)  # once per epoch, with host floats

Learning rates are written into the optimizer's param groups as Python floats, so
changing them never synchronises the host with the GPU.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from autosearch.search.training.recipe import TrainRecipe
from torch.optim import lr_scheduler


class Schedule(ABC):
    """A learning-rate schedule with one interface for every kind.

    `step_batch()` after every optimizer step; `step_epoch(val_loss, val_acc)` at the end
    of every epoch. Kinds that react to validation (`needs_metric`) only change the lr in
    `step_epoch`; the others are pure functions of the number of steps taken.
    """

    needs_metric: bool = False

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str):
        self.optimizer = optimizer
        self.kind = kind

    @property
    def lr(self) -> float:
        """The learning rate the next optimizer step will use."""
        return float(self.optimizer.param_groups[0]["lr"])

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step_batch(self) -> None:  # noqa: B027 - a no-op unless the kind is per step
        """Call after every optimizer step."""

    def step_epoch(self, val_loss: float, val_acc: float) -> None:  # noqa: B027
        """Call once at the end of every epoch with that epoch's validation results."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the schedule, and the optimizer's lr with it."""

    def _check_kind(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"schedule state is for kind {state.get('kind')!r}, not {self.kind!r}")


class StepwiseSchedule(Schedule):
    """lr = base_lr x multiplier(steps taken); the whole state is one step counter.

    The same idea as `torch.optim.lr_scheduler.LambdaLR`, written out so that its state
    is exactly resumable and it has no call-order warnings.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        kind: str,
        base_lr: float,
        multiplier: Callable[[int], float],
    ):
        super().__init__(optimizer, kind)
        self.base_lr = base_lr
        self.multiplier = multiplier
        self.steps = 0
        self._set_lr(base_lr * multiplier(0))

    def step_batch(self) -> None:
        self.steps += 1
        self._set_lr(self.base_lr * self.multiplier(self.steps))

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_kind(state)
        self.steps = int(state["steps"])
        self._set_lr(self.base_lr * self.multiplier(self.steps))


class PlateauSchedule(Schedule):
    """`ReduceLROnPlateau`: lr x factor once more than `patience` epochs pass unimproved."""

    needs_metric = True

    def __init__(self, optimizer: torch.optim.Optimizer, recipe: TrainRecipe):
        super().__init__(optimizer, "plateau")
        self.mode = recipe.plateau_mode
        self.inner = lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=self.mode,
            factor=recipe.plateau_factor,
            patience=recipe.plateau_patience,
        )

    def step_epoch(self, val_loss: float, val_acc: float) -> None:
        self.inner.step(val_loss if self.mode == "min" else val_acc)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "inner": self.inner.state_dict(), "lr": self.lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_kind(state)
        self.inner.load_state_dict(state["inner"])
        self._set_lr(float(state["lr"]))


class ZigzagPlateauSchedule(Schedule):
    """A plateau schedule that also climbs back.

    Like `ReduceLROnPlateau` (same relative threshold of 1e-4, same patience rule):
    after more than `patience` epochs without improvement the lr is multiplied by
    `factor`. Unlike it, every epoch that improves on the best value so far divides the
    lr by `factor` again, capped at the recipe's lr. A NaN metric counts as no
    improvement.
    """

    needs_metric = True
    THRESHOLD = 1e-4  # relative improvement needed to count, as ReduceLROnPlateau's default

    def __init__(self, optimizer: torch.optim.Optimizer, recipe: TrainRecipe):
        super().__init__(optimizer, "zigzag_plateau")
        self.max_lr = recipe.lr
        self.factor = recipe.plateau_factor
        self.patience = recipe.plateau_patience
        self.mode = recipe.plateau_mode
        self.best = math.inf if self.mode == "min" else -math.inf
        self.bad_epochs = 0
        self._set_lr(self.max_lr)

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.mode == "min":
            return value < self.best * (1 - self.THRESHOLD)
        return value > self.best * (1 + self.THRESHOLD)

    def step_epoch(self, val_loss: float, val_acc: float) -> None:
        value = val_loss if self.mode == "min" else val_acc
        if self._improves(value):
            self.best = value
            self.bad_epochs = 0
            self._set_lr(min(self.lr / self.factor, self.max_lr))
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self._set_lr(self.lr * self.factor)
            self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "best": self.best, "bad_epochs": self.bad_epochs, "lr": self.lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_kind(state)
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self._set_lr(float(state["lr"]))


ONECYCLE_START = 1 / 25  # onecycle's first lr as a fraction of the peak (torch's default)


def _multiplier(recipe: TrainRecipe, steps_per_epoch: int) -> Callable[[int], float]:
    """The per-step lr multiplier of a step-driven kind; `t` counts optimizer steps."""
    total = recipe.epochs * steps_per_epoch  # optimizer steps in the whole run
    kind = recipe.schedule
    if kind == "constant":
        return lambda t: 1.0
    if kind == "step":
        return lambda t: recipe.gamma ** ((t // steps_per_epoch) // recipe.step_epochs)
    if kind == "cosine":
        floor = recipe.min_lr_ratio

        def cosine(t: int) -> float:
            done = min(t / total, 1.0)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done))

        return cosine
    if kind == "onecycle":
        # Rounded so that one step lands exactly on the peak.
        rise = round(recipe.warmup * total)

        def onecycle(t: int) -> float:
            if t < rise:
                return ONECYCLE_START + (1 - ONECYCLE_START) * t / rise
            return max(0.0, (total - t) / max(total - rise, 1))

        return onecycle
    if kind == "cosine_restarts":
        first = recipe.restart_epochs * steps_per_epoch
        floor = recipe.min_lr_ratio  # cosine's floor serves the restarts too

        def restarts(t: int) -> float:
            length = first
            while t >= length:  # walk to the current cycle; O(log t) cycles when mult > 1
                t -= length
                length *= recipe.restart_mult
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t / length))

        return restarts
    if kind == "cyclic":
        half = recipe.cyclic_epochs * steps_per_epoch  # steps from low to high, may be fractional
        low = recipe.cyclic_base

        def cyclic(t: int) -> float:
            phase = (t / half) % 2.0  # 0 -> 1 rising, 1 -> 2 falling
            return low + (1 - low) * (phase if phase <= 1 else 2 - phase)

        return cyclic
    raise ValueError(f"schedule {kind!r} is not step-driven")


def make_schedule(
    optimizer: torch.optim.Optimizer, recipe: TrainRecipe, steps_per_epoch: int
) -> Schedule:
    """The recipe's schedule, driving `optimizer`'s learning rate from `recipe.lr`.

    `steps_per_epoch` is the number of optimizer steps in one epoch (the trainer's
    n // batch_size full batches), so step-driven kinds end exactly after
    `recipe.epochs` epochs. Per-step kinds set the lr for step 0 at once; plateau kinds
    start at `recipe.lr`.

    Example:
        >>> model = torch.nn.Linear(2, 2)
        >>> recipe = TrainRecipe(schedule="step", lr=0.1, step_epochs=1, gamma=0.5)
        >>> schedule = make_schedule(make_optimizer(model, recipe), recipe, steps_per_epoch=2)
        >>> for _ in range(2):
        ...     schedule.step_batch()
        >>> schedule.lr
        0.05
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch!r}")
    if recipe.schedule == "plateau":
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr
        return PlateauSchedule(optimizer, recipe)
    if recipe.schedule == "zigzag_plateau":
        return ZigzagPlateauSchedule(optimizer, recipe)
    return StepwiseSchedule(
        optimizer, recipe.schedule, recipe.lr, _multiplier(recipe, steps_per_epoch)
    )
