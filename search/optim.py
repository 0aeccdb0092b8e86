"""Optimizers, learning-rate schedules and weight averaging built from a `TrainRecipe`.

`make_optimizer` covers every optimizer the recipe names; `make_schedule` returns a
`Schedule` with one interface for every schedule kind, so the trainer never branches on
the kind:

    schedule = make_schedule(optimizer, recipe, steps_per_epoch)
    for epoch in ...:
        for batch in ...:
            optimizer.step()
            schedule.step_batch()  # after every optimizer step
        schedule.step_epoch(val_loss, val_acc)  # once per epoch, with host floats

Learning rates are written into the optimizer's param groups as Python floats, so
changing them never synchronises the host with the GPU. `WeightEMA` keeps an exponential
moving average of the weights, which the trainer evaluates when the recipe asks for it.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from search.recipe import TrainRecipe

# ------------------------------------------------------------------------- optimizers

# Optimizers with a fused CUDA kernel (one launch for the whole update). The rest get the
# multi-tensor `foreach` path on CUDA, a handful of launches instead of one per tensor.
_FUSED_ON_CUDA = frozenset({"sgd", "nesterov", "adam", "adamw"})
ADAM_BETA2 = 0.999  # second-moment decay of the Adam family; the recipe sets beta1


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split parameters into a decayed and an undecayed group.

    Only conv and linear weights (tensors with 2 or more dimensions) are decayed.
    BatchNorm weights and biases and the classifier bias are left alone: decaying them
    only fights the normalisation (a BN scale shrunk towards 0 is undone by the next
    layer's statistics) and is the common practice for ResNets.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over `model`'s parameters (which must already be on their device).

    `recipe.momentum` is SGD's and RMSprop's momentum and beta1 of Adam, AdamW and Adamax
    (beta2 is 0.999); ASGD, Adagrad and Adadelta have no momentum and ignore it. Nesterov
    with momentum 0 is plain SGD, which torch would otherwise reject. Weight decay
    follows `param_groups`. On CUDA the fused or foreach implementation is used.
    """
    name, lr, mom = recipe.optimizer, recipe.lr, recipe.momentum
    groups = param_groups(model, recipe.weight_decay)
    first = next((p for g in groups for p in g["params"]), None)
    on_cuda = first is not None and first.device.type == "cuda"
    speed: dict[str, bool] = {}
    if on_cuda:
        speed = {"fused": True} if name in _FUSED_ON_CUDA else {"foreach": True}
    betas = (mom, ADAM_BETA2)
    optim = torch.optim
    if name in ("sgd", "nesterov"):
        return optim.SGD(
            groups, lr=lr, momentum=mom, nesterov=name == "nesterov" and mom > 0, **speed
        )
    if name == "asgd":
        return optim.ASGD(groups, lr=lr, **speed)
    if name == "adam":
        return optim.Adam(groups, lr=lr, betas=betas, **speed)
    if name == "adamw":
        return optim.AdamW(groups, lr=lr, betas=betas, **speed)
    if name == "adamax":
        return optim.Adamax(groups, lr=lr, betas=betas, **speed)
    if name == "adagrad":
        return optim.Adagrad(groups, lr=lr, **speed)
    if name == "rmsprop":
        return optim.RMSprop(groups, lr=lr, momentum=mom, **speed)
    if name == "adadelta":
        return optim.Adadelta(groups, lr=lr, **speed)
    raise ValueError(f"unknown optimizer {name!r}")  # the recipe validates, so unreachable


# -------------------------------------------------------------------------- schedules


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

    `steps_per_epoch` is the number of optimizer steps in one epoch. Per-step kinds set
    the lr for step 0 at once; plateau kinds start at `recipe.lr`.

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


# ------------------------------------------------------------------ weight averaging


class WeightEMA:
    """An exponential moving average of a model's weights and BatchNorm statistics.

    Kept by hand rather than with `torch.optim.swa_utils.AveragedModel`, whose update
    reads a device counter on the host every step. The decay warms up as
    min(decay, (1 + t) / (10 + t)) over optimizer steps t, so short runs are not stuck
    near the initial weights. Integer buffers (BN's batch counters) are copied only when
    the average is used, not every step.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = model
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.steps = 0
        # The tensor lists are fixed for the run (loading a state_dict copies in place),
        # so they are gathered once instead of on every step.
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [t.detach() for t in (*model.parameters(), *model.buffers())]
        floats = {i for i, t in enumerate(mine) if t.is_floating_point()}
        self._mine = [mine[i] for i in sorted(floats)]
        self._theirs = [theirs[i] for i in sorted(floats)]
        self._counters = [(mine[i], theirs[i]) for i in range(len(mine)) if i not in floats]

    @torch.no_grad()
    def update(self) -> None:
        """Fold the model's current weights in; call after every optimizer step."""
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        # One multi-tensor launch for all ~100-200 tensors rather than one per tensor.
        torch._foreach_lerp_(self._mine, self._theirs, 1 - decay)

    @torch.no_grad()
    def averaged(self) -> nn.Module:
        """The averaged model, its integer buffers brought up to date."""
        for mine, theirs in self._counters:
            mine.copy_(theirs)
        return self.module

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.module.load_state_dict(state["module"])
