"""The named search spaces: `zigzag` (the default), `deep-narrow`, `resnet`, `recipe` and
`zigzag-cpu`, a CPU-sized `zigzag` for the demo and the search-quality proxy."""

from __future__ import annotations

from autosearch.search.space.schema import (
    SEARCHABLE_AUGMENTS,
    ArchSpace,
    RecipeSpace,
    SearchSpace,
    SpaceError,
)
from autosearch.search.training.recipe import OPTIMIZERS, SCHEDULES

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
    # `zigzag` sized for two CPU cores: 4-epoch trials on a few thousand images at a
    # budget near 50,000 parameters (`make demo`, bench/search_quality.py --proxy).
    # At such a budget a 5x5 kernel (2.8x the parameters of a 3x3) or a fifth stage
    # leaves most stages 8 channels wide, so kernels are 3x3 and nets 3-4 stages deep.
    # The recipe is cut to what can work in 4 epochs: learning rates from 0.3 x the
    # base, batches of 64 or 128 (32 or 16 steps per 2,048-image epoch), schedules that
    # anneal within the run (plateau and step schedules need epochs to react), no
    # random resized crops. No seed configurations: they are 100 times over such a
    # budget.
    "zigzag-cpu": SearchSpace(
        name="zigzag-cpu",
        arch=ArchSpace(
            stages=(3, 4),
            widths=(8, 64),
            repeats=(1, 2),
            kernels=(3,),
            stem_widths=(16,),
        ),
        recipe=RecipeSpace(
            lr_mult=(0.3, 5.0),
            batch_sizes=(64, 128),
            epochs=(4, 4),
            schedules=("onecycle", "cosine"),
            augments=("crop", "flip", "cutout"),
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
