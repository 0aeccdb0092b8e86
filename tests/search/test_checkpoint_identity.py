"""Checkpoints belong to one trial of one study of one storage.

Two studies of the same name (in two storages, or one deleted and made again) share a
checkpoint folder root; neither reads nor prunes the other's files, and a trial never
resumes from a checkpoint of another architecture or recipe.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import optuna
import torch
from autosearch.models import make_spec
from autosearch.search.tuning.budget import reserve_trials
from autosearch.search.tuning.objective import Objective, RunConfig
from autosearch.search.tuning.worker import run_worker
from autosearch.storage.checkpoints import CheckpointStore

from tests.conftest import tiny_data
from tests.search.test_objective import make_study, small_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.pt"))
    }


def tiny_space(epochs: int):
    # One or two narrow stages: each trial trains in a blink on 8x8 images.
    space = small_space(epochs=epochs)
    arch = dataclasses.replace(
        space.arch,
        stages=(1, 2),
        widths=(8, 16),
        repeats=(1, 1),
        stem_widths=(8,),
        downsamples=(0, 1),
    )
    return dataclasses.replace(space, arch=arch)


def run(study: optuna.Study, trials: int, root: Path, epochs: int = 1) -> None:
    config = RunConfig(space=tiny_space(epochs), device="cpu", checkpoint_dir=str(root))
    reserve_trials(study, trials)
    run_worker(study, Objective(config, data=tiny_data()))


def test_a_study_of_the_same_name_never_touches_the_others_files(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    first = make_study(tiny_space(1))  # "t", in its own storage
    run(first, 4, root)
    kept = digests(root)
    assert len(kept) == 3  # the final weights of the 3 best trials
    # A study dies mid-trial: its epoch files stay for the retry to resume from.
    (folder,) = {p.parent.parent for p in root.rglob("final.pt")}
    CheckpointStore(root, folder.name, 0).save(
        1, {"model": {"w": torch.zeros(2)}, "arch": {}, "recipe": {}}
    )
    kept = digests(root)

    second = make_study(tiny_space(1), seed=1)  # "t" again, another storage
    run(second, 5, root)
    after = digests(root)
    assert {k: after.get(k) for k in kept} == kept  # every file of the first, unchanged
    assert all("resumed_from_epoch" not in t.user_attrs for t in second.trials)
    assert len(after) == len(kept) + 3


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    from autosearch.search.tuning.study import UID_ATTR
    from autosearch.storage.checkpoints import study_folder

    root = tmp_path / "ck"
    study = make_study(tiny_space(2))
    other = make_spec([16, 16], [1, 1], stem_width=8)
    store = CheckpointStore(root, study_folder("t", study.user_attrs[UID_ATTR]), 0)
    store.save(1, {"model": {"w": torch.zeros(2)}, "arch": other.to_dict(), "recipe": {}})
    run(study, 1, root, epochs=2)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert "resumed_from_epoch" not in trial.user_attrs
    assert any("made for another arch" in s for s in trial.user_attrs["skipped_checkpoints"])
    assert sorted(trial.intermediate_values) == [1, 2]
