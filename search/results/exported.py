"""Reading an export folder back: check it against its spec, load it, test it again.

The folder's `model.json` describes the weights in `model.safetensors`; nothing is
built or loaded until the spec, the parameter count and the weights hash agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from autosearch.models import DEFAULT_MAX_PARAMS, ArchSpec, SpecError, build_model
from autosearch.models import count_params as spec_params
from autosearch.search.training.data import CifarData, prepare_data
from autosearch.search.training.datasets import describe_source, parse_data
from autosearch.search.training.device import memory_format, resolve_device
from autosearch.search.training.evaluation import evaluate
from autosearch.search.training.recipe import TrainRecipe
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

WEIGHTS, INFO, CARD = "model.safetensors", "model.json", "README.md"


FORMAT = "autosearch-export-1"


class ExportError(ValueError):
    """An export cannot be made, or a folder is not a valid export."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- evaluation


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    # cuDNN may pick its kernels by timing; fixed choices make a re-run give equal logits.
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        yield


def _place(model: nn.Module, device: torch.device) -> nn.Module:
    """The layout the trainer used, so a reloaded model runs the same kernels."""
    model.to(device)
    model.to(memory_format=memory_format(device))
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


# ------------------------------------------------------------------------ load and check


def read_info(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / INFO
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path} does not exist; is {folder} an export folder?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path} is not valid JSON: {e}") from None
    except OSError as e:
        raise ExportError(f"{path} cannot be read: {e.strerror or e}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ExportError(f"{path} is not an autosearch export ({FORMAT})")
    return info


def _weights_bound(params: int) -> int:
    """The most bytes a weights file of `params` float32 parameters may take: the
    parameters, as many again for buffers (batch-norm statistics are far fewer), and
    1 MiB for the header and metadata. A bigger file is refused before it is read."""
    return 8 * params + (1 << 20)


def load_weights(path: Path, spec: ArchSpec, params: int) -> nn.Module:
    """The model of `spec` with the weights of `path`, refusing any mismatch."""
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get("arch")
        if stored is None or json.loads(stored) != spec.to_dict():
            raise ExportError(f"{path.name} was saved for another architecture than model.json's")
        state = load_file(str(path))
    except (SafetensorError, json.JSONDecodeError, OSError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ExportError(f"{path.name} is not a readable safetensors file: {first}") from None
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


def _checked_spec(folder: Path, info: dict[str, Any], max_params: int) -> tuple[ArchSpec, int]:
    """The spec and its count, checked against model.json's count and against the
    caller's budget, by arithmetic: nothing is built yet."""
    try:
        spec = ArchSpec.from_dict(info["arch"])
        params = int(info["params"])
    except (KeyError, TypeError, ValueError, SpecError) as e:
        raise ExportError(f"{folder / INFO} has no valid arch and params: {e}") from None
    counted = spec_params(spec)
    if counted != params:
        raise ExportError(f"model.json says {params:,} parameters but its arch has {counted:,}")
    if counted > max_params:
        # The caller's budget, not the file's: an edited max_params proves nothing.
        raise ExportError(f"its arch has {counted:,} parameters, over the budget {max_params:,}")
    return spec, counted


def load_export(
    folder: str | Path, *, max_params: int = DEFAULT_MAX_PARAMS
) -> tuple[nn.Module, dict[str, Any]]:
    """The checked model (CPU, eval mode) and model.json of an export folder.

    Before anything is built or read beyond model.json: the spec's exact count must
    equal model.json's and lie within `max_params` (the caller's budget), and the
    weights file must be present, of a plausible size and of the sha256 recorded in
    model.json. Refuses any mismatch with a one-line `ExportError`.
    """
    folder = Path(folder)
    info = read_info(folder)
    spec, params = _checked_spec(folder, info, max_params)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ExportError(f"{weights} does not exist")
    expected = info.get("weights_sha256")
    if not isinstance(expected, str) or len(expected) != 64:
        raise ExportError(
            f"{folder / INFO} records no weights_sha256; the weights cannot be checked"
        )
    size = weights.stat().st_size
    if size > _weights_bound(params):
        raise ExportError(f"{weights} is {size:,} bytes, too big for {params:,} parameters")
    if sha256_of(weights) != expected:
        raise ExportError(f"{weights} is not the file model.json describes (sha256 differs)")
    return load_weights(weights, spec, params), info


class NormalizedModel(nn.Module):
    """A trained network that takes images as they come and normalises them itself.

    Input: (B, 3, S, S) RGB images, uint8 in 0-255 or float in [0, 1] (S =
    `spec.input_size`). They are standardised with the training split's per-channel
    `mean` and `std` (buffers, saved with the state dict), then `net` returns
    (B, classes) logits. `net` is the bare network, for inputs normalised already.
    """

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.spec = net.spec
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, classes)
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        return self.net((x - self.mean) / self.std)


def load_best_model(
    folder: str | Path,
    *,
    device: str | torch.device = "cpu",
    max_params: int = DEFAULT_MAX_PARAMS,
) -> NormalizedModel:
    """The trained model of an export folder, checked against its spec, in eval mode.

    Refuses a folder whose architecture exceeds `max_params` (default 5,000,000) or
    whose weights are not the ones model.json records. The model takes (B, 3, S, S)
    RGB images, uint8 (0-255) or float in [0, 1], normalises them with model.json's
    data.mean and data.std itself, and returns (B, classes) logits; `model.net` is the
    bare network and `model.spec` its `ArchSpec`.

    Example:
        >>> model = load_best_model("best/")  # doctest: +SKIP
        >>> model(torch.zeros(4, 3, 32, 32, dtype=torch.uint8)).shape  # doctest: +SKIP
        torch.Size([4, 10])
    """
    net, info = load_export(folder, max_params=max_params)
    try:
        mean, std = tuple(info["data"]["mean"]), tuple(info["data"]["std"])
    except (KeyError, TypeError) as e:
        raise ExportError(f"{Path(folder) / INFO} records no data.mean and data.std: {e}") from None
    return NormalizedModel(net, mean, std).to(resolve_device(device)).eval()


def _recorded(folder: Path, info: dict[str, Any]) -> tuple[dict[str, Any], TrainRecipe]:
    """model.json's data settings and recipe, checked for shape before any work."""
    try:
        d = info["data"]
        for key, kind in (("val_size", int), ("seed", int), ("test_images", int)):
            if not isinstance(d[key], kind) or isinstance(d[key], bool):
                raise TypeError(f"data.{key} = {d[key]!r} is not a whole number")
        if d["subset"] is not None and not isinstance(d["subset"], int):
            raise TypeError(f"data.subset = {d['subset']!r} is not a whole number")
        if len(d["mean"]) != 3 or len(d["std"]) != 3 or not isinstance(info["test_acc"], float):
            raise TypeError("data.mean, data.std or test_acc is malformed")
        return d, TrainRecipe.from_dict(info["recipe"])
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{folder / INFO} is malformed: {e}") from None


def _recorded_source(d: dict[str, Any], data: str | None, data_dir: str | None):
    """The data model.json names, where this machine keeps it: `data` (a --data value)
    and `data_dir` (for CIFAR) override the recorded places, never the identity."""
    text = data or d.get("source", "cifar10")
    cifar = text.partition(":")[0].lower() in ("cifar10", "cifar100")
    source = parse_data(
        text,
        data_dir=(data_dir or d.get("data_dir")) if cifar else None,
        image_size=None if cifar else d.get("image_size"),
    )
    recorded = d.get("identity")
    if recorded is not None:
        found = describe_source(source).identity
        if found != recorded:
            raise ExportError(
                f"--data {source.spec} is {found}, not the data of the export ({recorded})"
            )
    return source


def evaluate_export(
    folder: str | Path,
    *,
    data_dir: str | None = None,
    device: str = "auto",
    max_params: int = DEFAULT_MAX_PARAMS,
    data: str | None = None,
) -> dict[str, Any]:
    """Rebuild an export, load its weights and measure its test accuracy again.

    The test split is rebuilt from model.json's data settings; `data` (a --data value)
    and `data_dir` override the recorded places. Returns test_acc, the recorded value
    and whether they are equal.
    """
    dev = resolve_device(device)
    d, recipe = _recorded(Path(folder), read_info(folder))
    model, info = load_export(folder, max_params=max_params)
    source = _recorded_source(d, data, data_dir)
    split = prepare_data(
        source=source,
        val_size=d["val_size"],
        subset=d["subset"],
        seed=d["seed"],
        device=dev,
    )
    if len(split.test_y) != d["test_images"] or not all(
        math.isclose(a, b, rel_tol=1e-6) for a, b in zip(split.mean, d["mean"], strict=True)
    ):
        raise ExportError(
            f"the data found ({len(split.test_y)} test images, mean "
            f"{tuple(round(m, 4) for m in split.mean)}) is not the data of the export "
            f"({d['test_images']} test images, mean {tuple(round(m, 4) for m in d['mean'])})"
        )
    # The export's normalisation, not a recomputed one, defines the model's inputs.
    split.mean, split.std = tuple(d["mean"]), tuple(d["std"])
    test_loss, test_acc = test_accuracy(model, split, recipe, dev)
    return {
        "test_acc": test_acc,
        "test_loss": test_loss,
        "recorded_test_acc": info["test_acc"],
        "match": test_acc == info["test_acc"],
        "device": dev.type,
        "recorded_device": info.get("device"),
        "params": info["params"],
        "test_images": len(split.test_y),
    }
