"""Search spaces: what a study may try, and how one trial's parameters become a network.

`schema` defines a space as frozen, validated data (architecture ranges, recipe ranges,
seed configurations); `presets` names the built-in spaces; `sampling` is the only code
that calls `trial.suggest_*` and turns a trial into an `ArchSpec` and a `TrainRecipe`;
`seeds` maps the seed configurations onto a space's parameters; `files` reads TOML
spaces and the copy stored on a study. Nothing here imports torch.
"""

from autosearch.search.space.files import (
    load_space,
    space_from_dict,
    space_from_stored,
    with_epochs,
)
from autosearch.search.space.presets import SPACES, get_space
from autosearch.search.space.sampling import (
    BASE_LR,
    WIDTH_MULTIPLE,
    Sample,
    infeasible_rate,
    sample,
    shrink_to_budget,
)
from autosearch.search.space.schema import (
    SEARCHABLE_AUGMENTS,
    ArchSpace,
    RecipeSpace,
    SearchSpace,
    SpaceError,
    validate_space,
)
from autosearch.search.space.seeds import seed_config, seed_params

__all__ = [
    "BASE_LR",
    "SEARCHABLE_AUGMENTS",
    "SPACES",
    "WIDTH_MULTIPLE",
    "ArchSpace",
    "RecipeSpace",
    "Sample",
    "SearchSpace",
    "SpaceError",
    "get_space",
    "infeasible_rate",
    "load_space",
    "sample",
    "seed_config",
    "seed_params",
    "shrink_to_budget",
    "space_from_dict",
    "space_from_stored",
    "validate_space",
    "with_epochs",
]
