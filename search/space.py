"""Search spaces: the only module that calls `trial.suggest_*`.

A `SearchSpace` is data (ranges and choices) and `sample(trial, space)` turns one Optuna
trial into an `ArchSpec` and a `TrainRecipe`. Spaces come from the presets below or from
a TOML file (`load_space`), validated strictly.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import optuna

from models import ArchSpec, StageSpec, count_params, get_preset
from models.spec import INPUT_SIZE
from search.augment import AugmentSpec
from search.recipe import OPTIMIZERS, SCHEDULES, TrainRecipe, get_recipe

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
SEARCHABLE_AUGMENTS = ("crop", "flip", "resized_crop", "rotate", "affine", "erase", "cutout")
WIDTH_MULTIPLE = 8  # widths are rounded to multiples of 8, which tensor cores like


class SpaceError(ValueError):
    """A search space holds a bad key, type or range."""


@dataclass(frozen=True)
class ArchSpace:
    """Ranges of the architecture half of a space. Pairs are inclusive [low, high]."""

    fixed: str | None = None  # an architecture preset: the architecture is not searched
    stages: tuple[int, int] = (3, 7)
    widths: tuple[int, int] = (16, 512)  # per stage, sampled on a log scale
    monotonic: bool = False  # widths = base x growth^i instead of free per stage
    growth: tuple[float, float] = (1.5, 2.5)  # monotonic only
    repeats: tuple[int, int] = (1, 4)  # per stage
    kernels: tuple[int, ...] = (3, 5)  # per stage
    skip_kernels: tuple[int, ...] = (1, 3)  # one choice for the whole net
    downsamples: tuple[int, int] = (2, 4)  # stride-2 stages; the first stage never strides
    stem_widths: tuple[int, ...] = (32, 64)
    pools: tuple[int, ...] = (0,)
    # Shrink all widths by one common factor when a sample exceeds the budget, so that
    # over-budget samples stay rare; with false they are recorded as infeasible.
    fit_budget: bool = True


@dataclass(frozen=True)
class RecipeSpace:
    """Ranges of the training-recipe half of a space."""

    fixed: str | None = None  # a named recipe: the recipe is not searched
    optimizers: tuple[str, ...] = ("nesterov", "sgd", "adamw", "adam")
    lr_mult: tuple[float, float] = (0.3, 5.0)  # x BASE_LR[optimizer], log scale
    momentum: tuple[float, float] = (0.8, 0.95)
    weight_decay: tuple[float, float] = (1e-5, 1e-3)  # log scale
    batch_sizes: tuple[int, ...] = (256, 512, 1024)
    epochs: tuple[int, int] = (15, 15)
    schedules: tuple[str, ...] = ("onecycle", "cosine", "step", "zigzag_plateau")
    label_smoothing: tuple[float, float] = (0.0, 0.3)
    ema: tuple[float, ...] = (0.0,)
    augments: tuple[str, ...] = ("crop", "flip", "resized_crop", "cutout")
    tta: bool = True


@dataclass(frozen=True)
class SearchSpace:
    name: str
    arch: ArchSpace = field(default_factory=ArchSpace)
    recipe: RecipeSpace = field(default_factory=RecipeSpace)
    # configurations tried first, once per study: (architecture preset, recipe name)
    seeds: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        validate_space(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """A short hash that changes whenever any range or choice changes."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def arch_only(self) -> bool:
        return self.recipe.fixed is not None


# -------------------------------------------------------------------------- validation


def _pair(where: str, value: Any, kind: type, *, low: float, high: float | None = None):
    if not isinstance(value, tuple) or len(value) != 2:
        raise SpaceError(f"{where} must be a [low, high] pair, got {value!r}")
    for v in value:
        ok = isinstance(v, kind) or (kind is float and isinstance(v, int))
        if isinstance(v, bool) or not ok:
            raise SpaceError(f"{where} must hold {kind.__name__} values, got {value!r}")
        if v < low or (high is not None and v > high):
            raise SpaceError(f"{where} values must lie in [{low}, {high}], got {value!r}")
    if value[0] > value[1]:
        raise SpaceError(f"{where} low is above high: {value!r}")


