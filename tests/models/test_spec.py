from __future__ import annotations

import pytest
from autosearch.models import PRESETS, ArchSpec, SpecError, StageSpec, make_spec


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    spec = PRESETS[name]
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec
    assert again.to_dict() == spec.to_dict()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: make_spec([0], [1]), r"stages\[0\]\.width .* got 0"),
        (lambda: make_spec([-8, 16], [1, 1]), r"stages\[0\]\.width .* got -8"),
        (lambda: make_spec([], []), "at least one stage"),
        (lambda: ArchSpec(stages=()), "got none"),
        (lambda: make_spec([16], [1], kernels=[4]), r"stages\[0\]\.kernel .* got 4"),
        (lambda: make_spec([16], [0]), r"stages\[0\]\.repeats .* got 0"),
        (lambda: make_spec([16], [1], skip_kernels=[2]), r"skip_kernel .* got 2"),
        (lambda: make_spec([8] * 6, [1] * 6, strides=[2] * 6), r"stages\[5\]\.stride=2"),
        (lambda: make_spec([8] * 9, [1] * 9, strides=[1] * 9), "1 to 8 stages, got 9"),
        (lambda: make_spec([8, 8], [1, 1], stem_width=0), "stem_width .* got 0"),
        (lambda: make_spec([8], [1], stem_kernel=4), "stem_kernel .* got 4"),
        (lambda: make_spec([8, 8], [1, 1], pool=32), "pool=32 is larger than the final 16x16"),
        (lambda: make_spec([8, 8], [1, 1, 1]), "repeats has 3 values for 2 stages"),
        (lambda: make_spec([8], [1], kernels=[True]), "kernel"),
    ],
)
def test_bad_specs_name_the_field_and_value(build, message):
    with pytest.raises(SpecError, match=message):
        build()


def test_from_dict_rejects_unknown_fields():
    data = PRESETS["zigzag"].to_dict()
    data["depth"] = 3
    with pytest.raises(SpecError, match="depth"):
        ArchSpec.from_dict(data)
    data = PRESETS["zigzag"].to_dict()
    data["stages"][2]["groups"] = 2
    with pytest.raises(SpecError, match=r"stages\[2\]: groups"):
        ArchSpec.from_dict(data)


def test_make_spec_defaults_and_broadcasting():
    spec = make_spec([16, 32, 64], [1, 2, 3], kernels=[5], skip_kernels=[3])
    assert [s.stride for s in spec.stages] == [1, 2, 2]
    assert all(s.kernel == 5 and s.skip_kernel == 3 for s in spec.stages)
    assert spec.map_sizes() == [32, 16, 8]
    assert spec.widths == (16, 32, 64) and spec.repeats == (1, 2, 3)


def test_avg_pool_feeds_a_wider_classifier():
    spec = make_spec([8, 8], [1, 1], pool=4)  # 16x16 map, pool 4 -> 4x4 x 8 channels
    assert spec.classifier_features() == 8 * 4 * 4
    assert StageSpec(8).repeats == 1
