"""What an export folder says about its model: the model.json contents (the arch, the
recipe, the scores, the data split and where the code came from) and the model card."""

from __future__ import annotations

import math
import statistics
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from autosearch.models import ArchSpec, count_flops, count_params
from autosearch.search.results.exported import FORMAT
from autosearch.search.training.data import CifarData
from autosearch.search.training.recipe import TrainRecipe
from optuna.trial import FrozenTrial

LIBRARIES = ("autosearch", "torch", "torchvision", "optuna", "safetensors", "numpy")


SELECTION = "first seed (never chosen on the test set)"


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


def finite(x: float) -> float | None:
    """JSON has no NaN: an accuracy that was not measured is null."""
    return x if x is not None and math.isfinite(x) else None


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def describe(
    trial: FrozenTrial,
    study_name: str,
    spec: ArchSpec,
    recipe: TrainRecipe,
    max_params: int,
    runs: list[dict[str, Any]],
    data: CifarData,
    split: dict[str, Any],
    dev: torch.device,
) -> dict[str, Any]:
    """The model.json contents up to the weights hash and the provenance."""
    accs = [r["test_acc"] for r in runs]
    return {
        "format": FORMAT,
        "arch": spec.to_dict(),
        "recipe": recipe.to_dict(),
        "params": count_params(spec),
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
            **split,
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
            "val_acc": finite(trial.value) if trial.value is not None else None,
            "epochs": trial.user_attrs.get("epochs_run"),
        },
    }


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
    size = spec.input_size
    title = d.get("source", "cifar10")
    return f"""# ResNet for {title} from study `{s["study"]}`, trial {s["trial"]}

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

The network takes (B, 3, {size}, {size}) RGB images scaled to [0, 1], then normalised
with mean {tuple(round(m, 4) for m in d["mean"])} and std \
{tuple(round(v, 4) for v in d["std"])}, and returns (B, {spec.num_classes}) logits. The test
accuracy averages the logits of each image and its mirror image when flip TTA is on.

```python
from autosearch import load_best_model

model = load_best_model("path/to/this/folder")  # eval mode, on the CPU
logits = model(images)  # uint8 (0-255) or float [0, 1] images; it normalises them
```

`autosearch evaluate path/to/this/folder` rebuilds the model from `model.json`, checks
the weights against it and measures the test accuracy again.
"""
