"""Batched, per-sample random augmentations that run on the data's own device.

Every augmentation takes a float batch (B, 3, H, W) in [0, 1], draws its randomness per
sample from the given generator, and returns a batch of the same shape. There is no
per-image Python loop and no PIL anywhere in the training path. The augmentations and
their parameters are declared in `training.recipe.AUGMENTS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from autosearch.search.training.recipe import AUGMENTS, AugmentSpec

# --------------------------------------------------------------------------- batched ops
# Each op takes x (B, C, H, W) float in [0, 1] and returns a batch of the same shape; it
# never writes into x, and returns x itself when its settings make it a no-op. Random
# draws are made on x.device from `generator` in float32 whatever the image dtype, so a
# seed gives the same transforms for float32 and half batches.


def _rand(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(len(x), generator=generator, device=x.device)  # (B,) in [0, 1)


def _uniform(x: torch.Tensor, generator: torch.Generator | None, low: float, high: float):
    return low + (high - low) * _rand(x, generator)  # (B,)


def _chosen(x: torch.Tensor, generator: torch.Generator | None, p: float) -> torch.Tensor:
    """(B, 1, 1, 1) bool: which samples an op with probability p applies to."""
    return (_rand(x, generator) < p).view(-1, 1, 1, 1)


def batch_crop(
    x: torch.Tensor, *, pad: int, mode: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pad by `pad` pixels ("zero" or "reflect") and cut a random H x W window per sample.

    Pure integer indexing: every output pixel is an input (or padding) pixel, unblended.
    """
    if pad == 0:
        return x
    b, c, h, w = x.shape
    if mode == "reflect" and pad >= min(h, w):
        raise ValueError(
            f"augmentation 'crop': pad={pad} with mode 'reflect' needs pad < {min(h, w)}"
        )
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect" if mode == "reflect" else "constant")
    wp = w + 2 * pad  # padded row length
    # top-left corner of each window in the padded image, pixels in [0, 2 * pad]
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=x.device)
    # one gather over flattened pixels: 3x faster on CPU than 4-way advanced indexing
    rows = dy.view(b, 1, 1) + torch.arange(h, device=x.device).view(1, h, 1)
    cols = dx.view(b, 1, 1) + torch.arange(w, device=x.device).view(1, 1, w)
    index = (rows * wp + cols).view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, index).view(b, c, h, w)


def batch_flip(
    x: torch.Tensor, *, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mirror left-right with probability p per sample."""
    if p == 0:
        return x
    return torch.where(_chosen(x, generator, p), x.flip(3), x)


def _warp(x: torch.Tensor, theta: torch.Tensor, chosen: torch.Tensor, padding: str) -> torch.Tensor:
    """Resample x through per-sample affine maps theta (B, 2, 3), output -> input coords.

    Coordinates are normalised to [-1, 1] across the image edges (align_corners=False).
    Samples not chosen are passed through exactly, not resampled by an identity map.
    """
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    return torch.where(chosen, warped, x)


def _affine_theta(
    x: torch.Tensor,
    angle: torch.Tensor,
    *,
    scale: torch.Tensor | None = None,
    shear: torch.Tensor | None = None,
    shift: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """theta (B, 2, 3) for the inverse of: scale, shear along x, rotate, then shift.

    Angles are radians; `shift` is (tx, ty) in pixels. The forward map A p + t acts on
    pixel coordinates centred on the image, so rotations stay rotations when H != W.
    """
    h, w = x.shape[-2:]
    cos, sin = torch.cos(angle), torch.sin(angle)
    one = torch.ones_like(angle)
    tan = torch.tan(shear) if shear is not None else torch.zeros_like(angle)
    s = scale if scale is not None else one
    # A = s * R(angle) @ [[1, tan], [0, 1]]
    a11, a12 = s * cos, s * (cos * tan - sin)
    a21, a22 = s * sin, s * (sin * tan + cos)
    det = a11 * a22 - a12 * a21
    i11, i12, i21, i22 = a22 / det, -a12 / det, -a21 / det, a11 / det
    tx, ty = shift if shift is not None else (torch.zeros_like(angle),) * 2
    # p = diag(W/2, H/2) u converts normalised u to pixels; conjugate A^-1 by it
    half_w, half_h = w / 2, h / 2
    row0 = torch.stack([i11, i12 * half_h / half_w, -(i11 * tx + i12 * ty) / half_w], dim=1)
    row1 = torch.stack([i21 * half_w / half_h, i22, -(i21 * tx + i22 * ty) / half_h], dim=1)
    return torch.stack([row0, row1], dim=1)


def batch_resized_crop(
    x: torch.Tensor,
    *,
    scale_min: float,
    scale_max: float,
    ratio_min: float,
    ratio_max: float,
    p: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Crop a random area fraction and aspect ratio per sample, resized back to H x W.

    The ratio is log-uniform. A crop side that would exceed the image is cut to the
    image side, instead of redrawing as single-image libraries do.
    """
    if p == 0:
        return x
    area = _uniform(x, generator, scale_min, scale_max)
    ratio = torch.exp(_uniform(x, generator, math.log(ratio_min), math.log(ratio_max)))
    # crop width and height as fractions of the image side (ratio = width / height)
    fw = torch.sqrt(area * ratio).clamp(max=1.0)
    fh = torch.sqrt(area / ratio).clamp(max=1.0)
    # crop centre in normalised coordinates, keeping the crop inside the image
    cx = (1 - fw) * (2 * _rand(x, generator) - 1)
    cy = (1 - fh) * (2 * _rand(x, generator) - 1)
    zero = torch.zeros_like(fw)
    theta = torch.stack([torch.stack([fw, zero, cx], 1), torch.stack([zero, fh, cy], 1)], 1)
    return _warp(x, theta, _chosen(x, generator, p), "border")


def batch_rotate(
    x: torch.Tensor, *, degrees: float, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Rotate by a uniform angle in [-degrees, degrees] per sample; corners fill with 0."""
    if p == 0:
        return x
    angle = torch.deg2rad(_uniform(x, generator, -degrees, degrees))
    return _warp(x, _affine_theta(x, angle), _chosen(x, generator, p), "zeros")


def batch_affine(
    x: torch.Tensor,
    *,
    degrees: float,
    translate: float,
    scale_min: float,
    scale_max: float,
    shear: float,
    p: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random rotation, shift (fraction of the side), scale and x-shear (degrees) at once."""
    if p == 0:
        return x
    h, w = x.shape[-2:]
    angle = torch.deg2rad(_uniform(x, generator, -degrees, degrees))
    scale = _uniform(x, generator, scale_min, scale_max)
    shear_rad = torch.deg2rad(_uniform(x, generator, -shear, shear))
    tx = w * _uniform(x, generator, -translate, translate)  # pixels
    ty = h * _uniform(x, generator, -translate, translate)
    theta = _affine_theta(x, angle, scale=scale, shear=shear_rad, shift=(tx, ty))
    return _warp(x, theta, _chosen(x, generator, p), "zeros")


def _box_mask(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, bh: torch.Tensor, bw: torch.Tensor
) -> torch.Tensor:
    """(B, 1, H, W) bool, true inside each sample's box [top, top+bh) x [left, left+bw)."""
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device).view(1, h)
    cols = torch.arange(w, device=x.device).view(1, w)
    in_rows = (rows >= top[:, None]) & (rows < (top + bh)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + bw)[:, None])  # (B, W)
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


