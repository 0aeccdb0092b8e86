"""What a search space is: ranges and choices as frozen, validated data.

An `ArchSpace` holds the ranges of the architecture, a `RecipeSpace` those of the
training recipe, and a `SearchSpace` names the pair with the seed configurations to try
first. Every error names the field and the bad value.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from autosearch.models import get_preset
from autosearch.models.spec import INPUT_SIZE
from autosearch.search.training.recipe import OPTIMIZERS, SCHEDULES, get_recipe

SEARCHABLE_AUGMENTS = ("crop", "flip", "resized_crop", "rotate", "affine", "erase", "cutout")


class SpaceError(ValueError):
    """A search space holds a bad key, type or range."""


@dataclass(frozen=True)
class ArchSpace:
    """Ranges of the architecture half of a space. Pairs are inclusive [low, high]."""

    fixed: str | None = None  # an architecture preset: the architecture is not searched
    stages: tuple[int, int] = (3, 7)
    # Every stage's width (free spaces) or the first stage's (monotonic ones), channels.
    widths: tuple[int, int] = (16, 512)
    monotonic: bool = False  # widths grow by one factor per stage instead of a free shape
    growth: tuple[float, float] = (1.5, 2.5)  # monotonic only
    # The share of the parameter budget a net fills: its widths are the largest scale
    # of the drawn shape that stays within fill x max_params (see `sampling`).
    fill: tuple[float, float] = (0.25, 1.0)
    repeats: tuple[int, int] = (1, 4)  # per stage
    kernels: tuple[int, ...] = (3, 5)  # per stage
    skip_kernels: tuple[int, ...] = (1, 3)  # one choice for the whole net
    downsamples: tuple[int, int] = (2, 4)  # stride-2 stages; the first stage never strides
    stem_widths: tuple[int, ...] = (32, 64)
    pools: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class RecipeSpace:
    """Ranges of the training-recipe half of a space."""

    fixed: str | None = None  # a named recipe: the recipe is not searched
    optimizers: tuple[str, ...] = ("nesterov", "sgd", "adamw", "adam")
    # The ranges hold the seed report's recipe (lr 0.01 = 0.1 x 0.1, batch 32, plateau,
    # no TTA) and `fast`, so the seed configurations are trials of the space.
    lr_mult: tuple[float, float] = (0.05, 5.0)  # x BASE_LR[optimizer], log scale
    momentum: tuple[float, float] = (0.8, 0.95)
    weight_decay: tuple[float, float] = (1e-5, 1e-3)  # log scale
    batch_sizes: tuple[int, ...] = (32, 256, 512, 1024)
    epochs: tuple[int, int] = (15, 15)
    schedules: tuple[str, ...] = ("onecycle", "cosine", "step", "plateau", "zigzag_plateau")
    label_smoothing: tuple[float, float] = (0.0, 0.3)
    ema: tuple[float, ...] = (0.0,)
    augments: tuple[str, ...] = ("crop", "flip", "resized_crop", "cutout")
    tta: tuple[bool, ...] = (True, False)  # flip test-time augmentation; true alone fixes it

    def __post_init__(self) -> None:
        # A single true or false (as older spaces and TOML files write it) is one choice.
        if isinstance(self.tta, bool):
            object.__setattr__(self, "tta", (self.tta,))


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
        if v != v:  # NaN passes every comparison below
            raise SpaceError(f"{where} must hold numbers, got {value!r}")
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
    if -(-a.widths[0] // 8) * 8 > a.widths[1]:
        raise SpaceError(f"arch.widths {list(a.widths)} holds no multiple of 8")
    _pair("arch.growth", a.growth, float, low=1.0, high=4.0)
    _pair("arch.fill", a.fill, float, low=0.01, high=1.0)
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
    if not isinstance(a.monotonic, bool):
        raise SpaceError(f"arch.monotonic must be true or false, got {a.monotonic!r}")
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
    if not isinstance(r.tta, tuple) or not r.tta or not all(isinstance(t, bool) for t in r.tta):
        raise SpaceError(f"recipe.tta must be true, false or a list of them, got {r.tta!r}")
    for i, pair in enumerate(space.seeds):
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise SpaceError(f"seeds[{i}] must be [arch preset, recipe name], got {pair!r}")
        try:
            get_preset(pair[0])
            get_recipe(pair[1])
        except KeyError as e:
            raise SpaceError(f"seeds[{i}]: {e.args[0]}") from None