def _choices(where: str, value: Any, allowed) -> None:
    if not isinstance(value, tuple) or not value:
        raise SpaceError(f"{where} must be a non-empty list, got {value!r}")
    for v in value:
        if isinstance(v, bool) or v not in allowed:
            raise SpaceError(f"{where} holds {v!r}; allowed: {list(allowed)}")


def validate_space(space: SearchSpace) -> None:
    a, r = space.arch, space.recipe
    if not isinstance(space.name, str) or not space.name:
        raise SpaceError(f"name must be a non-empty string, got {space.name!r}")
    if a.fixed is not None:
        try:
            get_preset(a.fixed)
        except KeyError as e:
            raise SpaceError(f"arch.fixed: {e.args[0]}") from None
    _pair("arch.stages", a.stages, int, low=1, high=8)
    _pair("arch.widths", a.widths, int, low=1, high=4096)
    _pair("arch.growth", a.growth, float, low=1.0, high=4.0)
    _pair("arch.repeats", a.repeats, int, low=1, high=64)
    _pair("arch.downsamples", a.downsamples, int, low=0, high=5)
    _choices("arch.kernels", a.kernels, (3, 5))
    _choices("arch.skip_kernels", a.skip_kernels, (1, 3))
    _choices("arch.stem_widths", a.stem_widths, range(1, 4097))
    _choices("arch.pools", a.pools, range(0, INPUT_SIZE + 1))
    if a.downsamples[0] > a.stages[1] - 1:
        raise SpaceError(
            f"arch.downsamples low {a.downsamples[0]} needs more than {a.stages[1]} stages"
        )
    if max(a.pools) > INPUT_SIZE >> a.downsamples[1]:
        raise SpaceError(f"arch.pools {list(a.pools)} exceed the final map of some samples")
    for f in ("monotonic", "fit_budget"):
        if not isinstance(getattr(a, f), bool):
            raise SpaceError(f"arch.{f} must be true or false, got {getattr(a, f)!r}")
    if r.fixed is not None:
        try:
            get_recipe(r.fixed)
        except KeyError as e:
            raise SpaceError(f"recipe.fixed: {e.args[0]}") from None
    _choices("recipe.optimizers", r.optimizers, OPTIMIZERS)
    _choices("recipe.schedules", r.schedules, SCHEDULES)
    _choices("recipe.augments", r.augments, SEARCHABLE_AUGMENTS)
    _choices("recipe.batch_sizes", r.batch_sizes, range(2, 65537))
    _pair("recipe.lr_mult", r.lr_mult, float, low=1e-4, high=1e4)
    _pair("recipe.momentum", r.momentum, float, low=0.0, high=0.999)
    _pair("recipe.weight_decay", r.weight_decay, float, low=0.0, high=1.0)
    _pair("recipe.epochs", r.epochs, int, low=1, high=10_000)
    _pair("recipe.label_smoothing", r.label_smoothing, float, low=0.0, high=0.5)
    for i, e in enumerate(r.ema):
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e < 1:
            raise SpaceError(f"recipe.ema[{i}] must be a decay in [0, 1), got {e!r}")
    if not isinstance(r.tta, bool):
        raise SpaceError(f"recipe.tta must be true or false, got {r.tta!r}")
    for i, pair in enumerate(space.seeds):
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise SpaceError(f"seeds[{i}] must be [arch preset, recipe name], got {pair!r}")
        try:
            get_preset(pair[0])
            get_recipe(pair[1])
        except KeyError as e:
            raise SpaceError(f"seeds[{i}]: {e.args[0]}") from None


# ----------------------------------------------------------------------------- presets