def batch_erase(
    x: torch.Tensor,
    *,
    p: float,
    scale_min: float,
    scale_max: float,
    ratio_min: float,
    ratio_max: float,
    fill: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Erase one rectangle per sample (area fraction, log-uniform ratio) with probability p.

    `fill` "zero" sets it to 0, "random" to uniform noise in [0, 1) per pixel and channel.
    """
    if p == 0:
        return x
    h, w = x.shape[-2:]
    area = h * w * _uniform(x, generator, scale_min, scale_max)  # pixels
    ratio = torch.exp(_uniform(x, generator, math.log(ratio_min), math.log(ratio_max)))
    bh = torch.sqrt(area / ratio).round().clamp(0, h).long()
    bw = torch.sqrt(area * ratio).round().clamp(0, w).long()
    # top-left corner uniform over the positions where the box fits
    top = (_rand(x, generator) * (h - bh + 1)).long()
    left = (_rand(x, generator) * (w - bw + 1)).long()
    mask = _box_mask(x, top, left, bh, bw) & _chosen(x, generator, p)
    if fill == "random":
        noise = torch.rand(x.shape, generator=generator, device=x.device).to(x.dtype)
        return torch.where(mask, noise, x)
    return x.masked_fill(mask, 0)


def batch_cutout(
    x: torch.Tensor, *, size: int, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero a size x size square per sample, centred on a random pixel (may overhang)."""
    if p == 0 or size == 0:
        return x
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), generator=generator, device=x.device)
    cx = torch.randint(0, w, (b,), generator=generator, device=x.device)
    side = torch.full_like(cy, size)
    mask = _box_mask(x, cy - size // 2, cx - size // 2, side, side) & _chosen(x, generator, p)
    return x.masked_fill(mask, 0)


BATCH_OPS: dict[str, Callable[..., torch.Tensor]] = {
    "crop": batch_crop,
    "flip": batch_flip,
    "resized_crop": batch_resized_crop,
    "rotate": batch_rotate,
    "affine": batch_affine,
    "erase": batch_erase,
    "cutout": batch_cutout,
}
assert set(BATCH_OPS) == set(AUGMENTS), "every registered augmentation needs a batched op"


def augment_batch(
    x: torch.Tensor,
    specs: Sequence[AugmentSpec],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply `specs` in order to a float batch (B, C, H, W) in [0, 1], per sample at random.

    All randomness comes from `generator`, which must live on x's device (None uses
    torch's default generator for that device). The input is never modified.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(8, 3, 32, 32)
        >>> augment_batch(x, [AugmentSpec("crop"), AugmentSpec("flip")], g).shape
        torch.Size([8, 3, 32, 32])
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(
            f"augment_batch needs a float (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}"
        )
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(
            f"generator is on {generator.device} but the batch is on {x.device}; "
            "create it with torch.Generator(device=x.device)"
        )
    for spec in specs:
        x = BATCH_OPS[spec.name](x, generator=generator, **spec.params)
    return x
