"""Seed configurations: the presets and named recipes a study tries first."""

from __future__ import annotations

from typing import Any

from autosearch.models import ArchSpec, get_preset
from autosearch.search.space.sampling import BASE_LR
from autosearch.search.space.schema import ArchSpace, RecipeSpace, SearchSpace
from autosearch.search.training.recipe import TrainRecipe, get_recipe


def seed_params(space: SearchSpace) -> list[dict[str, Any]]:
    """Parameters that make `sample` return each of the space's seed configurations.

    The seeds are enqueued as fixed trials; parameters that their preset or recipe does
    not determine take the middle of their range.
    """
    out = []
    for arch_name, recipe_name in space.seeds:
        params: dict[str, Any] = {}
        if space.arch.fixed is None:
            params.update(_arch_params(get_preset(arch_name), space.arch))
        if space.recipe.fixed is None:
            params.update(_recipe_params(get_recipe(recipe_name), space.recipe))
        out.append(params)
    return out


def _nearest(choices, value):
    """`value` if it is a choice, else the closest choice (or the first, for names)."""
    if value in choices:
        return value
    if isinstance(value, str):
        return choices[0]
    return min(choices, key=lambda c: abs(c - value))


def _clip(pair, value):
    return type(pair[0])(min(max(value, pair[0]), pair[1]))


def _arch_params(spec: ArchSpec, a: ArchSpace) -> dict[str, Any]:
    n = len(spec.stages)
    strided = [i for i, s in enumerate(spec.stages) if s.stride == 2]
    params: dict[str, Any] = {
        "stages": _clip(a.stages, n),
        "skip_kernel": _nearest(a.skip_kernels, spec.stages[0].skip_kernel),
        "downsamples": _clip(a.downsamples, len(strided)),
        "stem_width": _nearest(a.stem_widths, spec.stem_width),
        "pool": _nearest(a.pools, spec.pool),
    }
    chosen: set[int] = set()
    for j, i in enumerate(strided):
        free = [k for k in range(1, n) if k not in chosen]
        # the middle of the slot that maps to stage i
        params[f"down_at_{j}"] = (free.index(i) + 0.5) / len(free)
        chosen.add(i)
    for i, s in enumerate(spec.stages):
        params[f"width_{i}"] = _clip(a.widths, s.width)
        params[f"repeats_{i}"] = _clip(a.repeats, s.repeats)
        params[f"kernel_{i}"] = _nearest(a.kernels, s.kernel)
    return params


def _recipe_params(r: TrainRecipe, space: RecipeSpace) -> dict[str, Any]:
    params: dict[str, Any] = {
        "optimizer": _nearest(space.optimizers, r.optimizer),
        "lr_mult": _clip(space.lr_mult, r.lr / BASE_LR[r.optimizer]),
        "momentum": _clip(space.momentum, r.momentum),
        "weight_decay": _clip(space.weight_decay, r.weight_decay),
        "batch_size": _nearest(space.batch_sizes, r.batch_size),
        "epochs": _clip(space.epochs, r.epochs),
        "schedule": _nearest(space.schedules, r.schedule),
        "label_smoothing": _clip(space.label_smoothing, r.label_smoothing),
        "ema": _nearest(space.ema, r.ema),
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


def seed_config(space: SearchSpace, index: int, epochs: int) -> tuple[ArchSpec, TrainRecipe]:
    """The exact architecture and recipe of seed configuration `index`.

    Only the epoch count follows the study (its trial's `epochs`), so that a short
    study runs short seeds too.
    """
    arch_name, recipe_name = space.seeds[index]
    arch = get_preset(space.arch.fixed or arch_name)
    recipe = get_recipe(space.recipe.fixed or recipe_name).replace(epochs=epochs)
    return arch, recipe
