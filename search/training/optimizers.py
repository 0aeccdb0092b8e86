"""Optimizers and weight averaging built from a `TrainRecipe`.

`make_optimizer` covers every optimizer the recipe names; on CUDA each runs an
implementation that never reads a device value on the host inside `step()`.
`WeightEMA` keeps an exponential moving average of the weights, which the trainer
evaluates when the recipe asks for it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from autosearch.search.training.recipe import TrainRecipe
from torch import nn

# Optimizers with a fused CUDA kernel (one launch for the whole update). The rest get the
# multi-tensor `foreach` path on CUDA, a handful of launches instead of one per tensor.
_FUSED_ON_CUDA = frozenset({"sgd", "nesterov", "adam", "adamw", "adagrad"})
# Multi-tensor paths that, unless capturable, call `.item()` once per parameter tensor on
# every step. ASGD keeps its step counters on the GPU, so that is a host sync per tensor
# (95 per step for `zigzag`); Adamax keeps them on the CPU, so it is Python work per
# tensor that also stops the step being graph-captured. Capturable does the arithmetic
# on the device and reads nothing back.
_CAPTURABLE_ON_CUDA = frozenset({"asgd", "adamax"})


def device_options(name: str, device_type: str) -> dict[str, bool]:
    """The implementation flags `make_optimizer` passes for optimizer `name` on a device type.

    CUDA: fused where torch has a fused kernel, else foreach (and capturable where the
    foreach path would sync). Other devices: torch's defaults, {}.
    """
    if device_type != "cuda":
        return {}
    if name in _FUSED_ON_CUDA:
        return {"fused": True}
    if name in _CAPTURABLE_ON_CUDA:
        return {"foreach": True, "capturable": True}
    return {"foreach": True}


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


def make_optimizer(
    model: nn.Module, recipe: TrainRecipe, *, device_type: str | None = None
) -> torch.optim.Optimizer:
    """The recipe's optimizer over `model`'s parameters (which must already be on their device).

    `recipe.momentum` is SGD's and RMSprop's momentum and beta1 of Adam, AdamW and Adamax
    (beta2 is 0.999); ASGD, Adagrad and Adadelta have no momentum and ignore it. Nesterov
    with momentum 0 is plain SGD, which torch would otherwise reject. Weight decay
    follows `param_groups`. The implementation follows `device_options` for
    `device_type`, by default the device of the parameters (tests pass "cuda" to build
    the CUDA variant over CPU tensors).
    """
    name, lr, mom = recipe.optimizer, recipe.lr, recipe.momentum
    groups = param_groups(model, recipe.weight_decay)
    if device_type is None:
        first = next((p for g in groups for p in g["params"]), None)
        device_type = first.device.type if first is not None else "cpu"
    speed = device_options(name, device_type)
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
