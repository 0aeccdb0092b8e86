"""Export a trial: retrain its arch and recipe, test once, save weights with their spec.

An export folder holds three files:

- `model.safetensors`: the weights (the EMA weights when the recipe averages), with the
  architecture JSON in the file's metadata;
- `model.json`: the arch spec, the recipe, the parameter count checked against the
  budget, test and validation accuracy, the data split, the input normalisation, the
  library versions and the git revision;
- `README.md`: a short model card.

With several seeds, every seed trains and is tested once; the saved weights are always
the first seed's. Choosing "the best seed" would need a score, the test set must not be
that score, and the default export trains on all 50,000 images, leaving no validation
set. The mean and standard deviation over seeds describe the recipe; the saved model's
own test accuracy is what `evaluate_export` reproduces.

Example:
    >>> model = load_best_model("exports/zigzag")  # doctest: +SKIP
    >>> logits = model(images)  # (B, classes); uint8 or [0, 1] images, normalised inside
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from autosearch.models import (
    ArchSpec,
    BudgetError,
    SpecError,
    build_model,
    check_budget,
)
from autosearch.search.results.card import (
    describe,
    finite,
    git_revision,
    model_card,
    now,
    versions,
)
from autosearch.search.results.exported import (
    CARD,
    INFO,
    WEIGHTS,
    ExportError,
    load_weights,
    sha256_of,
    test_accuracy,
)
from autosearch.search.training.data import CifarData, prepare_data
from autosearch.search.training.datasets import (
    DataSource,
    default_val_size,
    describe_source,
    load_source,
    parse_data,
)
from autosearch.search.training.device import resolve_device
from autosearch.search.training.recipe import RecipeError, TrainRecipe
from autosearch.search.training.trainer import EpochReport, train
from optuna.trial import FrozenTrial
from safetensors.torch import save_file
from torch import nn


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors wants plain contiguous CPU tensors; channels-last weights are not.
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def export_trial(
    trial: FrozenTrial,
    out: str | Path,
    *,
    study_name: str,
    max_params: int,
    data_dir: str | None = None,
    subset: int | None = None,
    val_size: int | None = None,
    seed: int = 0,
    epochs: int | None = None,
    seeds: int = 1,
    device: str = "auto",
    overwrite: bool = False,
    on_epoch: Callable[[int, EpochReport], None] | None = None,
    data: DataSource | str | None = None,
    identity: str | None = None,
) -> dict[str, Any]:
    """Retrain `trial`'s arch and recipe, test each seed once and write the export.

    Args:
        trial: A trial holding the "arch" and "recipe" user attributes.
        out: The export folder (created).
        study_name: Recorded for provenance.
        max_params: The budget the parameter count is checked against again.
        data, data_dir, subset, val_size, seed: The data and its split, as in
            `prepare_data` (`data` a `DataSource` or --data value, default CIFAR-10).
            By default (None) all training images are trained on, except for the
            plateau schedules, which need a validation loss and keep a fifth back.
            `seed` fixes the split; seed i of `seeds` trains with seed + i.
        epochs: Epochs instead of the recipe's.
        identity: The study's data identity, which the data must have.
        seeds: Training runs; the first seed's weights are saved.
        device: auto, cpu or cuda[:N].
        overwrite: Replace an existing export in `out`.
        on_epoch: Called with (seed index, report) after every epoch.

    Returns:
        The contents written to model.json.
    """
    folder = Path(out)
    if (folder / INFO).exists() and not overwrite:
        raise ExportError(f"{folder} already holds an export; choose another folder")
    if seeds < 1:
        raise ExportError(f"seeds must be at least 1, got {seeds}")
    spec, recipe, params = _trial_config(trial, max_params, epochs)
    dev = resolve_device(device)
    source = parse_data(data, data_dir=data_dir)
    raw = load_source(source)
    facts = data_facts(source, raw.classes, identity)
    val_size = _validation_size(trial, recipe, val_size, len(raw.train_y))
    data = prepare_data(raw=raw, val_size=val_size, subset=subset, seed=seed, device=dev)
    check_fits(spec, data, trial.number)
    runs = [
        _train_and_test(
            spec,
            recipe,
            params,
            data,
            dev,
            seed=seed + i,
            save_to=folder if i == 0 else None,
            on_epoch=(lambda r, i=i: on_epoch(i, r)) if on_epoch else None,
        )
        for i in range(seeds)
    ]
    where = source.path if source.kind in ("cifar10", "cifar100") else None
    split = {"data_dir": where, "subset": subset, "val_size": val_size, "seed": seed}
    split.update(facts)
    info = describe(trial, study_name, spec, recipe, max_params, runs, data, split, dev)
    info["weights_sha256"] = sha256_of(folder / WEIGHTS)
    info.update(versions=versions(), git_revision=git_revision(), created=now())
    (folder / INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    (folder / CARD).write_text(model_card(info), encoding="utf-8")
    return info


def _trial_config(
    trial: FrozenTrial, max_params: int, epochs: int | None
) -> tuple[ArchSpec, TrainRecipe, int]:
    """The trial's spec and recipe (with `epochs`), its count checked against the budget."""
    try:
        spec = ArchSpec.from_dict(trial.user_attrs["arch"])
        recipe = TrainRecipe.from_dict(trial.user_attrs["recipe"])
        if epochs is not None:
            recipe = recipe.replace(epochs=epochs)
        return spec, recipe, check_budget(spec, max_params)
    except KeyError as e:
        raise ExportError(f"trial {trial.number} has no {e.args[0]!r} attribute") from None
    except (SpecError, RecipeError, BudgetError) as e:
        raise ExportError(f"trial {trial.number}: {e}") from None


