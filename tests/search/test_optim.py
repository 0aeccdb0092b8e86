"""Optimizers and lr schedules: every kind, on a tiny model, without training."""

from __future__ import annotations

import importlib
import io
import math

import pytest
import torch
from autosearch.search.training.optimizers import (
    WeightEMA,
    device_options,
    make_optimizer,
    param_groups,
)
from autosearch.search.training.recipe import OPTIMIZERS, SCHEDULES, TrainRecipe
from autosearch.search.training.schedules import ONECYCLE_START, make_schedule
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 2)
    )


def lrs(recipe: TrainRecipe, steps: int, steps_per_epoch: int = 10) -> list[float]:
    """The lr used by each of `steps` optimizer steps."""
    opt = make_optimizer(tiny_model(), recipe)
    schedule = make_schedule(opt, recipe, steps_per_epoch)
    out = []
    for _ in range(steps):
        out.append(schedule.lr)
        schedule.step_batch()
    return out


# ------------------------------------------------------------------------ optimizers


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_changes_the_weights(name):
    model = tiny_model()
    recipe = TrainRecipe(optimizer=name, lr=0.01, weight_decay=1e-3)
    opt = make_optimizer(model, recipe)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(4, 3, 6, 6)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 0, 1])).backward()
    opt.step()
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert all(changed), f"{name} left some parameters unchanged"
    assert all(g["lr"] == 0.01 for g in opt.param_groups)


def test_only_conv_and_linear_weights_are_decayed():
    model = tiny_model()
    decayed, plain = param_groups(model, 5e-4)
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert {p.ndim for p in decayed["params"]} == {2, 4}
    # BN weight, BN bias, linear bias
    assert len(plain["params"]) == 3 and all(p.ndim == 1 for p in plain["params"])


def test_momentum_is_beta1_of_the_adam_family_and_nesterov_needs_none():
    opt = make_optimizer(tiny_model(), TrainRecipe(optimizer="adamw", momentum=0.8))
    assert opt.param_groups[0]["betas"] == (0.8, 0.999)
    opt = make_optimizer(tiny_model(), TrainRecipe(optimizer="nesterov", momentum=0.0))
    assert opt.param_groups[0]["nesterov"] is False  # plain SGD instead of a torch error
    opt = make_optimizer(tiny_model(), TrainRecipe(optimizer="nesterov", momentum=0.9))
    assert opt.param_groups[0]["nesterov"] is True


