"""One training run outside a study: data, model, trainer, then a single test pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from autosearch.models import ArchSpec, build_model, count_flops, count_params
from autosearch.search.training.data import prepare_data
from autosearch.search.training.datasets import DataSource, parse_data
from autosearch.search.training.device import resolve_device
from autosearch.search.training.evaluation import evaluate
from autosearch.search.training.recipe import TrainRecipe
from autosearch.search.training.trainer import EpochReport, train


def run_training(
    spec: ArchSpec,
    recipe: TrainRecipe,
    *,
    data_dir: str | None = None,
    subset: int | None = None,
    val_size: int | None = None,
    seed: int = 0,
    device: str = "auto",
    on_epoch: Callable[[EpochReport], None] | None = None,
    data: DataSource | str | None = None,
) -> dict[str, Any]:
    """Train `spec` with `recipe`, then evaluate once on the test set.

    Returns a JSON-able summary: status, validation and test accuracy, params, FLOPs,
    training seconds, images/s, the device and the per-epoch history.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be a whole number from 0 to {2**32 - 1}, got {seed!r}")
    dev = resolve_device(device)
    source = parse_data(data, data_dir=data_dir)
    data = prepare_data(source=source, val_size=val_size, subset=subset, seed=seed, device=dev)
    if (spec.num_classes, spec.input_size) != (data.num_classes, data.image_size):
        raise ValueError(
            f"the network takes {spec.num_classes} classes of {spec.input_size}px images, "
            f"the data has {data.num_classes} classes of {data.image_size}px"
        )
    # Initial weights come from the global generator: seeded, one seed gives one run.
    torch.manual_seed(seed)
    model = build_model(spec)

    def callback(report: EpochReport) -> bool:
        if on_epoch is not None:
            on_epoch(report)
        return False

    result = train(model, data, recipe, device=dev, seed=seed, callback=callback)
    test_loss, test_acc = evaluate(
        model, data.test_x, data.test_y, data.mean, data.std, tta=recipe.tta, device=dev
    )
    return {
        "arch": spec.to_dict(),
        "recipe": recipe.to_dict(),
        "params": count_params(spec),
        "flops": count_flops(spec),
        "status": result.status,
        "message": result.message,
        "best_val_acc": result.best_val_acc,
        "final_val_acc": result.final_val_acc,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "epochs_run": result.epochs_run,
        "train_seconds": result.wall_time,
        "images_per_s": result.images_per_s,
        "device": result.device,
        "history": [r.to_dict() for r in result.history],
    }
