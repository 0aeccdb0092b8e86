"""Seed configurations: the presets and named recipes a study tries first.

A seed is a trial of its space like any other. It is enqueued with the parameters that
make `sample` rebuild it exactly, and only when the rebuilt architecture and recipe
equal the seed; a seed the space cannot represent is left out, with a line saying why.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import optuna
from autosearch.models import ArchSpec, count_params, get_preset
from autosearch.search.space.sampling import (
    BASE_LR,
    derive_widths,
    sample,
    width_ladder,
)
from autosearch.search.space.schema import ArchSpace, SearchSpace
from autosearch.search.training.recipe import TrainRecipe, get_recipe


class _Outside(Exception):
    """The space cannot represent a seed; the message says why."""


def seed_config(space: SearchSpace, index: int) -> tuple[ArchSpec, TrainRecipe]:
    """The configuration seed `index` stands for: its preset and named recipe.

    The epoch count alone follows the space: it is clipped into the space's epoch
    range, so a study pinned to a few epochs (--epochs) runs short seeds too.
    """
    arch_name, recipe_name = space.seeds[index]
    recipe = get_recipe(recipe_name)
    if space.recipe.fixed is None:
        low, high = space.recipe.epochs
        recipe = recipe.replace(epochs=min(max(recipe.epochs, low), high))
    return get_preset(arch_name), recipe


def seed_params(
    space: SearchSpace, *, max_params: int
) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """The parameters of each seed the space represents exactly, by seed index, and
    one line for each seed left out, saying which and why."""
    found: dict[int, dict[str, Any]] = {}
    left_out = []
    for i, (arch_name, recipe_name) in enumerate(space.seeds):
        arch, recipe = seed_config(space, i)
        try:
            params = _arch_params(arch, space.arch, max_params)
            params.update(_recipe_params(recipe, space))
            found[i] = _rebuilt_params(params, space, arch, recipe, max_params)
        except _Outside as e:
            left_out.append(
                f"seed {i} ({arch_name} with recipe {recipe_name}) left out of space "
                f"{space.name!r}: {e}"
            )
    return found, left_out


# ------------------------------------------------------------------ the way back


def _arch_params(spec: ArchSpec, a: ArchSpace, max_params: int) -> dict[str, Any]:
    """Parameters that make `sample` draw `spec`; checked afterwards by a rebuild."""
    if a.fixed is not None:
        if spec != get_preset(a.fixed):
            raise _Outside(f"the space's architecture is fixed to {a.fixed!r}")
        return {}
    params_count = count_params(spec)
    if params_count > max_params:
        raise _Outside(f"its {params_count:,} parameters exceed the budget of {max_params:,}")
    n = len(spec.stages)
    widths = list(spec.widths)
    params: dict[str, Any] = {"stages": n}
    if a.monotonic:
        scale = widths[0]
        params["width_growth"] = widths[1] / widths[0] if n > 1 else a.growth[0]
        shape = [params["width_growth"] ** i for i in range(n)]
    else:
        scale = max(widths)
        shape = [w / scale for w in widths]
        params.update({f"rel_width_{i}": r for i, r in enumerate(shape)})
    params["fill"] = _fill_for(spec, shape, scale, a, max_params)
    strided = [i for i, s in enumerate(spec.stages) if s.stride == 2]
    params["downsamples"] = len(strided)
    chosen: set[int] = set()
    for j, i in enumerate(strided):
        free = [k for k in range(1, n) if k not in chosen]
        if i not in free:
            raise _Outside("its first stage is strided, which no sample does")
        params[f"down_at_{j}"] = (free.index(i) + 0.5) / len(free)  # the middle of i's slot
        chosen.add(i)
    for i, s in enumerate(spec.stages):
        params[f"repeats_{i}"] = s.repeats
        params[f"kernel_{i}"] = s.kernel
    params.update(skip_kernel=spec.stages[0].skip_kernel, stem_width=spec.stem_width)
    params["pool"] = spec.pool
    return params


def _fill_for(spec: ArchSpec, shape: list[float], scale: int, a: ArchSpace, limit: int) -> float:
    """A `fill` whose rule picks `scale`: the middle of the fills under which the net at
    `scale` fits and the one a rung up does not, within the space's fill range."""
    ladder = width_ladder(a.widths)
    if scale not in ladder:
        raise _Outside(
            f"its width scale {scale} is not a multiple of 8 within arch.widths {list(a.widths)}"
        )

    def share(s: int) -> float:
        widths = derive_widths(shape, s, ladder[0])
        stages = tuple(replace(st, width=w) for st, w in zip(spec.stages, widths, strict=True))
        return count_params(replace(spec, stages=stages)) / limit

    low = share(scale) if scale > ladder[0] else -math.inf
    high = share(scale + 8) if scale < ladder[-1] else math.inf
    lo, hi = max(low, a.fill[0]), min(high, a.fill[1])
    if lo > hi or lo >= high:
        raise _Outside(
            f"it fills {share(scale):.3f} of the budget, outside arch.fill {list(a.fill)}"
        )
    return (lo + hi) / 2


