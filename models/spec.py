"""`ArchSpec`: one member of the CIFAR ResNet family, as plain data.

A spec is frozen, validates itself on construction and round-trips through JSON, so it
can be stored on an Optuna trial and rebuilt exactly later.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

INPUT_SIZE = 32  # CIFAR images are 32x32 pixels; the default input side
MIN_INPUT_SIZE = 32  # five stride-2 stages still leave a map of at least 1x1
MAX_INPUT_SIZE = 512
CONV_KERNELS = (3, 5)
SKIP_KERNELS = (1, 3)
STRIDES = (1, 2)
MAX_STAGES = 8


class SpecError(ValueError):
    """A spec field holds a value outside the family."""


def _check_int(name: str, value: Any, *, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise SpecError(f"{name} must be {bound}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[int, ...]) -> None:
    if isinstance(value, bool) or value not in choices:
        raise SpecError(f"{name} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class StageSpec:
    """A run of `repeats` BasicBlocks of one width.

    Only the first block of a stage may change the shape (stride or width); its shortcut
    then gets a conv+BN projection with a `skip_kernel` x `skip_kernel` kernel.
    """

    width: int  # output channels of every block in the stage
    repeats: int = 1  # number of BasicBlocks
    stride: int = 1  # stride of the first block's first conv and its projection
    kernel: int = 3  # kernel of both convs in each block (3 or 5)
    skip_kernel: int = 1  # kernel of the projection shortcut (1 or 3)

    def validate(self, where: str) -> None:
        _check_int(f"{where}.width", self.width, low=1, high=4096)
        _check_int(f"{where}.repeats", self.repeats, low=1, high=64)
        _check_choice(f"{where}.stride", self.stride, STRIDES)
        _check_choice(f"{where}.kernel", self.kernel, CONV_KERNELS)
        _check_choice(f"{where}.skip_kernel", self.skip_kernel, SKIP_KERNELS)


@dataclass(frozen=True)
class ArchSpec:
    """A CIFAR ResNet: stem conv, stages of BasicBlocks, pooling, one linear layer.

    `pool` = 0 means global average pooling; `pool` = P > 0 means an average pool with
    kernel and stride P, whose flattened output feeds the classifier. `num_classes`
    sizes the classifier and `input_size` is the side of the square RGB images it
    takes; both come from the data and both change the parameter count.

    Example:
        >>> spec = ArchSpec(stages=(StageSpec(64, 2), StageSpec(128, 2, stride=2)))
        >>> ArchSpec.from_json(spec.to_json()) == spec
        True
    """

    stages: tuple[StageSpec, ...]
    stem_width: int = 64
    stem_kernel: int = 3
    pool: int = 0
    num_classes: int = 10
    name: str = field(default="", compare=False)
    input_size: int = INPUT_SIZE

    def __post_init__(self) -> None:
        stages = tuple(StageSpec(**s) if isinstance(s, dict) else s for s in (self.stages or ()))
        object.__setattr__(self, "stages", stages)
        self.validate()

    def validate(self) -> None:
        if not self.stages:
            raise SpecError("stages must hold 1 to 8 stages, got none")
        if len(self.stages) > MAX_STAGES:
            raise SpecError(f"stages must hold 1 to {MAX_STAGES} stages, got {len(self.stages)}")
        _check_int("stem_width", self.stem_width, low=1, high=4096)
        _check_choice("stem_kernel", self.stem_kernel, CONV_KERNELS)
        _check_int("num_classes", self.num_classes, low=2)
        _check_int("input_size", self.input_size, low=MIN_INPUT_SIZE, high=MAX_INPUT_SIZE)
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, StageSpec):
                raise SpecError(f"stages[{i}] must be a StageSpec, got {stage!r}")
            stage.validate(f"stages[{i}]")
        size = self.input_size
        for i, stage in enumerate(self.stages):
            if stage.stride > 1 and size == 1:
                raise SpecError(
                    f"stages[{i}].stride={stage.stride} would shrink a 1x1 map below 1 pixel"
                )
            size = (size - 1) // stage.stride + 1
        _check_int("pool", self.pool, low=0)
        if self.pool > size:
            raise SpecError(f"pool={self.pool} is larger than the final {size}x{size} map")

    # Derived shape facts, used by the counters and the model builder.
    def map_sizes(self) -> list[int]:
        """Spatial size of each stage's output map, in pixels."""
        sizes, size = [], self.input_size
        for stage in self.stages:
            size = (size - 1) // stage.stride + 1
            sizes.append(size)
        return sizes

    def classifier_features(self) -> int:
        final = self.map_sizes()[-1]
        side = 1 if self.pool == 0 else (final - self.pool) // self.pool + 1
        return self.stages[-1].width * side * side

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(s.width for s in self.stages)

    @property
    def repeats(self) -> tuple[int, ...]:
        return tuple(s.repeats for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = [asdict(s) for s in self.stages]
        if self.input_size == INPUT_SIZE:
            # Specs stored before the input size was a field (on trials, in checkpoints
            # and exports) then read back and compare exactly as they were written.
            del data["input_size"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        known = {"stages", "stem_width", "stem_kernel", "pool", "num_classes", "name", "input_size"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown ArchSpec field(s): {', '.join(unknown)}")
        stages = data.get("stages")
        if not isinstance(stages, (list, tuple)):
            raise SpecError(f"stages must be a list, got {stages!r}")
        stage_keys = {"width", "repeats", "stride", "kernel", "skip_kernel"}
        for i, s in enumerate(stages):
            if not isinstance(s, dict):
                raise SpecError(f"stages[{i}] must be an object, got {s!r}")
            extra = sorted(set(s) - stage_keys)
            if extra:
                raise SpecError(f"unknown field(s) in stages[{i}]: {', '.join(extra)}")
        return cls(**{**data, "stages": tuple(StageSpec(**s) for s in stages)})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        """A one-line summary: widths, repeats, kernels and strides per stage."""
        parts = [
            f"{s.width}x{s.repeats}"
            + (f"/s{s.stride}" if s.stride > 1 else "")
            + (f"/k{s.kernel}" if s.kernel != 3 else "")
            + (f"/sk{s.skip_kernel}" if s.skip_kernel != 1 else "")
            for s in self.stages
        ]
        pool = "gap" if self.pool == 0 else f"avgpool{self.pool}"
        line = f"stem {self.stem_width}k{self.stem_kernel} | " + " ".join(parts) + f" | {pool}"
        if (self.num_classes, self.input_size) != (10, INPUT_SIZE):
            line += f" | {self.num_classes} classes, {self.input_size}px"
        return line


def make_spec(
    widths: list[int] | tuple[int, ...],
    repeats: list[int] | tuple[int, ...],
    *,
    strides: list[int] | tuple[int, ...] | None = None,
    kernels: list[int] | tuple[int, ...] | None = None,
    skip_kernels: list[int] | tuple[int, ...] | None = None,
    stem_width: int = 64,
    stem_kernel: int = 3,
    pool: int = 0,
    num_classes: int = 10,
    input_size: int = INPUT_SIZE,
    name: str = "",
) -> ArchSpec:
    """Build a spec from per-stage lists.

    Strides default to 1 for the first stage and 2 for every later one. A `kernels` or
    `skip_kernels` list of length 1 applies to every stage.
    """
    n = len(widths)
    if n == 0:
        raise SpecError("widths must name at least one stage, got none")

    def per_stage(label: str, values, default):
        if values is None:
            return list(default)
        values = list(values)
        if len(values) == 1:
            return values * n
        if len(values) != n:
            raise SpecError(f"{label} has {len(values)} values for {n} stages: {values}")
        return values

    repeats = per_stage("repeats", repeats, [1] * n)
    strides = per_stage("strides", strides, [1] + [2] * (n - 1))
    kernels = per_stage("kernels", kernels, [3] * n)
    skips = per_stage("skip_kernels", skip_kernels, [1] * n)
    stages = tuple(
        StageSpec(width=w, repeats=r, stride=s, kernel=k, skip_kernel=sk)
        for w, r, s, k, sk in zip(widths, repeats, strides, kernels, skips, strict=True)
    )
    return ArchSpec(
        stages=stages,
        stem_width=stem_width,
        stem_kernel=stem_kernel,
        pool=pool,
        num_classes=num_classes,
        name=name,
        input_size=input_size,
    )
