"""The CIFAR ResNet family: specs, exact counts, presets and the module builder."""

from models.counts import (
    DEFAULT_MAX_PARAMS,
    BudgetError,
    check_budget,
    count_convs,
    count_flops,
    count_params,
)
from models.net import BasicBlock, ResNet, build_model
from models.presets import PRESETS, get_preset
from models.spec import ArchSpec, SpecError, StageSpec, make_spec

__all__ = [
    "DEFAULT_MAX_PARAMS",
    "PRESETS",
    "ArchSpec",
    "BasicBlock",
    "BudgetError",
    "ResNet",
    "SpecError",
    "StageSpec",
    "build_model",
    "check_budget",
    "count_convs",
    "count_flops",
    "count_params",
    "get_preset",
    "make_spec",
]
