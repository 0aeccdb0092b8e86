"""The data on the device: seeded stratified splits and on-the-fly normalisation.

Flow: `datasets.load_source` reads the images (CIFAR or your own) into numpy, the
stratified helpers pick index sets, and `prepare_data` turns them into a `CifarData` of
uint8 tensors on the training device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from autosearch.search.training.datasets import (
    DataSource,
    default_val_size,
    load_source,
    parse_data,
)
from autosearch.search.training.sources import RawCifar

# --------------------------------------------------------------------------- splits


def _rng(seed: int, stream: int) -> np.random.Generator:
    # A separate stream per operation, so the subset and the split drawn with one seed
    # are independent of each other.
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([stream, int(seed)])


def _check_count(name: str, value: Any, low: int, high: int, total: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name}={value} must be in [{low}, {high}] for {total} images")
    return int(value)


def _stratified_pick(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of k items, each class getting floor or ceil of its exact share."""
    labels = np.asarray(labels)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = counts * (k / len(labels))
    take = np.floor(exact).astype(np.int64)
    # Largest remainder: the leftover items go to the classes with the biggest fractional
    # share, ties broken at random so no class is favoured by its label value.
    short = k - int(take.sum())
    order = np.lexsort((rng.random(len(classes)), -(exact - take)))
    take[order[:short]] += 1
    chosen = []
    for c, n in enumerate(take):
        members = np.flatnonzero(inverse == c)
        chosen.append(rng.choice(members, size=int(n), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices 0..N-1 into (train_idx, val_idx), each class in proportion.

    Every class gets floor or ceil of its exact share of `val_size`. The two sorted index
    arrays are disjoint and together cover all N items. The same seed gives the same split.

    Example:
        >>> train, val = stratified_split(np.repeat(np.arange(10), 5), val_size=10, seed=0)
        >>> len(train), len(val)
        (40, 10)
    """
    n = len(labels)
    val_size = _check_count("val_size", val_size, 0, max(n - 1, 0), n)
    if n == 0:
        raise ValueError("cannot split an empty label array")
    val = _stratified_pick(labels, val_size, _rng(seed, 2))
    keep = np.ones(n, dtype=bool)
    keep[val] = False
    return np.flatnonzero(keep).astype(np.int64), val


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of `n` items, each class in proportion."""
    n = _check_count("n", n, 0, len(labels), len(labels))
    return _stratified_pick(labels, n, _rng(seed, 1))


# --------------------------------------------------------------------------- device data


@dataclass
class CifarData:
    """A train/validation/test split held as uint8 images on one device.

    Images are (N, 3, S, S) uint8 (S = 32 for CIFAR), labels (N,) int64. `mean` and
    `std` are per-channel statistics of the training split in [0, 1] units, used to
    normalise on the fly.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int = 10

    def to(self, device: torch.device | str) -> CifarData:
        move = {
            k: getattr(self, k).to(device, non_blocking=True)
            for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
        }
        return CifarData(**move, mean=self.mean, std=self.std, num_classes=self.num_classes)

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (B, 3, H, W) or float in [0, 1] -> float32 standardised per channel."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of NHWC uint8 images, in [0, 1] units."""
    # A 256-bin histogram per channel gives exact statistics without a float copy of the
    # whole split (40k images would need about 1 GB in float64).
    values = np.arange(256, dtype=np.float64) / 255
    means, stds = [], []
    for c in range(images.shape[-1]):
        hist = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        total = hist.sum()
        mean = float(hist @ values / total)
        means.append(mean)
        stds.append(float(np.sqrt(hist @ (values - mean) ** 2 / total)))
    return tuple(means), tuple(stds)


def _to_device(images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple:
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    # NHWC -> NCHW after the copy, so a GPU does the transpose
    x = x.permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)


def prepare_data(
    data_dir: str | Path | None = None,
    *,
    val_size: int | None = None,
    subset: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    download: bool = True,
    raw: RawCifar | None = None,
    source: DataSource | str | None = None,
) -> CifarData:
    """Load the data and make the seeded train/validation/test split on `device`.

    `source` is a `DataSource` or a --data value (default CIFAR-10, found in
    `data_dir`). Without `subset`, the N training images split into N - val_size
    training and val_size validation images (default: a fifth, 10,000 of CIFAR's
    50,000), and the test set is the whole test split. With
    `subset=K`, a stratified K-image sample of the training images is split in the same
    proportion (val_size / N of it, at least one image per class when val_size > 0)
    and the test set is a stratified sample of max(classes, K // 5) images, for quick
    runs. The test set is for final reports only; searches score on validation.
    `mean` and `std` come from the training split alone. Pass `raw` to skip reading.

    Example:
        >>> data = prepare_data("data", subset=2000, device="cpu")  # doctest: +SKIP
        >>> data.train_x.shape, data.val_x.shape, data.test_x.shape  # doctest: +SKIP
        (torch.Size([1600, 3, 32, 32]), torch.Size([400, 3, 32, 32]), torch.Size([400, 3, 32, 32]))
    """
    if raw is None:
        chosen = parse_data(source, data_dir=None if isinstance(source, DataSource) else data_dir)
        raw = load_source(chosen, download=download)
    num_classes = len(raw.classes)
    total = len(raw.train_y)
    if val_size is None:
        val_size = default_val_size(total)
    val_size = _check_count("val_size", val_size, 0, total - 1, total)
    if subset is None:
        pool = np.arange(total)
        n_val = val_size
        test_idx = np.arange(len(raw.test_y))
    else:
        subset = _check_count("subset", subset, 2 * num_classes, total, total)
        pool = stratified_subset(raw.train_y, subset, seed)
        n_val = round(subset * val_size / total)
        if val_size > 0:
            n_val = max(n_val, num_classes)
        n_val = min(n_val, subset - num_classes)  # keep training images in every class
        n_test = min(len(raw.test_y), max(num_classes, subset // 5))
        test_idx = stratified_subset(raw.test_y, n_test, seed)
    train_rel, val_rel = stratified_split(raw.train_y[pool], n_val, seed)
    train_idx, val_idx = pool[train_rel], pool[val_rel]

    train_images = raw.train_x[train_idx]
    mean, std = _channel_stats(train_images)
    device = torch.device(device)
    train_x, train_y = _to_device(train_images, raw.train_y[train_idx], device)
    val_x, val_y = _to_device(raw.train_x[val_idx], raw.train_y[val_idx], device)
    test_x, test_y = _to_device(raw.test_x[test_idx], raw.test_y[test_idx], device)
    return CifarData(
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        test_x=test_x,
        test_y=test_y,
        mean=mean,
        std=std,
        num_classes=num_classes,
    )
