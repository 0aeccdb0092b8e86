"""How well mid-run validation accuracy predicts the end: the signal the pruner reads.

    python bench/epoch_signal.py --data-dir DIR [--train 8000] [--val 2000] [--epochs 5]
                                 [--seeds 3] [--recipes 6] [--threads 1]

One small net (widths 16-32-64, one block each, 78,042 parameters) on one stratified
CIFAR-10 subset (`--train` training and `--val` validation images), trained three ways
under the same recipe and seeds:

- before: the trainer as it was, with a last batch of n mod B images stepped at the
  full learning rate right before each validation (this file keeps its own copy of that
  old rule and swaps it in);
- after: the trainer as it is, every step a full batch;
- plain: a textbook PyTorch loop written here (DataLoader with shuffle and drop_last,
  torch's OneCycleLR, the same augmentation, weight decay rule and flip TTA).

The recipe is `fast` at batch 256 for `--epochs` epochs: one-cycle Nesterov SGD, peak lr
0.2; 8,000 images leave a remainder of 64 (as 40,000 do at batch 128 to 512), 10,000
one of 16. The defaults take about 20 CPU-minutes with one thread, 10,000 about 29.
The first table is the validation accuracy after each epoch, per seed and as the mean.
The second trains `--recipes` different
recipes (seed 0) before and after, and gives the Spearman rank correlation between
epoch-2 and final validation accuracy across them: how far an early ranking, which is
what median, SHA and Hyperband pruning act on, agrees with the final one.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import OneCycleLR
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autosearch.models import build_model, count_params, make_spec
from autosearch.search.training import trainer
from autosearch.search.training.data import CifarData, prepare_data
from autosearch.search.training.recipe import AugmentSpec, TrainRecipe, get_recipe

SPEC = make_spec([16, 32, 64], [1, 1, 1], stem_width=16)
CIFAR_TRAIN = 50_000  # images in CIFAR-10's training set, which --subset samples from


# ------------------------------------------------------------------------------- data


def load(data_dir: str | None, n_train: int, n_val: int) -> CifarData:
    """A stratified subset split into exactly n_train training and n_val validation images."""
    total = n_train + n_val
    data = prepare_data(data_dir, subset=total, val_size=round(n_val * CIFAR_TRAIN / total))
    if (len(data.train_y), len(data.val_y)) != (n_train, n_val):
        raise SystemExit(f"split gave {len(data.train_y)} / {len(data.val_y)} images")
    return data


# ----------------------------------------------------------------- the trainer, two ways


def ragged_steps_per_epoch(n: int, batch_size: int) -> tuple[int, int]:
    """The trainer's old rule: n // B full steps, then a last one on the n mod B images
    left (when there are at least 2, for BatchNorm), at whatever lr the schedule says."""
    full, rest = divmod(n, batch_size)
    return full + (rest >= 2), batch_size


@contextlib.contextmanager
def ragged_last_batch() -> Iterator[None]:
    """Run the trainer with its old epoch: the permutation's tail becomes a small step."""
    current = trainer._steps_per_epoch
    trainer._steps_per_epoch = ragged_steps_per_epoch
    try:
        yield
    finally:
        trainer._steps_per_epoch = current


def run_trainer(data: CifarData, recipe: TrainRecipe, seed: int, *, ragged: bool) -> list[float]:
    """Validation accuracy after each epoch of `train`, the old way or the new."""
    torch.manual_seed(seed)  # the same initial weights as the plain loop's
    model = build_model(SPEC)
    with ragged_last_batch() if ragged else contextlib.nullcontext():
        result = trainer.train(model, data, recipe, device="cpu", seed=seed)
    n, batch = len(data.train_y), recipe.batch_size
    seen = result.history[0].images_per_s * result.history[0].seconds
    expected = n if ragged and n % batch >= 2 else n // batch * batch
    if round(seen) != expected:  # the swap no longer reaches the trainer's epoch loop
        raise SystemExit(f"trained {seen:.0f} images per epoch, expected {expected}")
    return [r.val_acc for r in result.history]


# ------------------------------------------------------------------------ a plain loop


def random_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Reflect-pad (B, C, H, W) by `pad` and cut each image back at its own random offset."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g).tolist()
    return torch.stack(
        [padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(zip(dy, dx, strict=True))]
    )


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    mirror = torch.rand(len(x), generator=g) < 0.5
    return torch.where(mirror.view(-1, 1, 1, 1), x.flip(3), x)


@torch.no_grad()
def plain_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, tta: bool) -> float:
    model.eval()
    correct = 0
    for xb, yb in zip(x.split(500), y.split(500), strict=True):
        logits = model(xb)
        if tta:
            logits = (logits + model(xb.flip(3))) / 2
        correct += int((logits.argmax(1) == yb).sum())
    model.train()
    return correct / len(y)


def plain_loop(data: CifarData, recipe: TrainRecipe, seed: int) -> list[float]:
    """The one-cycle Nesterov recipe, crop and flip, as a textbook loop."""
    if (recipe.optimizer, recipe.schedule) != ("nesterov", "onecycle") or recipe.ema:
        raise SystemExit("the plain loop implements one-cycle Nesterov SGD without EMA only")
    pad = {a.name: a.params for a in recipe.augment}["crop"]["pad"]
    torch.manual_seed(seed)
    model = build_model(SPEC).to(memory_format=torch.channels_last)
    decayed = [p for p in model.parameters() if p.ndim >= 2]  # the recipe's rule: no BN, bias
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decayed, "weight_decay": recipe.weight_decay}, {"params": rest}]
    opt = torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=True)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        TensorDataset(data.train_x, data.train_y),
        batch_size=recipe.batch_size,
        shuffle=True,
        drop_last=True,
        generator=g,
    )
    schedule = OneCycleLR(
        opt,
        max_lr=recipe.lr,
        epochs=recipe.epochs,
        steps_per_epoch=len(loader),
        pct_start=recipe.warmup,
        anneal_strategy="linear",
        cycle_momentum=False,  # the recipe keeps momentum fixed
    )
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    val_x = ((data.val_x.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
    accs = []
    for _ in range(recipe.epochs):
        for xb, yb in loader:
            xb = random_flip(random_crop(xb.float() / 255, pad, g), g)
            xb = ((xb - mean) / std).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), yb, label_smoothing=recipe.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        accs.append(plain_accuracy(model, val_x, data.val_y, recipe.tta))
    return accs


# ------------------------------------------------------------------------------ tables


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of their positions."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks."""
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)
    return cov / var**0.5 if var > 0 else float("nan")


