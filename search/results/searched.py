"""Export a trial's searched weights as they are: no retraining (`export --no-retrain`).

A finished trial among the study's best keeps its final weights (``final.pt``, see
`storage.checkpoints`). This writes them to the same three files as `export_trial`,
after checking them against the trial: the architecture the checkpoint records, the
parameter count against the trial's and the budget, and a strict load into the
network the spec builds. The test set is the study's own test split, and the
normalisation is that of the training split the trial trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import torch
from autosearch.models import ArchSpec, build_model, count_params
from autosearch.search.results.card import (
    describe,
    finite,
    git_revision,
    model_card,
    now,
    versions,
)
from autosearch.search.results.export import _state, _trial_config, check_fits, data_facts
from autosearch.search.results.exported import (
    CARD,
    INFO,
    WEIGHTS,
    ExportError,
    load_weights,
    sha256_of,
    test_accuracy,
)
from autosearch.search.training.data import prepare_data
from autosearch.search.training.datasets import DataSource, load_source, parse_data
from autosearch.search.training.device import resolve_device
from autosearch.search.training.evaluation import evaluate
from autosearch.search.tuning.study import UID_ATTR
from autosearch.storage.checkpoints import CheckpointStore, study_folder
from autosearch.storage.stale import root_trial_number
from optuna.trial import FrozenTrial
from safetensors.torch import save_file

SEARCHED = "the search's own final weights (not retrained)"


def kept_weights(study: optuna.Study, trial: FrozenTrial, checkpoint_dir: str | Path) -> dict:
    """The final state the trial kept under `checkpoint_dir`, or an `ExportError` that
    says why there is none. Nothing is written: the study is only read."""
    uid = study.user_attrs.get(UID_ATTR)
    if uid is None:
        raise ExportError(f"study {study.study_name!r} has no identity, so no checkpoints")
    store = CheckpointStore(
        checkpoint_dir, study_folder(study.study_name, str(uid)), root_trial_number(trial)
    )
    state = store.load_final(map_location="cpu")
    if state is None or not isinstance(state.get("model"), dict):
        raise ExportError(
            f"trial {trial.number} kept no final weights in {store.folder} (only the best "
            f"finished trials keep theirs); check --checkpoint-dir, or export with retraining"
        )
    return state


def _checked_net(trial: FrozenTrial, spec: ArchSpec, params: int, state: dict) -> torch.nn.Module:
    """The network of `spec` holding the kept weights, after every check passed."""
    stored = state.get("arch")
    if stored is not None and ArchSpec.from_dict(stored) != spec:
        raise ExportError(f"trial {trial.number}'s kept weights were made for another network")
    net = build_model(spec)
    names = {k for k, _ in net.named_parameters()}
    in_state = sum(v.numel() for k, v in state["model"].items() if k in names)
    if in_state != params or count_params(spec) != params:
        raise ExportError(
            f"trial {trial.number}'s kept weights hold {in_state:,} parameters, its spec "
            f"counts {params:,}"
        )
    try:
        net.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        raise ExportError(f"trial {trial.number}'s kept weights do not fit its spec: {e}") from None
    return net


def export_searched(
    study: optuna.Study,
    trial: FrozenTrial,
    out: str | Path,
    *,
    checkpoint_dir: str | Path,
    max_params: int,
    data: DataSource | str,
    subset: int | None = None,
    val_size: int | None = None,
    seed: int = 0,
    identity: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write `trial`'s kept final weights as an export folder, without retraining.

    `data` (a `DataSource` or --data value) is where this machine keeps the study's
    data, which must have `identity` when given; `subset`, `val_size` and `seed` are
    the split the trial trained on (its `RunConfig`'s), which gives the normalisation
    and the test split. Returns the contents written to model.json, in the same format
    as `export_trial`'s.

    Example:
        >>> info = export_searched(study, study.best_trial, "best/", checkpoint_dir=
        ...     "checkpoints", max_params=5_000_000, data="npz:mine.npz")  # doctest: +SKIP
    """
    folder = Path(out)
    if (folder / INFO).exists() and not overwrite:
        raise ExportError(f"{folder} already holds an export; choose another folder")
    spec, recipe, params = _trial_config(trial, max_params, None)
    net = _checked_net(trial, spec, params, kept_weights(study, trial, checkpoint_dir))
    data = parse_data(data)
    dev = resolve_device(device)
    raw = load_source(data)
    facts = data_facts(data, raw.classes, identity)
    split = prepare_data(raw=raw, val_size=val_size, subset=subset, seed=seed, device=dev)
    check_fits(spec, split, trial.number)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_state(net), str(folder / WEIGHTS), metadata={"arch": spec.to_json()})
    model = load_weights(folder / WEIGHTS, spec, params)  # test the file, as export does
    test_loss, test_acc = test_accuracy(model, split, recipe, dev)
    _, val_acc = evaluate(
        model, split.val_x, split.val_y, split.mean, split.std, tta=recipe.tta, device=dev
    )
    run = {
        "seed": seed + root_trial_number(trial),
        "test_acc": test_acc,
        "test_loss": test_loss,
        "val_acc": finite(val_acc),
        "epochs_run": trial.user_attrs.get("epochs_run"),
        "train_seconds": trial.user_attrs.get("train_seconds"),
    }
    where = {"data_dir": data.path if data.kind.startswith("cifar") else None}
    where.update(subset=subset, val_size=val_size, seed=seed)
    where.update(facts)
    info = describe(trial, study.study_name, spec, recipe, max_params, [run], split, where, dev)
    info["weights_from"] = SEARCHED
    info["weights_sha256"] = sha256_of(folder / WEIGHTS)
    info.update(versions=versions(), git_revision=git_revision(), created=now())
    (folder / INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    (folder / CARD).write_text(model_card(info), encoding="utf-8")
    return info
