"""autosearch: find the most accurate CIFAR ResNet under a parameter budget, on Optuna.

This folder is installed as the top-level `autosearch` package: the public face. The
three code folders install beneath it as `autosearch.search`, `autosearch.models` and
`autosearch.storage`, so a user's own `models` or `search` package never collides with
them. Names are imported on first use, so `import autosearch` is cheap.

Example:
    >>> import autosearch
    >>> spec = autosearch.get_preset("zigzag")
    >>> autosearch.count_params(spec)
    4891338
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines it
_EXPORTS = {
    # architectures
    "ArchSpec": "autosearch.models",
    "StageSpec": "autosearch.models",
    "build_model": "autosearch.models",
    "count_params": "autosearch.models",
    "count_flops": "autosearch.models",
    "get_preset": "autosearch.models",
    # training recipes
    "TrainRecipe": "autosearch.search.training.recipe",
    "AugmentSpec": "autosearch.search.training.recipe",
    "get_recipe": "autosearch.search.training.recipe",
    # search spaces
    "SearchSpace": "autosearch.search.space",
    "get_space": "autosearch.search.space",
    "load_space": "autosearch.search.space",
    # running a study
    "StartRequest": "autosearch.search.tuning.session",
    "Placement": "autosearch.search.tuning.session",
    "start": "autosearch.search.tuning.session",
    "Objective": "autosearch.search.tuning.objective",
    "RunConfig": "autosearch.search.tuning.objective",
    "make_storage": "autosearch.storage.optuna_storage",
    # results
    "best_trial": "autosearch.search.tuning.outcomes",
    "load_best_model": "autosearch.search.results.exported",
    "export_searched": "autosearch.search.results.searched",
    "export_trial": "autosearch.search.results.export",
    # data
    "DataSource": "autosearch.search.training.datasets",
    "prepare_data": "autosearch.search.training.data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autosearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup skips this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
