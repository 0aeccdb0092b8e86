"""The trainer on tiny synthetic data and tiny models, on the CPU.

Images are 8x8 rather than 32x32 in most tests: the models pool globally, so the loop
is the same, and each test runs many times faster.
"""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from autosearch.models import build_model, make_spec
from autosearch.search.training.data import CifarData
from autosearch.search.training.device import memory_format, resolve_device
from autosearch.search.training.evaluation import evaluate
from autosearch.search.training.optimizers import make_optimizer
from autosearch.search.training.recipe import AugmentSpec, TrainRecipe
from autosearch.search.training.schedules import make_schedule
from autosearch.search.training.trainer import EpochReport, train

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These tensors are tiny: a second intra-op thread only adds synchronisation, and on
    # a busy 2-core machine it makes each test some 20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_data(n_train: int = 96, n_val: int = 32, side: int = 8, seed: int = 0) -> CifarData:
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
        return x, torch.randint(0, 10, (n,), generator=g)

    (tx, ty), (vx, vy), (sx, sy) = split(n_train), split(n_val), split(n_val)
    return CifarData(tx, ty, vx, vy, sx, sy, mean=(0.5, 0.5, 0.5), std=(0.29, 0.29, 0.29))


def colour_data(n_train: int = 128, n_val: int = 64, classes: int = 4) -> CifarData:
    """Each class is a distinct mean colour plus strong pixel noise: easy, not trivial."""
    g = torch.Generator().manual_seed(1)
    colours = torch.tensor([[0.2, 0.2, 0.8], [0.8, 0.2, 0.2], [0.2, 0.8, 0.2], [0.8, 0.8, 0.2]])

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % classes
        x = colours[y].view(n, 3, 1, 1) + 0.25 * torch.randn(n, 3, 8, 8, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

    (tx, ty), (vx, vy) = split(n_train), split(n_val)
    return CifarData(tx, ty, vx, vy, vx, vy, mean=(0.5,) * 3, std=(0.3,) * 3)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(make_spec([8, 16], [1, 1], stem_width=8))


QUICK = TrainRecipe(batch_size=32, epochs=2, lr=0.05, tta=False)


def test_history_has_one_report_per_epoch():
    data = random_data()
    result = train(tiny_model(), data, QUICK.replace(epochs=3, batch_size=48), device="cpu")
    assert result.status == "finished" and result.epochs_run == 3
    assert [r.epoch for r in result.history] == [1, 2, 3]
    for r in result.history:
        assert 0 <= r.train_acc <= 1 and 0 <= r.val_acc <= 1
        assert math.isfinite(r.train_loss) and math.isfinite(r.val_loss)
        assert r.images_per_s > 0 and r.seconds > 0
    assert result.images_per_s > 0 and result.wall_time == pytest.approx(
        sum(r.seconds for r in result.history)
    )
    assert result.final_val_acc == result.history[-1].val_acc
    assert result.best_val_acc == max(r.val_acc for r in result.history)
    assert result.device == "cpu"
    json.dumps(result.to_dict())  # plain data all the way down


def numbered_data(n_train: int) -> CifarData:
    """Training image i is filled with the value i (n_train <= 256), so a batch names its
    images; mean 0 and std 1/255 make the normalised pixel value that number again."""
    x = torch.arange(n_train, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 8, 8)
    y = torch.arange(n_train) % 10
    val = random_data(n_train=2, n_val=16)
    return CifarData(
        x.contiguous(), y, val.val_x, val.val_y, val.val_x, val.val_y, (0.0,) * 3, (1 / 255,) * 3
    )


@pytest.mark.parametrize(
    ("n_train", "batch", "steps"),
    [(70, 32, 2), (64, 32, 2), (100, 16, 6), (20, 32, 1)],  # the last: one step of all 20
)
def test_every_step_trains_a_full_batch(n_train, batch, steps):
    epochs = 8
    model = tiny_model()
    batches: list[list[int]] = []  # image numbers of each training step

    def record(module, inputs):
        if module.training:
            batches.append(inputs[0][:, 0, 0, 0].round().long().tolist())

    model.register_forward_pre_hook(record)
    recipe = QUICK.replace(batch_size=batch, epochs=epochs, augment=())
    result = train(model, numbered_data(n_train), recipe, device="cpu")

    assert result.status == "finished"
    full = min(batch, n_train)  # a split smaller than the batch trains all of itself at once
    assert steps == n_train // full
    assert len(batches) == epochs * steps
    assert all(len(b) == full for b in batches)
    for epoch in range(epochs):
        seen = [i for b in batches[epoch * steps : (epoch + 1) * steps] for i in b]
        assert len(set(seen)) == len(seen)  # a permutation: no image twice in an epoch
    # A fresh permutation each epoch: over 8 epochs every image gets its turn.
    assert {i for b in batches for i in b} == set(range(n_train))
    for r in result.history:
        assert r.images_per_s * r.seconds == pytest.approx(steps * full)


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step"])
def test_step_schedules_end_where_the_run_ends(schedule):
    # 70 images at batch 32: 2 steps per epoch, so 3 epochs are 6 steps, not 9.
    recipe = QUICK.replace(
        epochs=3, schedule=schedule, lr=0.1, min_lr_ratio=0.1, step_epochs=1, gamma=0.5
    )
    states = []
    result = train(
        tiny_model(), random_data(n_train=70), recipe, device="cpu", on_checkpoint=states.append
    )
    assert result.status == "finished"
    assert states[-1]["schedule"]["steps"] == 3 * (70 // 32)
    after = make_schedule(make_optimizer(tiny_model(), recipe), recipe, steps_per_epoch=70 // 32)
    after.load_state_dict(states[-1]["schedule"])
    end = {"onecycle": 0.0, "cosine": 0.1 * 0.1, "step": 0.1 * 0.5**3}[schedule]
    assert after.lr == pytest.approx(end)


def test_full_size_images_and_the_remainder_left_out():
    # 65 images at batch 32: two full batches; the 65th image sits the epoch out.
    data = random_data(n_train=65, n_val=16, side=32)
    result = train(tiny_model(), data, QUICK.replace(epochs=1), device="cpu")
    assert result.status == "finished"
    assert result.history[0].images_per_s == pytest.approx(64 / result.history[0].seconds)


def test_callback_returning_true_stops():
    seen: list[EpochReport] = []

    def callback(report: EpochReport) -> bool:
        seen.append(report)
        return report.epoch == 2

    result = train(
        tiny_model(), random_data(), QUICK.replace(epochs=5), device=CPU, callback=callback
    )
    assert result.status == "stopped" and result.epochs_run == 2
    assert [r.epoch for r in seen] == [1, 2]
    assert "epoch 2" in result.message


def test_nan_ends_with_diverged():
    model = tiny_model()
    model.fc.register_forward_hook(lambda module, inputs, out: out * math.nan)
    checkpoints = []
    result = train(
        model,
        random_data(),
        QUICK.replace(epochs=4),
        device="cpu",
        on_checkpoint=checkpoints.append,
    )
    assert result.status == "diverged" and result.epochs_run == 1
    assert "diverged in epoch 1" in result.message and "nan" in result.message
    assert checkpoints == []  # NaN weights are not worth keeping


def test_huge_learning_rate_diverges():
    recipe = QUICK.replace(optimizer="sgd", lr=1e30, epochs=3, schedule="constant")
    result = train(tiny_model(), random_data(), recipe, device="cpu")
    assert result.status == "diverged"


def test_ema_and_tta_paths_run():
    recipe = QUICK.replace(ema=0.9, tta=True, epochs=2)
    states = []
    result = train(tiny_model(), random_data(), recipe, device="cpu", on_checkpoint=states.append)
    assert result.status == "finished"
    assert all(0 <= r.val_acc <= 1 for r in result.history)
    ema = states[-1]["ema"]["module"]
    live = states[-1]["model"]
    assert ema.keys() == live.keys()
    assert not torch.equal(ema["fc.weight"], live["fc.weight"])  # a real average
    assert torch.equal(ema["stem.0.1.num_batches_tracked"], live["stem.0.1.num_batches_tracked"])


def test_evaluate_tta_averages_image_and_mirror_logits():
    model = tiny_model().eval()
    data = random_data(n_val=20)
    mean, std = data.mean, data.std
    loss, acc = evaluate(model, data.val_x, data.val_y, mean, std, tta=True, batch_size=8)
    x = (data.val_x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        logits = (model(x) + model(x.flip(3))) / 2
    assert loss == pytest.approx(
        torch.nn.functional.cross_entropy(logits, data.val_y).item(), rel=1e-5
    )
    assert acc == pytest.approx((logits.argmax(1) == data.val_y).float().mean().item())


def test_evaluate_keeps_the_mode_and_handles_an_empty_set():
    model = tiny_model().train()
    empty = torch.zeros(0, 3, 8, 8, dtype=torch.uint8)
    loss, acc = evaluate(model, empty, torch.zeros(0, dtype=torch.int64), (0.5,) * 3, (0.3,) * 3)
    assert math.isnan(loss) and math.isnan(acc)
    data = random_data()
    evaluate(model, data.val_x, data.val_y, data.mean, data.std)
    assert model.training


def test_resume_continues_exactly_and_the_state_loads_weights_only():
    # Augmentations, EMA and a per-step schedule all draw on the resumed state.
    recipe = QUICK.replace(
        epochs=2,
        ema=0.8,
        tta=True,
        schedule="onecycle",
        augment=(AugmentSpec("crop", {"pad": 2}), AugmentSpec("flip")),
    )
    data = random_data(n_train=70)  # 6 images left out of each epoch, a different 6 each time
    straight_model = tiny_model()
    straight = train(straight_model, data, recipe, device="cpu", seed=3)

    saved = []

    def save(state):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        saved.append(buffer.getvalue())

    # Same recipe (a shorter one would change the schedule), cut short by the callback.
    first = train(
        tiny_model(),
        data,
        recipe,
        device="cpu",
        seed=3,
        on_checkpoint=save,
        callback=lambda report: True,
    )
    assert first.status == "stopped" and first.epochs_run == 1 and len(saved) == 1
    state = torch.load(io.BytesIO(saved[0]), weights_only=True)
    assert state["epoch"] == 1 and state["recipe"]["ema"] == 0.8

    resumed_model = tiny_model(seed=99)  # different init: everything must come from state
    resumed = train(resumed_model, data, recipe, device="cpu", seed=3, resume=state)
    assert resumed.epochs_run == 2 and [r.epoch for r in resumed.history] == [1, 2]
    for a, b in zip(straight.history, resumed.history, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-6, abs=1e-9), key
    for (name, a), b in zip(
        straight_model.state_dict().items(), resumed_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed.best_val_acc == straight.best_val_acc


@pytest.mark.parametrize("schedule", ["zigzag_plateau", "plateau", "cyclic"])
def test_other_schedules_and_optimizers_train(schedule):
    recipe = QUICK.replace(schedule=schedule, optimizer="adamw", lr=1e-3, plateau_patience=0)
    result = train(tiny_model(), random_data(), recipe, device="cpu")
    assert result.status == "finished" and result.epochs_run == 2


def test_it_learns_a_separable_problem():
    recipe = TrainRecipe(
        optimizer="adam",
        lr=0.01,
        momentum=0.9,
        weight_decay=0.0,
        batch_size=32,
        epochs=4,
        schedule="constant",
        augment=(AugmentSpec("flip"),),
        tta=False,
    )
    result = train(tiny_model(), colour_data(), recipe, device="cpu")
    assert result.final_val_acc >= 0.9, result.history


def test_too_few_training_images_is_an_error():
    with pytest.raises(ValueError, match="1 image"):
        train(tiny_model(), random_data(n_train=1), QUICK, device="cpu")


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'tpu0'"):
        resolve_device("tpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda'.*not available"):
            resolve_device("cuda")


def test_training_and_validation_use_the_devices_memory_layout():
    layout = memory_format(CPU)
    model = tiny_model()
    modes: list[tuple[bool, bool]] = []  # (training, input in layout) of each forward
    model.register_forward_pre_hook(
        lambda module, inputs: modes.append(
            (module.training, inputs[0].is_contiguous(memory_format=layout))
        )
    )
    train(model, random_data(side=32), QUICK.replace(epochs=1), device="cpu")
    assert {training for training, _ in modes} == {True, False}
    assert all(in_layout for _, in_layout in modes)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=layout)