def _recipe_params(r: TrainRecipe, space: SearchSpace) -> dict[str, Any]:
    """Parameters that make `sample` draw recipe `r`; checked afterwards by a rebuild."""
    fixed = space.recipe.fixed
    if fixed is not None:
        if r != get_recipe(fixed):
            raise _Outside(f"the space's recipe is fixed to {fixed!r}")
        return {}
    params: dict[str, Any] = {
        "optimizer": r.optimizer,
        "lr_mult": _lr_mult(r),
        "momentum": r.momentum,
        "weight_decay": r.weight_decay,
        "batch_size": r.batch_size,
        "epochs": r.epochs,
        "schedule": r.schedule,
        "label_smoothing": r.label_smoothing,
        "ema": r.ema,
        "tta": r.tta,
        "warmup": r.warmup,
        "step_epochs": r.step_epochs,
        "gamma": r.gamma,
        "restart_epochs": r.restart_epochs,
        "restart_mult": r.restart_mult,
        "cyclic_epochs": r.cyclic_epochs,
        "cyclic_base": r.cyclic_base,
        "plateau_factor": r.plateau_factor,
        "plateau_patience": r.plateau_patience,
        "plateau_mode": r.plateau_mode,
    }
    by_name = {a.name: a.params for a in r.augment}
    crop = by_name.get("crop")
    params["aug_crop"] = crop["mode"] if crop else "off"
    if crop:
        params["aug_crop_pad"] = crop["pad"]
    params["aug_flip"] = "flip" in by_name
    rc = by_name.get("resized_crop")
    params["aug_resized_crop_p"] = rc["p"] if rc else 0.0
    if rc:
        params["aug_resized_crop_scale"] = rc["scale_min"]
    for name in ("rotate", "affine", "erase"):
        params[f"aug_{name}_p"] = by_name[name]["p"] if name in by_name else 0.0
    params["aug_cutout"] = by_name["cutout"]["size"] if "cutout" in by_name else 0
    return params


def _lr_mult(r: TrainRecipe) -> float:
    """The multiplier whose product with the optimizer's base rate is exactly `r.lr`."""
    base = BASE_LR[r.optimizer]
    guess = r.lr / base
    for m in (guess, math.nextafter(guess, math.inf), math.nextafter(guess, -math.inf)):
        if base * m == r.lr:
            return m
    return guess  # the rebuild then names the learning rate that differs


# ------------------------------------------------------------------- the check


class _CheckedTrial:
    """A `FixedTrial` that refuses, by name, a value its distribution does not hold."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.fixed = optuna.trial.FixedTrial(params)
        self.given = params

    def _value(self, name: str) -> Any:
        if name not in self.given:
            raise _Outside(f"the space draws {name}, which the seed does not set")
        return self.given[name]

    def suggest_categorical(self, name: str, choices):
        value = self._value(name)
        if not any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in choices):
            raise _Outside(f"{name}={value!r} is not among the space's {list(choices)}")
        return self.fixed.suggest_categorical(name, choices)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False):
        value = self._value(name)
        if not (low <= value <= high and (value - low) % step == 0):
            raise _Outside(f"{name}={value!r} is outside the space's range [{low}, {high}]")
        return self.fixed.suggest_int(name, low, high, step=step, log=log)

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False):
        value = self._value(name)
        if not low <= value <= high:
            raise _Outside(f"{name}={value!r} is outside the space's range [{low:g}, {high:g}]")
        return self.fixed.suggest_float(name, low, high, log=log)


def _rebuilt_params(
    params: dict[str, Any],
    space: SearchSpace,
    arch: ArchSpec,
    recipe: TrainRecipe,
    max_params: int,
) -> dict[str, Any]:
    """The parameters `sample` reads, once their rebuild equals the seed exactly."""
    trial = _CheckedTrial(params)
    s = sample(trial, space, max_params=max_params)  # type: ignore[arg-type]
    for what, got, want in (("architecture", s.arch, arch), ("recipe", s.recipe, recipe)):
        if got != want:
            g, w = got.to_dict(), want.to_dict()
            diff = next(k for k in w if k != "name" and g[k] != w[k])
            raise _Outside(
                f"the space rebuilds its {what} with {diff}={g[diff]!r}, not {w[diff]!r}"
            )
    return trial.fixed.params
