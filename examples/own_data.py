"""Search ResNets for your own images from Python, inside your own Optuna study.

The images here are synthetic (four classes, each a colour plus noise), so the script
runs in a minute on a CPU; put your own arrays in their place. It shows:

1. your arrays as an npz with x_train, y_train, x_test, y_test (uint8 NHWC images);
2. `autosearch.Objective(autosearch.RunConfig(...))` in your own
   `optuna.create_study()`, with your own callbacks;
3. the best trial, and its kept weights exported without retraining;
4. `load_best_model`, which takes uint8 (or [0, 1]) images and normalises them itself.

Run:  python examples/own_data.py [--trials 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import autosearch
import numpy as np
import optuna
import torch

SPACE = """
name = "small"
extends = "zigzag"
[arch]
stages = [2, 3]
widths = [8, 32]
repeats = [1, 1]
downsamples = [1, 2]
stem_widths = [16]
[recipe]
optimizers = ["nesterov"]
batch_sizes = [64]
epochs = 2
schedules = ["onecycle"]
augments = ["crop", "flip"]
tta = false
"""


def my_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stand-ins for your data: (n, 32, 32, 3) uint8 images and (n,) labels 0-3."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 4)
    palette = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]])
    images = palette[labels][:, None, None, :] + rng.normal(0, 40, size=(n, 32, 32, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def main(trials: int, work: Path) -> float:
    x_train, y_train = my_images(240, seed=0)
    x_test, y_test = my_images(80, seed=1)
    data = work / "mine.npz"
    np.savez(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    (work / "small.toml").write_text(SPACE)

    config = autosearch.RunConfig(
        space=autosearch.load_space(work / "small.toml"),
        max_params=100_000,  # your budget; the classifier's size follows your classes
        device="cpu",
        data=f"npz:{data}",
        val_size=48,  # held out of x_train; trials are scored on it
        checkpoint_dir=str(work / "checkpoints"),
    )

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        print(f"trial {trial.number}: {trial.user_attrs.get('stopped')}, value {trial.value}")

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the callback says enough
    study = optuna.create_study(
        study_name="mine", storage=f"sqlite:///{work / 'mine.db'}", direction="maximize"
    )
    study.optimize(autosearch.Objective(config), n_trials=trials, callbacks=[report])

    # Infeasible trials (over the budget) are COMPLETE with value 0 and a violated
    # constraint; best_trial skips them.
    best = autosearch.best_trial(study)
    print(
        f"best: trial {best.number}, val acc {best.value:.3f}, {best.user_attrs['params']:,} params"
    )

    # The best finished trials keep their final weights: write them as an export
    # folder without retraining (or retrain with autosearch.export_trial).
    autosearch.export_searched(
        study,
        best,
        work / "best",
        checkpoint_dir=config.checkpoint_dir,
        max_params=config.max_params,
        data=config.data,
        val_size=config.val_size,
        seed=config.seed,
        device="cpu",
        overwrite=True,
    )
    model = autosearch.load_best_model(work / "best")
    images = torch.from_numpy(x_test).permute(0, 3, 1, 2)  # NHWC -> (B, 3, 32, 32) uint8
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == torch.from_numpy(y_test)).float().mean().item()
    print(f"test accuracy of the loaded model: {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: a temp dir)")
    args = parser.parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        main(args.trials, args.workdir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(args.trials, Path(tmp))
