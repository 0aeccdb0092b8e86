"""Validation and test passes: mean loss and accuracy, with optional flip TTA."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from autosearch.search.training.device import autocast, channel_tensors, memory_format
from torch import nn


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    x_uint8: torch.Tensor,
    y: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    tta: bool = False,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy (no label smoothing) and accuracy in [0, 1] of `model`.

    `x_uint8` is (N, 3, H, W) uint8 and `y` (N,) labels, on any device; batches move to
    `device` (default: the model's). With `tta` the logits of each image and its mirror
    image are averaged. The model is put in eval mode and its previous mode restored.
    An empty set gives (nan, nan): there is nothing to measure, and NaN cannot be
    mistaken for a score.
    """
    n = len(y)
    if n == 0:
        return math.nan, math.nan
    device = torch.device(device) if device is not None else next(model.parameters()).device
    mean_t, inv_std = channel_tensors(mean, std, device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for s in _batches(n, batch_size):
            xb = x_uint8[s].to(device, non_blocking=True)
            yb = y[s].to(device, non_blocking=True)
            x = (xb.float().div_(255) - mean_t) * inv_std  # (B, 3, H, W)
            # the trainer's layout, so validation runs the kernels that training ran
            x = x.contiguous(memory_format=memory_format(device))
            with autocast(device):
                if tta:
                    # One forward over [images; mirrors], (2B, 3, H, W), then average.
                    both = model(torch.cat([x, x.flip(3)])).float()
                    logits = (both[: len(yb)] + both[len(yb) :]) / 2
                else:
                    logits = model(x).float()
            loss_sum += F.cross_entropy(logits, yb, reduction="sum")
            correct += (logits.argmax(1) == yb).sum()
    finally:
        model.train(was_training)
    loss, hits = torch.stack([loss_sum, correct.to(loss_sum.dtype)]).tolist()
    return loss / n, hits / n
