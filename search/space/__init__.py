"""Search spaces: what a study may try, and how one trial's parameters become a network.

`schema` defines a space as frozen, validated data (architecture ranges, recipe ranges,
seed configurations); `presets` names the built-in spaces; `sampling` is the only code
that calls `trial.suggest_*` and turns a trial into an `ArchSpec` and a `TrainRecipe`;
`seeds` finds the parameters that rebuild each seed configuration exactly; `files` reads TOML
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
    derive_widths,
    infeasible_rate,
    sample,
    width_ladder,
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
    "derive_widths",
    "get_space",
    "infeasible_rate",
    "load_space",
    "sample",
    "seed_config",
    "seed_params",
    "space_from_dict",
    "space_from_stored",
    "validate_space",
    "width_ladder",
    "with_epochs",
]
