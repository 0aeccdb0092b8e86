"""Where training runs: device names, mixed precision and normalisation constants."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """ "auto" (cuda if available, else cpu), "cpu", "cuda" or "cuda:N" as a torch.device.

    Raises ValueError naming the value for anything else, or when CUDA is asked for and
    is not there.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but CUDA is not available here")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    # bf16 needs no loss scaling; on the CPU we stay in fp32 for exact, portable tests.
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channel_tensors(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, 1, 1) mean and 1/std, made once so no step builds a tensor from Python."""
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return m, 1 / s


# Device types whose convolutions run in channels-last (NHWC) memory. On CUDA the bf16
# tensor-core kernels want it; on the CPU, oneDNN's convolutions do too: training the
# 78k-parameter bench net took 1.4-1.5x fewer CPU-seconds per image in NHWC, and
# validation ran 1.5-2.2x more images/s (bench/channels_last.py, results in
# bench/results/channels_last.txt). Training, evaluation and export all ask here, so a
# model is always measured in the layout it was trained in.
CHANNELS_LAST = frozenset({"cuda", "cpu"})


def memory_format(device: torch.device) -> torch.memory_format:
    """The memory layout of weights and image batches on `device`."""
    return torch.channels_last if device.type in CHANNELS_LAST else torch.contiguous_format
