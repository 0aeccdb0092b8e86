"""Planning the worker processes of one machine: which GPUs, and how many workers each.

`plan_slots` turns `--gpus G --workers-per-gpu K` (or `--workers N` on CPU) into the
`Slot`s that `launcher.Launcher` then starts and watches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# `--workers-per-gpu auto`: a rule, not a measurement (see `auto_workers_per_gpu`).
WORKER_GPU_GIB = 6.0  # GPU memory one worker may use: context, data, activations
CORES_PER_WORKER = 2  # host cores one worker's Python training loop keeps busy
MAX_AUTO_PER_GPU = 3  # beyond this, small nets' kernels contend for the SMs


class LaunchError(ValueError):
    """Workers cannot be planned as asked (bad --gpus, no GPU, ...)."""


@dataclass(frozen=True)
class Slot:
    """One worker process to run: its index (which names its log) and its GPU."""

    index: int
    gpu: str | None  # the CUDA_VISIBLE_DEVICES value; None for a CPU worker

    @property
    def label(self) -> str:
        return f"worker {self.index}" + (f" (GPU {self.gpu})" if self.gpu is not None else "")


def visible_gpus() -> list[str]:
    """Names of the GPUs this process may use, as CUDA_VISIBLE_DEVICES values."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited:
        # Index i of our view is the i-th entry of the inherited list (an id or UUID).
        names = [n.strip() for n in inherited.split(",") if n.strip()]
        return names[:count]
    return [str(i) for i in range(count)]


def parse_gpus(text: str, visible: list[str]) -> list[str]:
    """``all`` or comma-separated indices into `visible`, as CUDA_VISIBLE_DEVICES names."""
    if not visible:
        raise LaunchError(f"--gpus {text}: no CUDA GPU is visible; use --workers N for CPU workers")
    if text.strip().lower() == "all":
        return list(visible)
    chosen: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) >= len(visible):
            raise LaunchError(
                f"--gpus: {part!r} is not a GPU index; {len(visible)} GPU(s) visible "
                f"(0-{len(visible) - 1}), or say all"
            )
        if visible[int(part)] not in chosen:
            chosen.append(visible[int(part)])
    return chosen


def auto_workers_per_gpu(gpu_memory_gib: float, cpu_cores: int, n_gpus: int) -> int:
    """Workers per GPU for `--workers-per-gpu auto`, by rule.

    K = min(3, floor(0.8 x GPU memory / 6 GiB), floor(cores / (2 x GPUs))), at least 1.
    A sub-5M-parameter CIFAR net at batch <= 1024 needs well under 6 GiB (CUDA context,
    the uint8 dataset, activations), and one worker rarely fills a large GPU: its
    kernels are small and its Python loop launches them one at a time, so a second
    and third process fill the gaps. Each worker's loop keeps about two host cores busy,
    and past three processes per GPU they mostly wait on each other.
    """
    by_memory = int(0.8 * gpu_memory_gib // WORKER_GPU_GIB)
    by_cores = cpu_cores // (CORES_PER_WORKER * max(1, n_gpus))
    return max(1, min(MAX_AUTO_PER_GPU, by_memory, by_cores))


def gpu_memory_gib(index: int) -> float:
    import torch

    return torch.cuda.get_device_properties(index).total_memory / 2**30


def plan_slots(
    gpus: list[str] | None, per_gpu: int | str, cpu_workers: int, *, first_index: int = 0
) -> list[Slot]:
    """The worker processes for `--gpus G --workers-per-gpu K`, or `--workers N` on CPU."""
    if gpus is None:
        if cpu_workers < 1:
            raise LaunchError(f"--workers must be at least 1, got {cpu_workers}")
        return [Slot(first_index + i, None) for i in range(cpu_workers)]
    if per_gpu == "auto":
        memory = min(gpu_memory_gib(i) for i in range(len(gpus)))
        per_gpu = auto_workers_per_gpu(memory, os.cpu_count() or 1, len(gpus))
    else:
        try:
            per_gpu = int(per_gpu)
        except ValueError:
            raise LaunchError(
                f"--workers-per-gpu takes a number or auto, got {per_gpu!r}"
            ) from None
        if per_gpu < 1:
            raise LaunchError(f"--workers-per-gpu must be at least 1, got {per_gpu}")
    # Round-robin over GPUs, so that a partial restart spreads evenly.
    slots = [gpu for _ in range(per_gpu) for gpu in gpus]
    return [Slot(first_index + i, gpu) for i, gpu in enumerate(slots)]