def data_facts(source: DataSource, classes: list[str], expect: str | None = None) -> dict[str, Any]:
    """What model.json records of the data beyond its split: enough to find it again
    (`source`, `image_size`) and to know it is the same (`identity`), which must be
    `expect` (the study's data) when given."""
    identity = describe_source(source, download=False).identity
    if expect is not None and identity != expect:
        raise ExportError(
            f"--data {source.spec} is {identity}, but the study trained on {expect}; "
            "point --data at the study's data"
        )
    return {
        "source": source.spec,
        "image_size": source.image_size,
        "identity": identity,
        "classes": list(classes),
    }


def check_fits(spec: ArchSpec, data: CifarData, number: int) -> None:
    """The trial's network must take the data's images and classes."""
    if (spec.num_classes, spec.input_size) != (data.num_classes, data.image_size):
        raise ExportError(
            f"trial {number}'s network classifies {spec.num_classes} classes of "
            f"{spec.input_size}px images, but the data has {data.num_classes} classes of "
            f"{data.image_size}px; export it with the study's --data"
        )


def _validation_size(
    trial: FrozenTrial, recipe: TrainRecipe, val_size: int | None, total: int
) -> int:
    """None means 0, except for schedules that step on validation loss (a fifth)."""
    metric_driven = recipe.schedule in ("plateau", "zigzag_plateau")
    if val_size is None:
        return default_val_size(total) if metric_driven else 0
    if val_size == 0 and metric_driven:
        raise ExportError(
            f"trial {trial.number}'s {recipe.schedule!r} schedule steps on validation loss; "
            f"--val-size 0 leaves none (try --val-size {default_val_size(total)})"
        )
    return val_size


def _train_and_test(
    spec: ArchSpec,
    recipe: TrainRecipe,
    params: int,
    data: CifarData,
    dev: torch.device,
    *,
    seed: int,
    save_to: Path | None,
    on_epoch: Callable[[EpochReport], None] | None,
) -> dict[str, Any]:
    """Train one seed, save its weights to `save_to` if given, and test it once."""
    torch.manual_seed(seed)  # the initial weights come from the global generator
    model = build_model(spec)
    built = sum(p.numel() for p in model.parameters())
    if built != params:
        raise ExportError(f"built model has {built:,} parameters, the spec counts {params:,}")
    result = train(model, data, recipe, device=dev, seed=seed, callback=on_epoch)
    if result.status == "diverged":
        raise ExportError(f"seed {seed}: {result.message}")
    if save_to is not None:
        save_to.mkdir(parents=True, exist_ok=True)
        save_file(_state(model), str(save_to / WEIGHTS), metadata={"arch": spec.to_json()})
        # Test the file, not the in-memory model: the number is then what a reload gives.
        model = load_weights(save_to / WEIGHTS, spec, params)
    test_loss, test_acc = test_accuracy(model, data, recipe, dev)
    return {
        "seed": seed,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "val_acc": finite(result.final_val_acc),
        "epochs_run": result.epochs_run,
        "train_seconds": result.wall_time,
    }