class ScalarReads(TorchDispatchMode):
    """Counts `aten::_local_scalar_dense`, the op behind every `.item()`, `float(t)` and
    `bool(t)` of a tensor: on CUDA each one waits for the GPU (a host sync)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def scalar_reads_per_step(opt: torch.optim.Optimizer, model: nn.Module, steps: int) -> list[int]:
    """Scalar reads inside each of `steps` optimizer steps (the first one builds the state)."""
    device = next(model.parameters()).device
    x, y = torch.randn(4, 3, 6, 6, device=device), torch.tensor([0, 1, 0, 1], device=device)
    counts = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        with ScalarReads() as reads:
            opt.step()
        counts.append(reads.calls)
    return counts


@pytest.fixture
def cuda_path_device(monkeypatch) -> torch.device:
    """Where to run the CUDA implementation: the GPU if there is one, else the CPU.

    Torch runs fused and foreach kernels on CPU tensors, but refuses `capturable` for
    parameters off an accelerator by an up-front device check. On the CPU that check is
    widened to admit "cpu"; the update arithmetic that runs is torch's, unchanged.
    """
    if torch.cuda.is_available():
        return torch.device("cuda")
    for module in map(importlib.import_module, ("torch.optim.asgd", "torch.optim.adamax")):
        supported = module._get_capturable_supported_devices
        monkeypatch.setattr(
            module,
            "_get_capturable_supported_devices",
            lambda supports_xla=True, supported=supported: [*supported(supports_xla), "cpu"],
        )
    return torch.device("cpu")


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_cuda_optimizers_never_read_a_scalar_back(name, cuda_path_device):
    model = tiny_model().to(cuda_path_device)
    recipe = TrainRecipe(optimizer=name, lr=0.01, weight_decay=1e-3)
    opt = make_optimizer(model, recipe, device_type="cuda")
    for flag, value in device_options(name, "cuda").items():
        assert opt.defaults[flag] is value  # built as on CUDA, not with CPU defaults
    assert scalar_reads_per_step(opt, model, steps=3) == [0, 0, 0]


def test_the_scalar_counter_sees_the_syncs_of_foreach_asgd():
    # ASGD as it was built for CUDA before (foreach, not capturable): one read per tensor.
    model = tiny_model()
    opt = torch.optim.ASGD(model.parameters(), lr=0.01, foreach=True)
    n_tensors = len(list(model.parameters()))
    assert scalar_reads_per_step(opt, model, steps=2) == [n_tensors, n_tensors]


def test_cpu_keeps_the_torch_defaults():
    assert all(device_options(name, "cpu") == {} for name in OPTIMIZERS)
    assert make_optimizer(tiny_model(), TrainRecipe(optimizer="asgd")).defaults["foreach"] is None


# ------------------------------------------------------------------------- schedules


def test_constant():
    assert set(lrs(TrainRecipe(schedule="constant", lr=0.3), 25)) == {0.3}


def test_step_decays_every_step_epochs():
    recipe = TrainRecipe(schedule="step", lr=1.0, step_epochs=2, gamma=0.5, epochs=6)
    got = lrs(recipe, 60, steps_per_epoch=10)
    assert got[0] == got[19] == 1.0
    assert got[20] == got[39] == 0.5
    assert got[40] == 0.25


def test_cosine_falls_from_lr_to_the_floor():
    recipe = TrainRecipe(schedule="cosine", lr=1.0, min_lr_ratio=0.1, epochs=3)
    got = lrs(recipe, 31, steps_per_epoch=10)
    assert got[0] == 1.0
    assert got[30] == pytest.approx(0.1)
    assert got[15] == pytest.approx(0.55)
    assert all(a >= b for a, b in zip(got, got[1:], strict=False))


def test_onecycle_rises_to_lr_then_falls_to_about_zero():
    recipe = TrainRecipe(schedule="onecycle", lr=0.4, warmup=0.25, epochs=4)
    got = lrs(recipe, 40, steps_per_epoch=10)
    peak = got.index(max(got))
    assert max(got) == pytest.approx(0.4) and peak == 10
    assert got[0] == pytest.approx(0.4 * ONECYCLE_START)
    assert all(a < b for a, b in zip(got[:peak], got[1 : peak + 1], strict=True))
    assert all(a > b for a, b in zip(got[peak:], got[peak + 1 :], strict=False))
    assert got[-1] == pytest.approx(0.4 / 30)  # one step from the end of the run


def test_onecycle_without_warmup_starts_at_the_peak():
    got = lrs(TrainRecipe(schedule="onecycle", lr=0.4, warmup=0.0, epochs=1), 10)
    assert got[0] == 0.4 and got[-1] == pytest.approx(0.04)


def test_cosine_restarts_restart_and_grow():
    recipe = TrainRecipe(
        schedule="cosine_restarts", lr=1.0, restart_epochs=1, restart_mult=2, epochs=7
    )
    got = lrs(recipe, 70, steps_per_epoch=10)
    assert [i for i, v in enumerate(got) if v == 1.0] == [0, 10, 30]  # cycles of 10, 20, 40
    assert got[9] < 0.05 and got[29] < 0.05
    assert got[20] == pytest.approx(0.5)  # halfway through the 20-step cycle


def test_cyclic_oscillates_between_base_and_lr():
    recipe = TrainRecipe(schedule="cyclic", lr=1.0, cyclic_base=0.2, cyclic_epochs=0.5)
    got = lrs(recipe, 21, steps_per_epoch=10)  # 5 steps per half cycle
    assert got[0] == pytest.approx(0.2) and got[5] == pytest.approx(1.0)
    assert got[10] == pytest.approx(0.2) and got[15] == pytest.approx(1.0)
    assert got[20] == pytest.approx(0.2)
    assert min(got) == pytest.approx(0.2) and max(got) == pytest.approx(1.0)


def plateau_run(recipe: TrainRecipe, values: list[float]) -> list[float]:
    """lr after each epoch, feeding `values` as the watched metric."""
    opt = make_optimizer(tiny_model(), recipe)
    schedule = make_schedule(opt, recipe, steps_per_epoch=3)
    assert schedule.needs_metric
    out = []
    for v in values:
        for _ in range(3):
            schedule.step_batch()  # a no-op within an epoch
        if recipe.plateau_mode == "min":
            schedule.step_epoch(v, math.nan)
        else:
            schedule.step_epoch(math.nan, v)
        out.append(schedule.lr)
    return out


def test_plateau_reduces_after_patience():
    recipe = TrainRecipe(schedule="plateau", lr=1.0, plateau_factor=0.5, plateau_patience=2)
    got = plateau_run(recipe, [3.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0])
    assert got == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5])
    # mode max watches accuracy: rising accuracy never reduces
    recipe = recipe.replace(plateau_mode="max")
    assert plateau_run(recipe, [0.1, 0.2, 0.3, 0.4, 0.5]) == [1.0] * 5
    assert plateau_run(recipe, [0.5, 0.4, 0.4, 0.4])[-1] == 0.5


def test_zigzag_plateau_goes_down_and_back_up_but_never_above_lr():
    recipe = TrainRecipe(schedule="zigzag_plateau", lr=1.0, plateau_factor=0.5, plateau_patience=1)
    losses = [3.0, 2.0, 2.5, 2.5, 2.5, 2.5, 1.9, 1.8, 1.7, 1.6]
    got = plateau_run(recipe, losses)
    assert got == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.5, 1.0, 1.0, 1.0])
    assert max(got) == 1.0
    # mode max on accuracy, with a NaN counted as no improvement
    recipe = recipe.replace(plateau_mode="max")
    got = plateau_run(recipe, [0.5, math.nan, 0.4, 0.6])
    assert got == pytest.approx([1.0, 1.0, 0.5, 1.0])


@pytest.mark.parametrize("kind", SCHEDULES)
def test_schedule_state_round_trips(kind):
    recipe = TrainRecipe(
        schedule=kind, lr=1.0, epochs=4, step_epochs=1, restart_epochs=1, cyclic_epochs=0.7,
        plateau_patience=0, plateau_factor=0.5,
    )  # fmt: skip
    opt = make_optimizer(tiny_model(), recipe)
    first = make_schedule(opt, recipe, steps_per_epoch=5)
    for loss in (2.0, 2.5):
        for _ in range(5):
            first.step_batch()
        first.step_epoch(loss, 0.5)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    opt2 = make_optimizer(tiny_model(), recipe)
    second = make_schedule(opt2, recipe, steps_per_epoch=5)
    second.load_state_dict(state)
    assert second.lr == first.lr and opt2.param_groups[-1]["lr"] == first.lr
    for loss in (1.0, 3.0, 3.0):
        for _ in range(5):
            first.step_batch()
            second.step_batch()
            assert second.lr == first.lr
        first.step_epoch(loss, 0.5)
        second.step_epoch(loss, 0.5)
        assert second.lr == first.lr


def test_state_of_another_kind_is_refused():
    recipe = TrainRecipe(schedule="cosine")
    schedule = make_schedule(make_optimizer(tiny_model(), recipe), recipe, 5)
    other = make_schedule(make_optimizer(tiny_model(), recipe), recipe.replace(schedule="step"), 5)
    with pytest.raises(ValueError, match="'step'"):
        schedule.load_state_dict(other.state_dict())


# ----------------------------------------------------------------------- weight EMA


def test_weight_ema_follows_with_a_warmed_up_decay():
    model = tiny_model()
    ema = WeightEMA(model, decay=0.99)
    start = model[3].bias.detach().clone()
    with torch.no_grad():
        model[3].bias.add_(1.0)
        model[1].running_mean.add_(2.0)
        model[1].num_batches_tracked.add_(5)
    ema.update()  # first step: decay min(0.99, 2 / 11)
    w = 1 - 2 / 11
    averaged = ema.averaged()
    assert torch.allclose(averaged[3].bias, start + w)
    assert torch.allclose(averaged[1].running_mean, torch.full((4,), 2.0 * w))
    assert averaged[1].num_batches_tracked.item() == 5  # counters are copied, not averaged
    assert not averaged.training and not any(p.requires_grad for p in averaged.parameters())

    other = WeightEMA(tiny_model(), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.steps == 1 and torch.equal(other.module[3].bias, averaged[3].bias)
