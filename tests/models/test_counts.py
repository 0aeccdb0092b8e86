from __future__ import annotations

import pytest
import torch
from autosearch.models import (
    PRESETS,
    ArchSpec,
    BudgetError,
    StageSpec,
    build_model,
    check_budget,
    count_convs,
    count_flops,
    count_params,
    get_preset,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXPECTED = {
    "zigzag": 4_891_338,
    "resnet18-1111": 4_903_242,
    "deep-narrow": 4_995_754,
    "resnet18": 11_173_962,
}


def built_params(spec: ArchSpec) -> int:
    return sum(p.numel() for p in build_model(spec).parameters() if p.requires_grad)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_counts_match_the_seed_report(name):
    spec = get_preset(name)
    assert count_params(spec) == EXPECTED[name]
    assert built_params(spec) == EXPECTED[name]


def test_zigzag_layer_inventory():
    spec = PRESETS["zigzag"]
    model = build_model(spec)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == count_convs(spec) == 31
    assert len(bns) == 31 and len(linears) == 1
    assert sum(s.repeats for s in spec.stages) == 12
    assert spec.map_sizes() == [32, 16, 8, 8, 8, 8, 4]
    assert all(c.bias is None for c in convs)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_runs_a_forward_pass(name):
    model = build_model(PRESETS[name]).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_check_budget_names_count_and_limit():
    assert check_budget(PRESETS["zigzag"]) == 4_891_338
    with pytest.raises(BudgetError, match="11,173,962.*5,000,000"):
        check_budget(PRESETS["resnet18"])
    with pytest.raises(BudgetError) as info:
        check_budget(PRESETS["zigzag"], limit=4_000_000)
    assert info.value.params == 4_891_338 and info.value.limit == 4_000_000


stages = st.builds(
    StageSpec,
    width=st.integers(1, 48),
    repeats=st.integers(1, 3),
    stride=st.sampled_from([1, 2]),
    kernel=st.sampled_from([3, 5]),
    skip_kernel=st.sampled_from([1, 3]),
)


@st.composite
def specs(draw) -> ArchSpec:
    stage_list = draw(st.lists(stages, min_size=1, max_size=8))
    # keep strides legal: at most five halvings of 32 pixels
    fixed, halvings = [], 0
    for s in stage_list:
        if s.stride == 2:
            if halvings == 5:
                s = StageSpec(s.width, s.repeats, 1, s.kernel, s.skip_kernel)
            else:
                halvings += 1
        fixed.append(s)
    final = 32 >> halvings
    pool = draw(st.integers(0, final))
    return ArchSpec(
        stages=tuple(fixed),
        stem_width=draw(st.integers(1, 48)),
        stem_kernel=draw(st.sampled_from([3, 5])),
        pool=pool,
        num_classes=draw(st.integers(2, 12)),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_count_equals_built_model(spec):
    assert count_params(spec) == built_params(spec)


@settings(max_examples=25, deadline=None)
@given(specs())
def test_random_specs_give_logits_of_the_right_shape(spec):
    with torch.no_grad():
        out = build_model(spec).eval()(torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, spec.num_classes)


def test_flops_of_a_single_conv_net_by_hand():
    spec = ArchSpec(stages=(StageSpec(4, 1),), stem_width=4, pool=0, num_classes=10)
    # stem 3->4 3x3 on 32x32, two 4->4 3x3 convs on 32x32, linear 4->10
    macs = 3 * 4 * 9 * 1024 + 2 * (4 * 4 * 9 * 1024) + 4 * 10
    assert count_flops(spec) == 2 * macs