SPACES: dict[str, SearchSpace] = {
    # Free zig-zag schedules: 3-7 stages, any width per stage.
    "zigzag": SearchSpace(
        name="zigzag",
        seeds=(("zigzag", "seed"), ("zigzag", "fast"), ("resnet18-1111", "fast")),
    ),
    # Four monotonic stages, narrow and deep.
    "deep-narrow": SearchSpace(
        name="deep-narrow",
        arch=ArchSpace(
            stages=(4, 4),
            widths=(16, 64),
            monotonic=True,
            growth=(1.5, 2.0),
            repeats=(2, 13),
            downsamples=(3, 3),
            stem_widths=(16, 32),
        ),
    ),
    # The classic four-stage ResNet shape with doubling-ish widths.
    "resnet": SearchSpace(
        name="resnet",
        arch=ArchSpace(
            stages=(4, 4),
            widths=(32, 96),
            monotonic=True,
            growth=(1.5, 2.5),
            repeats=(1, 3),
            kernels=(3,),
            skip_kernels=(1,),
            downsamples=(3, 3),
            stem_widths=(32, 64),
        ),
    ),
    # The seed's fixed ZigZag net with the seed report's recipe space.
    "recipe": SearchSpace(
        name="recipe",
        arch=ArchSpace(fixed="zigzag"),
        recipe=RecipeSpace(
            optimizers=OPTIMIZERS,
            batch_sizes=(32, 64, 128),
            schedules=SCHEDULES,
            lr_mult=(0.1, 3.0),
            momentum=(0.5, 0.95),
            weight_decay=(1e-5, 5e-3),
            ema=(0.0, 0.999),
            augments=SEARCHABLE_AUGMENTS,
        ),
    ),
}


def get_space(name: str) -> SearchSpace:
    try:
        return SPACES[name]
    except KeyError:
        raise SpaceError(
            f"unknown study space {name!r}; choose from {', '.join(SPACES)} or pass --space FILE"
        ) from None


# ---------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class Sample:
    """What one trial trains: the architecture, the recipe and how the arch was fitted."""

    arch: ArchSpec
    recipe: TrainRecipe
    shrink: float = 1.0  # common width factor applied to fit the budget (1.0: none)


def _round_width(w: float, low: int) -> int:
    return max(low, int(round(w / WIDTH_MULTIPLE)) * WIDTH_MULTIPLE)


def _sample_arch(trial: optuna.Trial, a: ArchSpace) -> ArchSpec:
    if a.fixed is not None:
        return get_preset(a.fixed)
    n = trial.suggest_int("stages", *a.stages)
    lo, hi = a.widths
    if a.monotonic:
        base = trial.suggest_int("width_base", lo, hi, log=True)
        growth = trial.suggest_float("width_growth", *a.growth)
        widths = [min(4096, _round_width(base * growth**i, lo)) for i in range(n)]
    else:
        widths = [
            _round_width(trial.suggest_int(f"width_{i}", lo, hi, log=True), lo) for i in range(n)
        ]
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
    final = INPUT_SIZE >> len(strided)
    pools = [p for p in a.pools if p <= final] or [0]
    pool = trial.suggest_categorical("pool", a.pools)
    pool = pool if pool in pools else 0
    stages = tuple(
        StageSpec(w, r, 2 if i in strided else 1, k, skip)
        for i, (w, r, k) in enumerate(zip(widths, repeats, kernels, strict=True))
    )
    return ArchSpec(stages=stages, stem_width=stem, pool=pool)


def shrink_to_budget(spec: ArchSpec, limit: int, low: int = 16) -> tuple[ArchSpec, float]:
    """Scale every stage width by one factor (largest that fits), rounding to 8s.

    Returns the spec unchanged with factor 1.0 when it already fits, and the smallest
    spec with factor 0.0 when even `low`-wide stages do not fit.
    """
    if count_params(spec) <= limit:
        return spec, 1.0

    def scaled(f: float) -> ArchSpec:
        stages = tuple(replace(s, width=_round_width(s.width * f, low)) for s in spec.stages)
        return replace(spec, stages=stages)

    lo_f, hi_f = 0.0, 1.0
    for _ in range(30):
        mid = (lo_f + hi_f) / 2
        if count_params(scaled(mid)) <= limit:
            lo_f = mid
        else:
            hi_f = mid
    return scaled(lo_f), lo_f


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
        tta=r.tta,
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


