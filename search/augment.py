"""Batched, per-sample random augmentations that run on the data's own device.

Every augmentation takes a float batch (B, 3, H, W) in [0, 1], draws its randomness per
sample from the given generator, and returns a batch of the same shape. There is no
per-image Python loop and no PIL anywhere in the training path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# name -> default parameters. A recipe names augmentations from this table; every
# parameter it leaves out takes the default shown here.
AUGMENTS: dict[str, dict[str, Any]] = {
    # pad by `pad` pixels (mode "zero" or "reflect"), then crop back to H x W at random
    "crop": {"pad": 4, "mode": "reflect"},
    # mirror left-right with probability p
    "flip": {"p": 0.5},
    # crop a random area fraction in [scale_min, scale_max] with aspect ratio in
    # [ratio_min, ratio_max], resized back to H x W; applied with probability p
    "resized_crop": {"scale_min": 0.35, "scale_max": 1.0, "ratio_min": 0.75,
                     "ratio_max": 1.3333, "p": 1.0},
    # rotate by a uniform angle in [-degrees, degrees]; applied with probability p
    "rotate": {"degrees": 15.0, "p": 0.5},
    # rotation, translation (fraction of the side), scale and shear (degrees) at once
    "affine": {"degrees": 10.0, "translate": 0.1, "scale_min": 0.9, "scale_max": 1.1,
               "shear": 5.0, "p": 0.5},
    # erase one rectangle of area fraction [scale_min, scale_max] and aspect ratio
    # [ratio_min, ratio_max] with probability p; fill "zero" or "random"
    "erase": {"p": 0.5, "scale_min": 0.02, "scale_max": 0.25, "ratio_min": 0.3,
              "ratio_max": 3.3, "fill": "zero"},
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
        raise ValueError(f"augmentation {name!r}: scale_max must be <= 1, got {full['scale_max']!r}")
    if name == "resized_crop" and full["scale_min"] <= 0:
        raise ValueError(f"augmentation {name!r}: scale_min must be > 0, got {full['scale_min']!r}")
    return full
