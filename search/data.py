"""CIFAR-10 on the device: reading, seeded stratified splits, on-the-fly normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CifarData:
    """A train/validation/test split held as uint8 images on one device.

    Images are (N, 3, 32, 32) uint8, labels (N,) int64. `mean` and `std` are per-channel
    statistics of the training split in [0, 1] units, used to normalise on the fly.
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


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (B, 3, H, W) or float in [0, 1] -> float32 standardised per channel."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
