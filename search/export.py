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
    >>> logits = model(images)  # (B, 10); images normalised with model.json's mean/std
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from optuna.trial import FrozenTrial
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from models import ArchSpec, BudgetError, SpecError, build_model, check_budget, count_flops
from models import count_params as spec_params
from search.data import CifarData, prepare_data
from search.recipe import RecipeError, TrainRecipe
from search.trainer import EpochReport, evaluate, resolve_device, train

WEIGHTS, INFO, CARD = "model.safetensors", "model.json", "README.md"
FORMAT = "autosearch-export-1"
LIBRARIES = ("autosearch", "torch", "torchvision", "optuna", "safetensors", "numpy")
SELECTION = "first seed (never chosen on the test set)"


class ExportError(ValueError):
    """An export cannot be made, or a folder is not a valid export."""


# --------------------------------------------------------------------------- provenance


PLATEAU_VAL_SIZE = 10_000  # held out when the schedule reacts to validation loss


def versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def git_revision() -> str:
    """The commit of the code that runs (not of the working directory), or "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _finite(x: float) -> float | None:
    """JSON has no NaN: an accuracy that was not measured is null."""
    return x if x is not None and math.isfinite(x) else None


# --------------------------------------------------------------------------- evaluation


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    # cuDNN may pick its kernels by timing; fixed choices make a re-run give equal logits.
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        yield


def _place(model: nn.Module, device: torch.device) -> nn.Module:
    """The layout the trainer used, so a reloaded model runs the same kernels."""
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model.eval()


def test_accuracy(
    model: nn.Module, data: CifarData, recipe: TrainRecipe, device: torch.device
) -> tuple[float, float]:
    """(loss, accuracy) on the test split, the same way for export and for evaluate."""
    with _deterministic():
        return evaluate(
            _place(model, device),
            data.test_x,
            data.test_y,
            data.mean,
            data.std,
            tta=recipe.tta,
            device=device,
        )


# ------------------------------------------------------------------------------- export


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
) -> dict[str, Any]:
    """Retrain `trial`'s arch and recipe, test each seed once and write the export.

    Args:
        trial: A trial holding the "arch" and "recipe" user attributes.
        out: The export folder (created).
        study_name: Recorded for provenance.
        max_params: The budget the parameter count is checked against again.
        data_dir, subset, val_size, seed: The data split, as in `prepare_data`. By
            default (None) all 50,000 training images are trained on, except for the
            plateau schedules, which need a validation loss and keep 10,000 back. `seed`
            fixes the split; seed i of `seeds` trains with seed + i.
        epochs: Epochs instead of the recipe's.
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
    try:
        spec = ArchSpec.from_dict(trial.user_attrs["arch"])
        recipe = TrainRecipe.from_dict(trial.user_attrs["recipe"])
        if epochs is not None:
            recipe = recipe.replace(epochs=epochs)
        params = check_budget(spec, max_params)
    except KeyError as e:
        raise ExportError(f"trial {trial.number} has no {e.args[0]!r} attribute") from None
    except (SpecError, RecipeError, BudgetError) as e:
        raise ExportError(f"trial {trial.number}: {e}") from None
    metric_driven = recipe.schedule in ("plateau", "zigzag_plateau")
    if val_size is None:
        val_size = PLATEAU_VAL_SIZE if metric_driven else 0
    elif val_size == 0 and metric_driven:
        raise ExportError(
            f"trial {trial.number}'s {recipe.schedule!r} schedule steps on validation loss; "
            f"--val-size 0 leaves none (try --val-size {PLATEAU_VAL_SIZE})"
        )
    dev = resolve_device(device)
    data = prepare_data(data_dir, val_size=val_size, subset=subset, seed=seed, device=dev)

    runs: list[dict[str, Any]] = []
    for i in range(seeds):
        run_seed = seed + i
        torch.manual_seed(run_seed)  # the initial weights come from the global generator
        model = build_model(spec)
        built = sum(p.numel() for p in model.parameters())
        if built != params:
            raise ExportError(f"built model has {built:,} parameters, the spec counts {params:,}")
        report = (lambda r, i=i: on_epoch(i, r)) if on_epoch else None
        result = train(model, data, recipe, device=dev, seed=run_seed, callback=report)
        if result.status == "diverged":
            raise ExportError(f"seed {run_seed}: {result.message}")
        if i == 0:
            folder.mkdir(parents=True, exist_ok=True)
            save_file(_state(model), str(folder / WEIGHTS), metadata={"arch": spec.to_json()})
            # Test the file, not the in-memory model: the number is then what a reload gives.
            model = _load_weights(folder / WEIGHTS, spec, params)
        test_loss, test_acc = test_accuracy(model, data, recipe, dev)
        runs.append(
            {
                "seed": run_seed,
                "test_acc": test_acc,
                "test_loss": test_loss,
                "val_acc": _finite(result.final_val_acc),
                "epochs_run": result.epochs_run,
                "train_seconds": result.wall_time,
            }
        )
    accs = [r["test_acc"] for r in runs]
    info = {
        "format": FORMAT,
        "arch": spec.to_dict(),
        "recipe": recipe.to_dict(),
        "params": params,
        "max_params": max_params,
        "flops": count_flops(spec),
        "test_acc": runs[0]["test_acc"],
        "test_loss": runs[0]["test_loss"],
        "val_acc": runs[0]["val_acc"],
        "test_acc_mean": statistics.fmean(accs),
        "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "weights_from": SELECTION,
        "runs": runs,
        "data": {
            "data_dir": data_dir,
            "subset": subset,
            "val_size": val_size,
            "seed": seed,
            "train_images": len(data.train_y),
            "val_images": len(data.val_y),
            "test_images": len(data.test_y),
            "mean": list(data.mean),
            "std": list(data.std),
        },
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "search": {
            "study": study_name,
            "trial": trial.number,
            "val_acc": _finite(trial.value) if trial.value is not None else None,
            "epochs": trial.user_attrs.get("epochs_run"),
        },
        "weights_sha256": _sha256(folder / WEIGHTS),
        "versions": versions(),
        "git_revision": git_revision(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (folder / INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    (folder / CARD).write_text(model_card(info), encoding="utf-8")
    return info


def model_card(info: dict[str, Any]) -> str:
    """A short README for an export folder."""
    spec = ArchSpec.from_dict(info["arch"])
    r, d, s = info["recipe"], info["data"], info["search"]
    n = len(info["runs"])
    acc = f"{info['test_acc']:.4f}"
    if n > 1:
        acc += f" (saved seed); {info['test_acc_mean']:.4f} +/- {info['test_acc_std']:.4f} over {n}"
    val = "none (no validation split)" if info["val_acc"] is None else f"{info['val_acc']:.4f}"
    searched = "-" if s["val_acc"] is None else f"{s['val_acc']:.4f}"
    arch = spec.describe().replace("|", "\\|")  # a bare | would end the table cell
    return f"""# CIFAR-10 ResNet from study `{s["study"]}`, trial {s["trial"]}

| | |
|---|---|
| architecture | {arch} |
| parameters | {info["params"]:,} (budget {info["max_params"]:,}) |
| FLOPs per image | {info["flops"] / 1e6:,.1f} M (forward) |
| test accuracy | {acc} |
| validation accuracy | {val} |
| search validation accuracy | {searched} (trial {s["trial"]}, {s["epochs"]} epochs) |
| training images | {d["train_images"]:,} (val {d["val_images"]:,}, test {d["test_images"]:,}) |
| recipe | {r["optimizer"]}, lr {r["lr"]:.4g}, batch {r["batch_size"]}, {r["schedule"]}, \
{r["epochs"]} epochs, EMA {r["ema"]}, flip TTA {r["tta"]} |
| weights | {info["weights_from"]} |
| device | {info["device_name"]} |
| git revision | {info["git_revision"]} |

Inputs are (B, 3, 32, 32) RGB images scaled to [0, 1], then normalised with
mean {tuple(round(m, 4) for m in d["mean"])} and std {tuple(round(v, 4) for v in d["std"])}.
The test accuracy averages the logits of each image and its mirror image when flip TTA
is on.

```python
from search import load_best_model

model = load_best_model("path/to/this/folder")  # eval mode, on the CPU
```

`autosearch evaluate path/to/this/folder` rebuilds the model from `model.json`, checks
the weights against it and measures the test accuracy again.
"""


# ------------------------------------------------------------------------ load and check


def read_info(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / INFO
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path} does not exist; is {folder} an export folder?") from None
    except json.JSONDecodeError as e:
        raise ExportError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ExportError(f"{path} is not an autosearch export ({FORMAT})")
    return info


def _load_weights(path: Path, spec: ArchSpec, params: int) -> nn.Module:
    """The model of `spec` with the weights of `path`, refusing any mismatch."""
    with safe_open(str(path), framework="pt") as f:
        stored = (f.metadata() or {}).get("arch")
    if stored is None or json.loads(stored) != spec.to_dict():
        raise ExportError(f"{path.name} was saved for another architecture than model.json's")
    state = load_file(str(path))
    model = build_model(spec)
    in_file = sum(state[k].numel() for k, _ in model.named_parameters() if k in state)
    if in_file != params:
        raise ExportError(f"{path.name} holds {in_file:,} parameters, model.json says {params:,}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise ExportError(f"{path.name} does not fit the architecture: {first}") from None
    return model.eval()


def load_export(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The checked model (CPU, eval mode) and model.json of an export folder.

    Refuses, with `ExportError`, a folder whose spec, parameter count, budget or weights
    file disagree.
    """
    folder = Path(folder)
    info = read_info(folder)
    try:
        spec = ArchSpec.from_dict(info["arch"])
        params = int(info["params"])
    except (KeyError, TypeError, SpecError) as e:
        raise ExportError(f"{folder / INFO} has no valid arch: {e}") from None
    counted = spec_params(spec)
    if counted != params:
        raise ExportError(f"model.json says {params:,} parameters but its arch has {counted:,}")
    if params > int(info.get("max_params", params)):
        raise ExportError(f"{params:,} parameters exceed the budget {info['max_params']:,}")
    weights = folder / WEIGHTS
    if not weights.exists():
        raise ExportError(f"{weights} does not exist")
    if info.get("weights_sha256") not in (None, _sha256(weights)):
        raise ExportError(f"{weights} is not the file model.json describes (sha256 differs)")
    return _load_weights(weights, spec, params), info


def load_best_model(folder: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """The trained model of an export folder, checked against its spec, in eval mode.

    Feed it (B, 3, 32, 32) images scaled to [0, 1] and normalised with model.json's
    data.mean and data.std; it returns (B, 10) logits.
    """
    model, _ = load_export(folder)
    return model.to(resolve_device(device)).eval()


def evaluate_export(
    folder: str | Path, *, data_dir: str | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Rebuild an export, load its weights and measure its test accuracy again.

    The test split is rebuilt from model.json's data settings; `data_dir` overrides the
    recorded folder. Returns test_acc, the recorded value and whether they are equal.
    """
    model, info = load_export(folder)
    d = info["data"]
    dev = resolve_device(device)
    data = prepare_data(
        data_dir or d.get("data_dir"),
        val_size=d["val_size"],
        subset=d["subset"],
        seed=d["seed"],
        device=dev,
    )
    if len(data.test_y) != d["test_images"] or not all(
        math.isclose(a, b, rel_tol=1e-6) for a, b in zip(data.mean, d["mean"], strict=True)
    ):
        raise ExportError(
            f"the data found ({len(data.test_y)} test images, mean "
            f"{tuple(round(m, 4) for m in data.mean)}) is not the data of the export "
            f"({d['test_images']} test images, mean {tuple(round(m, 4) for m in d['mean'])})"
        )
    # The export's normalisation, not a recomputed one, defines the model's inputs.
    data.mean, data.std = tuple(d["mean"]), tuple(d["std"])
    recipe = TrainRecipe.from_dict(info["recipe"])
    test_loss, test_acc = test_accuracy(model, data, recipe, dev)
    return {
        "test_acc": test_acc,
        "test_loss": test_loss,
        "recorded_test_acc": info["test_acc"],
        "match": test_acc == info["test_acc"],
        "device": dev.type,
        "recorded_device": info.get("device"),
        "params": info["params"],
        "test_images": len(data.test_y),
    }
