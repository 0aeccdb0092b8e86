"""`TrainRecipe`: everything about how a model is trained, as frozen data.

A recipe is stored on each trial as JSON, so any trial can be retrained exactly. Its
augmentations are `AugmentSpec`s: a name from `AUGMENTS` with every parameter filled in
and checked. The batched tensor ops that apply them live in `training.augment`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

OPTIMIZERS = (
    "sgd",
    "nesterov",
    "asgd",
    "adam",
    "adamw",
    "adamax",
    "adagrad",
    "rmsprop",
    "adadelta",
)


SCHEDULES = (
    "constant",  # lr throughout
    "step",  # lr x gamma every step_epochs epochs
    "cosine",  # cosine from lr down to lr x min_lr_ratio over the run
    "onecycle",  # linear rise over `warmup` of the run, then linear fall to ~0 (triangular)
    "cosine_restarts",  # cosine with warm restarts every restart_epochs (x restart_mult)
    "cyclic",  # triangular cycles between lr x cyclic_base and lr, cyclic_epochs per half
    "plateau",  # ReduceLROnPlateau: lr x plateau_factor after plateau_patience flat epochs
    "zigzag_plateau",  # plateau, and lr / plateau_factor again (up to lr) on improvement
)


PLATEAU_MODES = ("min", "max")  # min watches validation loss, max validation accuracy


# ----------------------------------------------------------------------- augmentations


# name -> default parameters. A recipe names augmentations from this table; every
# parameter it leaves out takes the default shown here.
AUGMENTS: dict[str, dict[str, Any]] = {
    # pad by `pad` pixels (mode "zero" or "reflect"), then crop back to H x W at random
    "crop": {"pad": 4, "mode": "reflect"},
    # mirror left-right with probability p
    "flip": {"p": 0.5},
    # crop a random area fraction in [scale_min, scale_max] with aspect ratio in
    # [ratio_min, ratio_max], resized back to H x W; applied with probability p
    "resized_crop": {
        "scale_min": 0.35,
        "scale_max": 1.0,
        "ratio_min": 0.75,
        "ratio_max": 1.3333,
        "p": 1.0,
    },
    # rotate by a uniform angle in [-degrees, degrees]; applied with probability p
    "rotate": {"degrees": 15.0, "p": 0.5},
    # rotation, translation (fraction of the side), scale and shear (degrees) at once
    "affine": {
        "degrees": 10.0,
        "translate": 0.1,
        "scale_min": 0.9,
        "scale_max": 1.1,
        "shear": 5.0,
        "p": 0.5,
    },
    # erase one rectangle of area fraction [scale_min, scale_max] and aspect ratio
    # [ratio_min, ratio_max] with probability p; fill "zero" or "random"
    "erase": {
        "p": 0.5,
        "scale_min": 0.02,
        "scale_max": 0.25,
        "ratio_min": 0.3,
        "ratio_max": 3.3,
        "fill": "zero",
    },
    # cutout: a size x size square at a random centre (may overhang the border)
    "cutout": {"size": 8, "p": 1.0},
}


@dataclass(frozen=True)
class AugmentSpec:
    """One augmentation by name, with every parameter filled in and validated."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", validate_augment(self.name, dict(self.params)))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentSpec:
        data = dict(data)
        if "name" not in data:
            raise ValueError(f"augmentation needs a 'name', got {data!r}")
        name = data.pop("name")
        return cls(name, data)


