"""Training speed of the trainer on the presets, and one time-to-accuracy run.

    python bench/train_speed.py [--device auto] [--data-dir DIR] [--tiny]

On a GPU: for each preset within the 5M-parameter budget, images/s and seconds per
epoch at batch 512 (bf16, channels-last), measured by `train` itself over the epochs
after a warm-up epoch, and model FLOP utilisation, 3 x forward FLOPs x images/s over the
card's dense bf16 peak (forward + backward is about 3 forward passes). Epoch times end
with the trainer's once-per-epoch read of device counters, which waits for every queued
kernel, so they are wall-clock GPU times, evaluation excluded. Then the `fast` recipe
trains `zigzag` in full and the test accuracy with flip TTA is printed.

On the CPU, or with --tiny, everything shrinks to synthetic data (256 images, one
epoch, batch 64, a tiny network) so the script runs anywhere, without a dataset, and
cannot rot.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from autosearch.models import (
    DEFAULT_MAX_PARAMS,
    PRESETS,
    ArchSpec,
    build_model,
    count_flops,
    count_params,
    make_spec,
)
from autosearch.search.training.data import CifarData, prepare_data
from autosearch.search.training.device import resolve_device
from autosearch.search.training.evaluation import evaluate
from autosearch.search.training.recipe import get_recipe
from autosearch.search.training.trainer import train

# Dense bf16 tensor-core peaks, FLOP/s, matched in order against the device name
# (so "A100" is tried before "A10", "L40S" before "L4", "H100 PCIe" before "H100").
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("A10", 125e12),
)


def peak_flops(device_name: str) -> float | None:
    for key, peak in PEAK_BF16:
        if key in device_name:
            return peak
    return None


def synthetic_data(n: int, seed: int = 0) -> CifarData:
    """Random uint8 images and labels: n training, n // 4 validation and test images."""
    g = torch.Generator().manual_seed(seed)

    def split(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8, generator=g)
        return x, torch.randint(0, 10, (size,), generator=g)

    (tx, ty), (vx, vy), (sx, sy) = split(n), split(n // 4), split(n // 4)
    return CifarData(tx, ty, vx, vy, sx, sy, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))


def measure(
    spec: ArchSpec,
    data: CifarData,
    device: torch.device,
    *,
    batch_size: int,
    warmup_epochs: int,
    timed_epochs: int,
) -> tuple[float, float]:
    """(images/s, seconds per epoch) over the timed epochs, after the warm-up ones."""
    recipe = get_recipe("fast").replace(
        batch_size=batch_size, epochs=warmup_epochs + timed_epochs, tta=False
    )
    torch.manual_seed(0)
    model = build_model(spec)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result = train(model, data, recipe, device=device)
    timed = result.history[warmup_epochs:]
    seconds = sum(r.seconds for r in timed)
    images = sum(r.images_per_s * r.seconds for r in timed)
    return images / seconds, seconds / len(timed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default: search)")
    parser.add_argument("--tiny", action="store_true", help="synthetic data, tiny net, 1 epoch")
    parser.add_argument("--timed-epochs", type=int, default=2, help="epochs timed per preset")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    tiny = args.tiny or device.type != "cuda"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(name) if device.type == "cuda" else None

    fast = get_recipe("fast")
    if tiny:
        data = synthetic_data(256).to(device)
        specs = {"tiny": make_spec([16, 32], [1, 1], stem_width=16, name="tiny")}
        batch_size, warmup, timed = 64, 0, 1
        accuracy_spec, accuracy_recipe = specs["tiny"], fast.replace(epochs=1, batch_size=64)
    else:
        data = prepare_data(args.data_dir, device=device)
        specs = {k: s for k, s in PRESETS.items() if count_params(s) <= DEFAULT_MAX_PARAMS}
        batch_size, warmup, timed = 512, 1, args.timed_epochs
        accuracy_spec, accuracy_recipe = PRESETS["zigzag"], fast

    print(
        f"device: {name} | torch {torch.__version__} | batch {batch_size} | "
        f"{len(data.train_y):,} training images" + (" (tiny synthetic run)" if tiny else "")
    )
    print(f"{'model':<16}{'params':>12}{'GFLOP/img':>11}{'images/s':>12}{'s/epoch':>10}{'MFU':>8}")
    for key, spec in specs.items():
        images_per_s, seconds = measure(
            spec, data, device, batch_size=batch_size, warmup_epochs=warmup, timed_epochs=timed
        )
        flops = count_flops(spec)
        mfu = f"{3 * flops * images_per_s / peak:.1%}" if peak else "n/a"
        print(
            f"{key:<16}{count_params(spec):>12,}{flops / 1e9:>11.3f}"
            f"{images_per_s:>12,.0f}{seconds:>10.2f}{mfu:>8}"
        )

    torch.manual_seed(0)
    model = build_model(accuracy_spec)
    started = time.perf_counter()
    result = train(model, data, accuracy_recipe, device=device)
    total = time.perf_counter() - started
    _, test_acc = evaluate(model, data.test_x, data.test_y, data.mean, data.std, tta=True)
    print(
        f"time to accuracy: {accuracy_spec.name} + {accuracy_recipe.name}, "
        f"{result.epochs_run} epoch(s): test accuracy {test_acc:.2%} (flip TTA) after "
        f"{result.wall_time:.1f} s of training ({total:.1f} s with evaluation), "
        f"{result.images_per_s:,.0f} images/s, status {result.status}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
