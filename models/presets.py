"""Named architectures from the seed report. Each preset is data, not code."""

from __future__ import annotations

from autosearch.models.spec import ArchSpec, make_spec

PRESETS: dict[str, ArchSpec] = {
    # The seed report's hand-tuned net: the width schedule rises, falls and rises again.
    # Downsampling at stages 2, 3 and 7 takes the map 32 -> 16 -> 8 -> 4 pixels.
    "zigzag": make_spec(
        [64, 128, 256, 128, 64, 128, 256],
        [2, 2, 2, 2, 2, 1, 1],
        strides=[1, 2, 2, 1, 1, 1, 2],
        name="zigzag",
    ),
    "resnet18-1111": make_spec([64, 128, 256, 512], [1, 1, 1, 1], name="resnet18-1111"),
    "deep-narrow": make_spec([32, 64, 128, 256], [13, 9, 3, 3], stem_width=32, name="deep-narrow"),
    "resnet18": make_spec([64, 128, 256, 512], [2, 2, 2, 2], name="resnet18"),
}


def get_preset(name: str) -> ArchSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(
            f"unknown architecture preset {name!r}; choose from {', '.join(PRESETS)}"
        ) from None
