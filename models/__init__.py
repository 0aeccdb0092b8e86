"""The CIFAR ResNet family: specs, exact counts, presets and the module builder.

Specs, counts and presets are plain Python; the torch modules (`ResNet`, `BasicBlock`,
`build_model`) are imported on first use, so counting a spec never loads torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from autosearch.models.counts import (
    DEFAULT_MAX_PARAMS,
    BudgetError,
    check_budget,
    count_convs,
    count_flops,
    count_params,
)
from autosearch.models.presets import PRESETS, get_preset
from autosearch.models.spec import ArchSpec, SpecError, StageSpec, make_spec

_NET = ("BasicBlock", "ResNet", "build_model")

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


def __getattr__(name: str) -> Any:
    if name in _NET:
        value = getattr(importlib.import_module("autosearch.models.net"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autosearch.models' has no attribute {name!r}")