def sample(trial: optuna.Trial, space: SearchSpace, *, max_params: int) -> Sample:
    """Draw one architecture and recipe from `space` for `trial`.

    Over-budget architectures are shrunk to fit when the space says `fit_budget`;
    otherwise they come back as drawn, and the caller records them as infeasible.
    """
    arch = _sample_arch(trial, space.arch)
    recipe = _sample_recipe(trial, space.recipe)
    shrink = 1.0
    if space.arch.fixed is None and space.arch.fit_budget:
        fitted, shrink = shrink_to_budget(arch, max_params, low=space.arch.widths[0])
        if shrink > 0:
            arch = fitted
    return Sample(arch=arch, recipe=recipe, shrink=shrink)


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


# ------------------------------------------------------------------------- TOML spaces

_SECTIONS = {"arch": ArchSpace, "recipe": RecipeSpace}
_TOP_KEYS = {"name", "extends", "arch", "recipe", "seeds"}


def space_from_dict(data: dict[str, Any], *, source: str) -> SearchSpace:
    """Build a space from parsed TOML; every error names `source`, the key and value."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise SpaceError(f"{source}: unknown key {unknown[0]!r} (known: {sorted(_TOP_KEYS)})")
    base_name = data.get("extends", "zigzag")
    if not isinstance(base_name, str) or base_name not in SPACES:
        raise SpaceError(f"{source}: extends={base_name!r} is not one of {', '.join(SPACES)}")
    base = SPACES[base_name]
    parts: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise SpaceError(f"{source}: [{section}] must be a table, got {table!r}")
        known = {f.name: f for f in fields(cls)}
        changes = {}
        for key, value in table.items():
            if key not in known:
                raise SpaceError(
                    f"{source}: unknown key {section}.{key} = {value!r} (known: {', '.join(known)})"
                )
            changes[key] = tuple(value) if isinstance(value, list) else value
            if key == "epochs" and isinstance(value, int) and not isinstance(value, bool):
                changes[key] = (value, value)
        parts[section] = replace(getattr(base, section), **changes)
    seeds = data.get("seeds", base.seeds if base_name == data.get("extends") else ())
    try:
        seeds = tuple(tuple(s) if isinstance(s, list) else s for s in seeds)
        return SearchSpace(
            name=data.get("name", source),
            arch=parts["arch"],
            recipe=parts["recipe"],
            seeds=seeds,
        )
    except (SpaceError, TypeError) as e:
        raise SpaceError(f"{source}: {e}") from None


def load_space(path: str) -> SearchSpace:
    """Read a TOML search space; see README for the keys."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise SpaceError(f"{path}: no such space file") from None
    except tomllib.TOMLDecodeError as e:
        raise SpaceError(f"{path}: not valid TOML: {e}") from None
    return space_from_dict(data, source=path)


def space_from_stored(data: dict[str, Any]) -> SearchSpace:
    """Rebuild a space from `SearchSpace.to_dict()` output (as stored on a study)."""

    def tuples(table: dict[str, Any]) -> dict[str, Any]:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}

    return SearchSpace(
        name=data["name"],
        arch=ArchSpace(**tuples(data["arch"])),
        recipe=RecipeSpace(**tuples(data["recipe"])),
        seeds=tuple(tuple(s) for s in data.get("seeds", ())),
    )


def with_epochs(space: SearchSpace, epochs: int | None) -> SearchSpace:
    """The space with its epoch range pinned to `epochs` (the CLI's --epochs)."""
    if epochs is None:
        return space
    return replace(space, recipe=replace(space.recipe, epochs=(epochs, epochs)))


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
