"""Batched augmentations: exact pixels where they are defined, seeding, and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from autosearch.search.training.augment import (
    BATCH_OPS,
    _affine_theta,
    _warp,
    augment_batch,
    batch_crop,
    batch_flip,
)
from autosearch.search.training.recipe import AUGMENTS, AugmentSpec, validate_augment

# every augmentation set so that it always fires and does something visible
ALWAYS = {
    "crop": {"pad": 3, "mode": "reflect"},
    "flip": {"p": 1.0},
    "resized_crop": {"p": 1.0, "scale_min": 0.3, "scale_max": 0.6},
    "rotate": {"degrees": 30.0, "p": 1.0},
    "affine": {"degrees": 20.0, "p": 1.0},
    "erase": {"p": 1.0, "scale_min": 0.1, "scale_max": 0.3, "fill": "random"},
    "cutout": {"size": 5, "p": 1.0},
}
# and so that it never changes anything
NEVER = {name: {"pad": 0} if name == "crop" else {"p": 0.0} for name in AUGMENTS}


def near(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    # plain arithmetic: torch.testing's first call costs most of a second
    return a.shape == b.shape and float((a - b).abs().max()) < tol


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.rand(24, 3, 16, 16, generator=seeded(123))


def test_every_augmentation_has_a_batched_op():
    assert set(BATCH_OPS) == set(AUGMENTS) == set(ALWAYS)


@pytest.mark.parametrize("name", AUGMENTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_range_and_input_untouched(batch, name, dtype):
    x = batch.to(dtype)
    before = x.clone()
    out = augment_batch(x, [AugmentSpec(name, ALWAYS[name])], seeded())
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    assert torch.equal(x, before)
    assert not torch.equal(out, x)


@pytest.mark.parametrize("name", AUGMENTS)
def test_defaults_run(batch, name):
    assert augment_batch(batch, [AugmentSpec(name)], seeded()).shape == batch.shape


@pytest.mark.parametrize("name", AUGMENTS)
def test_probability_zero_is_identity(batch, name):
    assert torch.equal(augment_batch(batch, [AugmentSpec(name, NEVER[name])], seeded()), batch)


@pytest.mark.parametrize("name", AUGMENTS)
def test_same_seed_same_output(batch, name):
    # flip at p=1 is deterministic; at 0.5 the seed decides which samples mirror
    specs = [AugmentSpec(name, {"p": 0.5} if name == "flip" else ALWAYS[name])]
    a = augment_batch(batch, specs, seeded(7))
    b = augment_batch(batch, specs, seeded(7))
    c = augment_batch(batch, specs, seeded(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", AUGMENTS)
def test_samples_get_their_own_transform(name):
    # one image repeated: any difference between outputs comes from per-sample draws
    image = torch.rand(1, 3, 16, 16, generator=seeded(1))
    x = image.expand(32, -1, -1, -1)
    params = ALWAYS[name] if name != "flip" else {"p": 0.5}
    out = augment_batch(x, [AugmentSpec(name, params)], seeded())
    distinct = torch.unique(out.reshape(32, -1), dim=0)
    assert len(distinct) >= 2 if name == "flip" else len(distinct) >= 16


@pytest.mark.parametrize("name", ["flip", "resized_crop", "rotate", "affine", "erase", "cutout"])
def test_unchosen_samples_pass_through_exactly(batch, name):
    x = batch.repeat(3, 1, 1, 1)  # 72 samples: both outcomes of p=0.5 all but surely occur
    out = augment_batch(x, [AugmentSpec(name, {**ALWAYS[name], "p": 0.5})], seeded(2))
    same = (out == x).flatten(1).all(dim=1)
    assert 0 < int(same.sum()) < len(x)


def test_flip_with_p_one_mirrors(batch):
    assert torch.equal(batch_flip(batch, p=1.0, generator=seeded()), torch.flip(batch, [3]))


def test_specs_apply_in_order(batch):
    specs = [AugmentSpec("crop", {"pad": 2}), AugmentSpec("flip")]
    g = seeded(4)
    by_hand = batch_flip(batch_crop(batch, pad=2, mode="reflect", generator=g), p=0.5, generator=g)
    assert torch.equal(augment_batch(batch, specs, seeded(4)), by_hand)


# --------------------------------------------------------------------------- crop


def _window_offsets(out: torch.Tensor, padded: np.ndarray, pad: int) -> list[tuple[int, int]]:
    """For each sample, the one (dy, dx) whose window of `padded` equals it exactly."""
    h, w = out.shape[-2:]
    found = []
    for b in range(len(out)):
        hits = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if np.array_equal(out[b].numpy(), padded[b, :, dy : dy + h, dx : dx + w])
        ]
        assert len(hits) == 1, (b, hits)
        found.append(hits[0])
    return found


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_crop_gives_exactly_shifted_pixels(batch, mode):
    pad = 3
    out = batch_crop(batch, pad=pad, mode=mode, generator=seeded(5))
    np_mode = {"zero": "constant", "reflect": "reflect"}[mode]
    padded = np.pad(batch.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode=np_mode)
    offsets = _window_offsets(out, padded, pad)
    assert len(set(offsets)) > 8  # offsets vary per sample


@pytest.mark.parametrize(
    ("mode", "top_left"),
    [
        # 3x3 image 0..8, padded by 1: zeros around it, or mirrored without the edge
        ("zero", [[0, 0, 0], [0, 0, 1], [0, 3, 4]]),
        ("reflect", [[4, 3, 4], [1, 0, 1], [4, 3, 4]]),
    ],
)
def test_crop_border_values(mode, top_left):
    image = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3) / 8
    out = batch_crop(image.expand(200, -1, -1, -1), pad=1, mode=mode, generator=seeded())
    windows = {tuple(o.flatten().mul(8).round().int().tolist()) for o in out}
    assert len(windows) == 9  # all offsets in [0, 2]^2 drawn
    assert tuple(np.ravel(top_left)) in windows


def test_crop_without_padding_is_identity(batch):
    assert torch.equal(batch_crop(batch, pad=0, mode="zero", generator=seeded()), batch)


def test_reflect_pad_too_large_is_explained(batch):
    with pytest.raises(ValueError, match="'crop'.*pad=16"):
        batch_crop(batch, pad=16, mode="reflect")


# --------------------------------------------------------------------------- warps


def test_warps_with_empty_ranges_are_identity(batch):
    specs = {
        "rotate": {"degrees": 0.0, "p": 1.0},
        "affine": {"degrees": 0.0, "translate": 0.0, "scale_min": 1.0, "scale_max": 1.0,
                   "shear": 0.0, "p": 1.0},
        "resized_crop": {"scale_min": 1.0, "scale_max": 1.0, "ratio_min": 1.0,
                         "ratio_max": 1.0, "p": 1.0},
    }  # fmt: skip
    for name, params in specs.items():
        out = augment_batch(batch, [AugmentSpec(name, params)], seeded())
        assert near(out, batch), name


def test_quarter_turn_and_shift_are_exact():
    x = torch.rand(2, 3, 8, 8, generator=seeded(9))
    every = torch.ones(2, 1, 1, 1, dtype=torch.bool)
    turned = _warp(x, _affine_theta(x, torch.full((2,), math.pi / 2)), every, "zeros")
    assert near(turned, torch.rot90(x, -1, (2, 3)))
    right_two = (torch.full((2,), 2.0), torch.zeros(2))
    shifted = _warp(x, _affine_theta(x, torch.zeros(2), shift=right_two), every, "zeros")
    assert near(shifted[..., 2:], x[..., :-2])
    assert shifted[..., :2].abs().max() < 1e-6


def test_quarter_turn_of_a_wide_image_keeps_its_content():
    # 4x8: a quarter turn about the centre maps the middle 4x4 block onto itself
    x = torch.rand(1, 1, 4, 8, generator=seeded(3))
    every = torch.ones(1, 1, 1, 1, dtype=torch.bool)
    turned = _warp(x, _affine_theta(x, torch.full((1,), math.pi / 2)), every, "zeros")
    centre = x[..., 2:6]
    assert near(turned[..., 2:6], torch.rot90(centre, -1, (2, 3)))


# --------------------------------------------------------------------------- erase, cutout


def test_erase_box_has_the_requested_area():
    x = torch.rand(16, 3, 16, 16, generator=seeded(1)) + 0.01  # no exact zeros to start with
    params = {"p": 1.0, "scale_min": 0.25, "scale_max": 0.25, "ratio_min": 1.0, "ratio_max": 1.0}
    out = augment_batch(x, [AugmentSpec("erase", params)], seeded())
    zeros = (out == 0).all(dim=1)  # (B, H, W): erased in every channel
    assert zeros.flatten(1).sum(1).tolist() == [64] * 16  # an 8x8 box in each image
    rows, cols = zeros.any(dim=2), zeros.any(dim=1)
    assert rows.sum(1).tolist() == [8] * 16 and cols.sum(1).tolist() == [8] * 16
    assert torch.equal(out[~zeros.unsqueeze(1).expand_as(out)], x[~zeros.unsqueeze(1).expand_as(x)])


def test_erase_random_fill_is_noise_in_range():
    x = torch.zeros(8, 3, 16, 16)
    params = {"p": 1.0, "scale_min": 0.2, "scale_max": 0.2, "fill": "random"}
    out = augment_batch(x, [AugmentSpec("erase", params)], seeded())
    filled = out[out != 0]
    assert filled.numel() > 8 * 3 * 20 and filled.max() < 1 and len(filled.unique()) > 100


def test_cutout_square_may_overhang():
    x = torch.ones(64, 3, 16, 16)
    out = augment_batch(x, [AugmentSpec("cutout", {"size": 6, "p": 1.0})], seeded())
    holes = (out == 0).all(dim=1)  # (B, H, W)
    assert torch.equal(holes.unsqueeze(1).expand_as(out), out == 0)  # all channels alike
    area = holes.flatten(1).sum(1)
    rows, cols = holes.any(dim=2).sum(1), holes.any(dim=1).sum(1)
    assert torch.equal(area, rows * cols)  # a rectangle
    assert area.max() == 36 and area.min() < 36  # whole squares, and clipped ones
    assert area.min() >= 9  # the centre pixel always lies inside: at least 3x3 of 6x6


# --------------------------------------------------------------------------- inputs


def test_rejects_integer_batches():
    with pytest.raises(ValueError, match="float"):
        augment_batch(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), [AugmentSpec("flip")])


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("crop", {"mode": "edge"}, "mode"),
        ("crop", {"pad": 2.5}, "pad"),
        ("flip", {"p": 1.5}, "p"),
        ("cutout", {"size": -1}, "size"),
        ("rotate", {"degrees": float("nan")}, "degrees"),
        ("erase", {"fill": "noise"}, "fill"),
        ("erase", {"ratio_min": 0.0}, "ratio_min"),
        ("resized_crop", {"scale_min": 0.9, "scale_max": 0.5}, "scale_min"),
        ("affine", {"sheer": 3.0}, "sheer"),
    ],
)
def test_validation_names_augmentation_and_key(name, params, key):
    with pytest.raises(ValueError) as err:
        validate_augment(name, params)
    assert repr(name) in str(err.value) and key in str(err.value)
    with pytest.raises(ValueError):
        AugmentSpec(name, params)


def test_unknown_augmentation_is_named():
    with pytest.raises(ValueError, match="'mixup'"):
        AugmentSpec("mixup")