def validate_augment(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and check every value; errors name the augmentation and the key."""
    if name not in AUGMENTS:
        raise ValueError(f"unknown augmentation {name!r}; choose from {', '.join(AUGMENTS)}")
    defaults = AUGMENTS[name]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) for augmentation {name!r}: {', '.join(unknown)}; "
            f"known: {', '.join(defaults)}"
        )
    full = {**defaults, **params}
    for key, value in full.items():
        default = defaults[key]
        where = f"augmentation {name!r} parameter {key!r}"
        if isinstance(default, str):
            allowed = {"mode": ("zero", "reflect"), "fill": ("zero", "random")}[key]
            if value not in allowed:
                raise ValueError(f"{where} must be one of {list(allowed)}, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        elif not math.isfinite(value):
            raise ValueError(f"{where} must be finite, got {value!r}")
        elif value < 0:
            raise ValueError(f"{where} must be >= 0, got {value!r}")
        elif isinstance(default, int) and not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        if key == "p" and value > 1:
            raise ValueError(f"{where} is a probability in [0, 1], got {value!r}")
    for low, high in (("scale_min", "scale_max"), ("ratio_min", "ratio_max")):
        if low in full and full[low] > full[high]:
            raise ValueError(
                f"augmentation {name!r}: {low}={full[low]!r} is above {high}={full[high]!r}"
            )
    if name in ("resized_crop", "erase") and full["scale_max"] > 1:
        raise ValueError(
            f"augmentation {name!r}: scale_max must be <= 1, got {full['scale_max']!r}"
        )
    if "ratio_min" in full and full["ratio_min"] <= 0:
        # ratios are drawn log-uniformly, so 0 has no logarithm
        raise ValueError(f"augmentation {name!r}: ratio_min must be > 0, got {full['ratio_min']!r}")
    if name == "resized_crop" and full["scale_min"] <= 0:
        raise ValueError(f"augmentation {name!r}: scale_min must be > 0, got {full['scale_min']!r}")
    return full


# ------------------------------------------------------------------------------ recipe


class RecipeError(ValueError):
    """A recipe field holds a bad value."""


def _default_augment() -> tuple[AugmentSpec, ...]:
    return (AugmentSpec("crop", {"pad": 4, "mode": "reflect"}), AugmentSpec("flip"))


@dataclass(frozen=True)
class TrainRecipe:
    """How to train one model. Learning rates are per batch, not scaled by batch size."""

    optimizer: str = "nesterov"
    lr: float = 0.2  # peak learning rate
    momentum: float = 0.9  # SGD/RMSprop momentum; beta1 of the Adam family; ASGD ignores it
    weight_decay: float = 5e-4
    batch_size: int = 512
    epochs: int = 20
    schedule: str = "onecycle"
    warmup: float = 0.25  # onecycle: fraction of all steps spent rising
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of lr
    step_epochs: int = 10  # step: epochs between decays
    gamma: float = 0.1  # step: decay factor
    restart_epochs: int = 10  # cosine_restarts: length of the first cycle, epochs
    restart_mult: int = 1  # cosine_restarts: growth of each later cycle
    cyclic_epochs: float = 2.0  # cyclic: epochs per half cycle
    cyclic_base: float = 0.1  # cyclic: lowest lr as a fraction of lr
    plateau_factor: float = 0.1  # plateau schedules: lr multiplier on a plateau
    plateau_patience: int = 5  # plateau schedules: flat epochs tolerated
    plateau_mode: str = "min"
    label_smoothing: float = 0.0
    ema: float = 0.0  # decay of an exponential moving average of weights; 0 = off
    tta: bool = True  # evaluate on the image and its mirror, averaging the logits
    augment: tuple[AugmentSpec, ...] = _default_augment()
    name: str = field(default="", compare=False)  # a label: equal recipes train alike

    def __post_init__(self) -> None:
        augs = tuple(
            AugmentSpec.from_dict(a) if isinstance(a, dict) else a for a in (self.augment or ())
        )
        object.__setattr__(self, "augment", augs)
        self.validate()

    def validate(self) -> None:
        def bad(field: str, why: str) -> RecipeError:
            return RecipeError(f"recipe field {field}={getattr(self, field)!r}: {why}")

        def number(field: str) -> float:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(field, "must be a number")
            if not math.isfinite(value):
                raise bad(field, "must be finite")
            return value

        def integer(field: str, low: int) -> None:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(field, "must be an integer")
            if value < low:
                raise bad(field, f"must be >= {low}")

        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"choose from {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"choose from {', '.join(SCHEDULES)}")
        if self.plateau_mode not in PLATEAU_MODES:
            raise bad("plateau_mode", f"choose from {', '.join(PLATEAU_MODES)}")
        if number("lr") <= 0:
            raise bad("lr", "must be > 0")
        for f in ("momentum", "warmup", "min_lr_ratio", "label_smoothing", "ema"):
            if not 0 <= number(f) < 1:
                raise bad(f, "must be in [0, 1)")
        for f in ("gamma", "cyclic_base", "plateau_factor"):
            if not 0 < number(f) < 1:
                raise bad(f, "must be in (0, 1)")
        if number("weight_decay") < 0:
            raise bad("weight_decay", "must be >= 0")
        if number("cyclic_epochs") <= 0:
            raise bad("cyclic_epochs", "must be > 0")
        integer("batch_size", 1)
        integer("epochs", 1)
        integer("step_epochs", 1)
        integer("restart_epochs", 1)
        integer("restart_mult", 1)
        integer("plateau_patience", 0)
        if not isinstance(self.tta, bool):
            raise bad("tta", "must be true or false")
        for a in self.augment:
            if not isinstance(a, AugmentSpec):
                raise RecipeError(f"recipe augment entries must be AugmentSpec, got {a!r}")

    def replace(self, **changes: Any) -> TrainRecipe:
        """A copy with some fields changed (and validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["augment"] = [a.to_dict() for a in self.augment]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainRecipe:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(f"unknown recipe field(s): {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainRecipe:
        return cls.from_dict(json.loads(text))


RECIPES: dict[str, TrainRecipe] = {
    # The seed report's recipe: small batches, Nesterov SGD and a plateau schedule on
    # validation loss, with crop, flip and random-resized-crop.
    "seed": TrainRecipe(
        optimizer="nesterov",
        lr=0.01,
        momentum=0.8,
        weight_decay=5e-4,
        batch_size=32,
        epochs=60,
        schedule="plateau",
        plateau_factor=0.1,
        plateau_patience=5,
        plateau_mode="min",
        tta=False,
        augment=(
            AugmentSpec("crop", {"pad": 4, "mode": "zero"}),
            AugmentSpec("flip"),
            AugmentSpec("resized_crop", {"scale_min": 0.6, "p": 0.5}),
        ),
        name="seed",
    ),
    # Quick and strong: large batches, one-cycle Nesterov SGD, label smoothing, flip TTA.
    "fast": TrainRecipe(
        optimizer="nesterov",
        lr=0.2,
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=512,
        epochs=20,
        schedule="onecycle",
        warmup=0.25,
        label_smoothing=0.2,
        tta=True,
        name="fast",
    ),
}


def get_recipe(name: str) -> TrainRecipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}") from None
