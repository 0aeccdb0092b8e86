"""Sampling: the only code that calls `trial.suggest_*`.

`sample(trial, space)` turns one Optuna trial into an `ArchSpec` and a `TrainRecipe`.
It runs the same under a live trial and under `optuna.trial.FixedTrial`, so any trial's
parameters rebuild what it trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import optuna
from autosearch.models import ArchSpec, StageSpec, count_params, get_preset
from autosearch.models.spec import INPUT_SIZE
from autosearch.search.space.schema import ArchSpace, RecipeSpace, SearchSpace
from autosearch.search.training.recipe import AugmentSpec, TrainRecipe, get_recipe

# The learning rate is searched as a multiple of a per-optimizer base rate, so one range
# suits every optimizer: SGD wants ~0.1 at batch 512, Adam ~1e-3.
BASE_LR = {
    "sgd": 0.1,
    "nesterov": 0.1,
    "asgd": 0.1,
    "adam": 1e-3,
    "adamw": 1e-3,
    "adamax": 2e-3,
    "adagrad": 0.02,
    "rmsprop": 5e-4,
    "adadelta": 1.0,
}


WIDTH_MULTIPLE = 8  # widths are multiples of 8, which tensor cores like
MAX_WIDTH = 4096  # the widest stage `ArchSpec` allows


@dataclass(frozen=True)
class Sample:
    """What one trial trains: the architecture, the recipe and the scale of its widths."""

    arch: ArchSpec
    recipe: TrainRecipe
    scale: int = 0  # the width the rule chose (see `derive_widths`); 0 for a fixed arch


def width_ladder(widths: tuple[int, int]) -> list[int]:
    """The scales a space may use: every multiple of 8 within its `widths` range."""
    low = -(-widths[0] // WIDTH_MULTIPLE) * WIDTH_MULTIPLE
    return list(range(low, widths[1] + 1, WIDTH_MULTIPLE))


def derive_widths(shape: list[float], scale: int, low: int) -> tuple[int, ...]:
    """Stage widths at one scale: scale x shape[i], rounded to a multiple of 8, at
    least `low` (the space's narrowest multiple of 8) and at most 4096."""
    return tuple(
        min(MAX_WIDTH, max(low, round(scale * r / WIDTH_MULTIPLE) * WIDTH_MULTIPLE)) for r in shape
    )


def fit_scale(build, ladder: list[int], target: float) -> int:
    """The largest scale on `ladder` whose net `build(scale)` has <= `target` params,
    found by bisection; the smallest scale when none fits.

    A net's count grows with its scale, except that rounding may make two neighbouring
    stages equal at some scale and drop a projection; bisection makes the choice a
    fixed function of the trial's parameters all the same.
    """
    if count_params(build(ladder[-1])) <= target:
        return ladder[-1]
    lo, hi = 0, len(ladder) - 1  # ladder[hi] never fits; ladder[lo] fits or is the bottom
    if count_params(build(ladder[lo])) > target:
        return ladder[lo]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_params(build(ladder[mid])) <= target:
            lo = mid
        else:
            hi = mid
    return ladder[lo]


def _sample_shape(trial: optuna.Trial, a: ArchSpace, n: int) -> list[float]:
    """Each stage's width relative to the scale: growth^i for a monotonic space (the
    scale is the first stage's width), else free relative widths within the range's
    spread, divided by the widest (the scale is the widest stage's width)."""
    if a.monotonic:
        growth = trial.suggest_float("width_growth", *a.growth)
        return [growth**i for i in range(n)]
    lo, hi = a.widths
    rel = [trial.suggest_float(f"rel_width_{i}", lo / hi, 1.0, log=True) for i in range(n)]
    top = max(rel)
    return [r / top for r in rel]


def _sample_arch(
    trial: optuna.Trial, a: ArchSpace, max_params: int, num_classes: int, size: int
) -> tuple[ArchSpec, int]:
    if a.fixed is not None:
        return replace(get_preset(a.fixed), num_classes=num_classes, input_size=size), 0
    n = trial.suggest_int("stages", *a.stages)
    shape = _sample_shape(trial, a, n)
    fill = trial.suggest_float("fill", *a.fill)
    repeats = [trial.suggest_int(f"repeats_{i}", *a.repeats) for i in range(n)]
    kernels = [trial.suggest_categorical(f"kernel_{i}", a.kernels) for i in range(n)]
    skip = trial.suggest_categorical("skip_kernel", a.skip_kernels)
    # Downsampling positions: the number of stride-2 stages, then where each falls as a
    # fraction of depth. Fractions keep a fixed meaning whatever the stage count.
    max_down = min(a.downsamples[1], n - 1, 5)
    downs = trial.suggest_int("downsamples", min(a.downsamples[0], max_down), max_down)
    strided: set[int] = set()
    for j in range(downs):
        pos = trial.suggest_float(f"down_at_{j}", 0.0, 1.0)
        free = [i for i in range(1, n) if i not in strided]
        strided.add(free[min(len(free) - 1, int(pos * len(free)))])
    stem = trial.suggest_categorical("stem_width", a.stem_widths)
    final = size >> len(strided)
    pools = [p for p in a.pools if p <= final] or [0]
    pool = trial.suggest_categorical("pool", a.pools)
    pool = pool if pool in pools else 0
    ladder = width_ladder(a.widths)

    def build(scale: int) -> ArchSpec:
        widths = derive_widths(shape, scale, ladder[0])
        stages = tuple(
            StageSpec(w, r, 2 if i in strided else 1, k, skip)
            for i, (w, r, k) in enumerate(zip(widths, repeats, kernels, strict=True))
        )
        return ArchSpec(
            stages=stages, stem_width=stem, pool=pool, num_classes=num_classes, input_size=size
        )

    scale = fit_scale(build, ladder, fill * max_params)
    return build(scale), scale


def _sample_recipe(trial: optuna.Trial, r: RecipeSpace) -> TrainRecipe:
    if r.fixed is not None:
        return get_recipe(r.fixed)
    opt = trial.suggest_categorical("optimizer", r.optimizers)
    lr = BASE_LR[opt] * trial.suggest_float("lr_mult", *r.lr_mult, log=True)
    momentum = trial.suggest_float("momentum", *r.momentum)
    wd_lo, wd_hi = r.weight_decay
    wd = trial.suggest_float("weight_decay", max(wd_lo, 1e-8), wd_hi, log=True) if wd_hi else 0.0
    batch = trial.suggest_categorical("batch_size", r.batch_sizes)
    epochs = trial.suggest_int("epochs", *r.epochs)
    schedule = trial.suggest_categorical("schedule", r.schedules)
    extra: dict[str, Any] = {}
    if schedule == "onecycle":
        extra["warmup"] = trial.suggest_float("warmup", 0.1, 0.4)
    elif schedule == "step":
        extra["step_epochs"] = trial.suggest_int("step_epochs", max(1, epochs // 4), epochs)
        extra["gamma"] = trial.suggest_float("gamma", 0.1, 0.5)
    elif schedule == "cosine_restarts":
        extra["restart_epochs"] = trial.suggest_int("restart_epochs", 1, max(1, epochs // 2))
        extra["restart_mult"] = trial.suggest_int("restart_mult", 1, 2)
    elif schedule == "cyclic":
        extra["cyclic_epochs"] = trial.suggest_float("cyclic_epochs", 0.5, 4.0)
        extra["cyclic_base"] = trial.suggest_float("cyclic_base", 0.01, 0.5, log=True)
    elif schedule in ("plateau", "zigzag_plateau"):
        extra["plateau_factor"] = trial.suggest_float("plateau_factor", 0.1, 0.7)
        extra["plateau_patience"] = trial.suggest_int("plateau_patience", 0, 5)
        extra["plateau_mode"] = trial.suggest_categorical("plateau_mode", ("min", "max"))
    smoothing = trial.suggest_float("label_smoothing", *r.label_smoothing)
    ema = trial.suggest_categorical("ema", r.ema)
    return TrainRecipe(
        optimizer=opt,
        lr=lr,
        momentum=momentum,
        weight_decay=wd,
        batch_size=batch,
        epochs=epochs,
        schedule=schedule,
        label_smoothing=smoothing,
        ema=float(ema),
        tta=trial.suggest_categorical("tta", r.tta),
        augment=_sample_augment(trial, r.augments),
        **extra,
    )


def _sample_augment(trial: optuna.Trial, names: tuple[str, ...]) -> tuple[AugmentSpec, ...]:
    augs: list[AugmentSpec] = []
    if "crop" in names:
        mode = trial.suggest_categorical("aug_crop", ("reflect", "zero", "off"))
        if mode != "off":
            augs.append(
                AugmentSpec("crop", {"pad": trial.suggest_int("aug_crop_pad", 2, 4), "mode": mode})
            )
    if "flip" in names and trial.suggest_categorical("aug_flip", (True, False)):
        augs.append(AugmentSpec("flip"))
    if "resized_crop" in names:
        p = trial.suggest_float("aug_resized_crop_p", 0.0, 0.5)
        if p > 0.05:
            scale = trial.suggest_float("aug_resized_crop_scale", 0.3, 0.9)
            augs.append(AugmentSpec("resized_crop", {"p": p, "scale_min": scale}))
    for name in ("rotate", "affine"):
        if name in names:
            p = trial.suggest_float(f"aug_{name}_p", 0.0, 0.5)
            if p > 0.05:
                augs.append(AugmentSpec(name, {"p": p}))
    if "erase" in names:
        p = trial.suggest_float("aug_erase_p", 0.0, 0.5)
        if p > 0.05:
            augs.append(AugmentSpec("erase", {"p": p}))
    if "cutout" in names:
        size = trial.suggest_int("aug_cutout", 0, 16, step=4)
        if size:
            augs.append(AugmentSpec("cutout", {"size": size}))
    return tuple(augs)


def sample(
    trial: optuna.Trial,
    space: SearchSpace,
    *,
    max_params: int,
    num_classes: int = 10,
    input_size: int = INPUT_SIZE,
) -> Sample:
    """Draw one architecture and recipe from `space` for `trial`.

    The architecture classifies `num_classes` classes of `input_size` pixel images
    (the data's), which its parameter count includes. The trial's parameters alone
    (with `max_params` and the data's shape) fix the result: a trial draws the
    shape of the width schedule and the share of the budget to fill (`fill`), and the
    widths are the shape at the largest scale whose net has at most fill x max_params
    parameters. A net over `max_params` even at the smallest scale comes back as it
    is, and the caller records it as infeasible.
    """
    arch, scale = _sample_arch(trial, space.arch, max_params, num_classes, input_size)
    recipe = _sample_recipe(trial, space.recipe)
    return Sample(arch=arch, recipe=recipe, scale=scale)


def infeasible_rate(
    space: SearchSpace,
    n: int,
    *,
    max_params: int,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> tuple[float, list[int]]:
    """Sample `n` trials with a stand-in objective and no training.

    The stand-in scores feasible nets by log(params) and infeasible ones 0, with the
    budget set as a trial constraint, so a model-based sampler is pushed toward the
    limit as a real search would be. The default sampler is random with seed 0.

    Returns the infeasible share and the list of parameter counts.
    """
    sampler = sampler or optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    counts = []
    bad = 0
    for _ in range(n):
        trial = study.ask()
        p = count_params(sample(trial, space, max_params=max_params).arch)
        counts.append(p)
        bad += p > max_params
        trial.set_constraint("params", float(p - max_params))
        study.tell(trial, 0.0 if p > max_params else math.log(p))
    return bad / n, counts