def signal_table(curves: dict[str, dict[int, list[float]]], epochs: int) -> None:
    print(f"{'run':<13}" + "".join(f"{f'epoch {e}':>9}" for e in range(1, epochs + 1)))
    for way, by_seed in curves.items():
        for seed, accs in by_seed.items():
            print(f"{f'{way} s{seed}':<13}" + "".join(f"{a:>9.3f}" for a in accs))
    for way, by_seed in curves.items():
        mean = [statistics.fmean(col) for col in zip(*by_seed.values(), strict=True)]
        print(f"{f'{way} mean':<13}" + "".join(f"{a:>9.3f}" for a in mean))


# ----------------------------------------------------------------------------- recipes


def recipes(base: TrainRecipe) -> dict[str, TrainRecipe]:
    """Recipes that end in different places, each leaving a ragged remainder."""
    return {
        "base (nesterov 0.2, B256)": base,
        "nesterov lr 0.05": base.replace(lr=0.05),
        "nesterov lr 0.8": base.replace(lr=0.8),
        "B128 lr 0.1, no smoothing": base.replace(batch_size=128, lr=0.1, label_smoothing=0.0),
        "adamw 2e-3": base.replace(optimizer="adamw", lr=2e-3, weight_decay=5e-2),
        "B512 cosine lr 0.4": base.replace(batch_size=512, lr=0.4, schedule="cosine"),
        "sgd constant 0.05, no aug": base.replace(
            optimizer="sgd", lr=0.05, schedule="constant", augment=()
        ),
        "B384 lr 0.3, crop only": base.replace(
            batch_size=384, lr=0.3, augment=(AugmentSpec("crop"),)
        ),
    }


def recipe_table(
    data: CifarData, chosen: dict[str, TrainRecipe], done: dict[tuple[str, bool], list[float]]
) -> None:
    """Epoch-2 and final accuracy per recipe, before and after; Spearman over recipes."""
    got: dict[bool, list[list[float]]] = {True: [], False: []}
    print(f"{'recipe':<27} {'B mod':>5} {'before e2':>9} {'final':>6} {'after e2':>9} {'final':>6}")
    for name, recipe in chosen.items():
        row = []
        for ragged in (True, False):
            accs = done.get((name, ragged)) or run_trainer(data, recipe, 0, ragged=ragged)
            got[ragged].append(accs)
            row += [accs[1], accs[-1]]
        rest = len(data.train_y) % recipe.batch_size
        print(
            f"{name:<27} {rest:>5} "
            + " ".join(f"{v:>{w}.3f}" for v, w in zip(row, (9, 6, 9, 6), strict=True))
        )
    for ragged, label in ((True, "before"), (False, "after")):
        early = [a[1] for a in got[ragged]]
        final = [a[-1] for a in got[ragged]]
        print(f"Spearman(epoch-2, final) over {len(chosen)} recipes, {label}: "
              f"{spearman(early, final):+.3f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--train", type=int, default=8_000)
    parser.add_argument("--val", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--recipes", type=int, default=6)
    # One thread: on a small shared CPU a second one mostly waits and burns CPU time.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started, cpu = time.perf_counter(), time.process_time()
    data = load(args.data_dir, args.train, args.val)
    base = get_recipe("fast").replace(batch_size=256, epochs=args.epochs)
    print(
        f"{count_params(SPEC):,}-parameter net, {args.train:,} training / {args.val:,} "
        f"validation images, recipe fast at batch {base.batch_size} for {base.epochs} epochs "
        f"({args.train % base.batch_size} images left over per epoch), {args.threads} thread(s)"
    )
    print("\nValidation accuracy after each epoch\n")
    ways: dict[str, Callable[[int], list[float]]] = {
        "before": lambda s: run_trainer(data, base, s, ragged=True),
        "after": lambda s: run_trainer(data, base, s, ragged=False),
        "plain": lambda s: plain_loop(data, base, s),
    }
    curves = {way: {s: run(s) for s in range(args.seeds)} for way, run in ways.items()}
    signal_table(curves, args.epochs)
    e2 = {way: statistics.fmean(a[1] for a in by.values()) for way, by in curves.items()}
    gap = e2["after"] - e2["plain"]
    print(f"\nepoch 2, mean of {args.seeds} seeds: before {e2['before']:.3f}, after "
          f"{e2['after']:.3f}, plain {e2['plain']:.3f}; after - plain {gap:+.3f}")  # fmt: skip
    print("\nEpoch-2 against final validation accuracy across recipes (seed 0)\n")
    chosen = dict(list(recipes(base).items())[: args.recipes])
    first = next(iter(chosen))
    done = {(first, True): curves["before"][0], (first, False): curves["after"][0]}
    recipe_table(data, chosen, done)
    print(f"\n{time.perf_counter() - started:.0f} s wall, {time.process_time() - cpu:.0f} CPU-s")


if __name__ == "__main__":
    main()
