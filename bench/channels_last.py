"""Channels-last (NHWC) against NCHW for training and evaluation, side by side.

    python bench/channels_last.py [--device cpu] [--rounds 5] [--images 2560] [--threads N]

Trains the 78k-parameter bench net (widths 16-32-64, one block each) with `train` for
one epoch of `--images` synthetic 32x32 images at batch 256, once per layout per round,
alternating NCHW and NHWC so both see the same machine load; then validates 2,048
images with flip TTA in each layout. Prints per-round figures and the medians: training
images/s as the trainer measures it (wall clock, steps only), CPU-seconds per 1,000
trained images (this process, all threads), and validation images/s. The layout is
switched through `device.CHANNELS_LAST`, the one switch that training, evaluation and
export all read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autosearch.models import build_model, count_params, make_spec
from autosearch.search.training import device as device_module
from autosearch.search.training.data import CifarData
from autosearch.search.training.evaluation import evaluate
from autosearch.search.training.recipe import get_recipe
from autosearch.search.training.trainer import train

SPEC = make_spec([16, 32, 64], [1, 1, 1], stem_width=16)  # 78,042 parameters


def synthetic(n_train: int, n_val: int) -> CifarData:
    """Random uint8 images: the layout's speed does not depend on what they show."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        return x, torch.randint(0, 10, (n,), generator=g)

    (tx, ty), (vx, vy) = split(n_train), split(n_val)
    return CifarData(tx, ty, vx, vy, vx, vy, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))


def one_round(layouts: frozenset[str], data: CifarData, device: torch.device) -> tuple:
    """(train images/s, CPU-s per 1,000 trained images, validation images/s)."""
    device_module.CHANNELS_LAST = layouts
    torch.manual_seed(0)
    model = build_model(SPEC)
    recipe = get_recipe("fast").replace(batch_size=256, epochs=1, tta=False)
    cpu_start = time.process_time()
    result = train(model, data, recipe, device=device, seed=0)
    cpu = time.process_time() - cpu_start  # includes one small validation pass
    seen = result.images_per_s * result.wall_time
    started = time.perf_counter()
    evaluate(model, data.val_x, data.val_y, data.mean, data.std, tta=True, device=device)
    val_rate = len(data.val_y) / (time.perf_counter() - started)
    return result.images_per_s, 1000 * cpu / seen, val_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=2560)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's choice")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_module.resolve_device(args.device)
    data = synthetic(args.images, 2048)
    chosen = device_module.CHANNELS_LAST
    layouts = {
        "NCHW": frozenset(chosen - {device.type}),
        "NHWC": frozenset(chosen | {device.type}),
    }
    print(
        f"{count_params(SPEC):,}-parameter net, {args.images} images x 1 epoch per run, "
        f"batch 256, {device}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"{'round':<6} {'layout':<6} {'train img/s':>11} {'CPU-s/1k img':>12} {'val img/s':>9}")
    rows: dict[str, list[tuple]] = {name: [] for name in layouts}
    one_round(layouts["NHWC"], synthetic(512, 64), device)  # warm-up: first-call costs
    for r in range(args.rounds):
        order = list(layouts) if r % 2 == 0 else list(reversed(layouts))
        for name in order:
            row = one_round(layouts[name], data, device)
            rows[name].append(row)
            print(f"{r + 1:<6} {name:<6} {row[0]:>11.0f} {row[1]:>12.2f} {row[2]:>9.0f}")
    device_module.CHANNELS_LAST = chosen
    med = {
        name: [statistics.median(col) for col in zip(*got, strict=True)]
        for name, got in rows.items()
    }
    print()
    print(f"{'median':<13} {'train img/s':>11} {'CPU-s/1k img':>12} {'val img/s':>9}")
    for name, (rate, cpu, val) in med.items():
        print(f"{name:<13} {rate:>11.0f} {cpu:>12.2f} {val:>9.0f}")
    a, b = med["NCHW"], med["NHWC"]
    print(
        f"NHWC / NCHW: training {b[0] / a[0]:.2f}x images/s, {a[1] / b[1]:.2f}x fewer "
        f"CPU-seconds per image, validation {b[2] / a[2]:.2f}x images/s"
    )
    print(f"the trainer uses NHWC on: {', '.join(sorted(chosen))}")


if __name__ == "__main__":
    main()
