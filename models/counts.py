"""Exact parameter and FLOP counts of an `ArchSpec`, by arithmetic alone.

Nothing here builds a module, so an over-budget spec is rejected before it costs memory
or GPU time. `tests/models` checks that `count_params` equals `sum(p.numel())` of the
built model for many random specs.
"""

from __future__ import annotations

from dataclasses import dataclass

from autosearch.models.spec import ArchSpec

DEFAULT_MAX_PARAMS = 5_000_000


class BudgetError(ValueError):
    """A spec has more trainable parameters than the budget allows."""

    def __init__(self, params: int, limit: int):
        self.params = params
        self.limit = limit
        super().__init__(
            f"{params:,} trainable parameters exceed the limit of {limit:,} "
            f"(over by {params - limit:,})"
        )


def _conv_bn(cin: int, cout: int, k: int) -> int:
    # bias-free conv + BatchNorm (weight and bias are trainable)
    return cin * cout * k * k + 2 * cout


@dataclass(frozen=True)
class _Layer:
    cin: int
    cout: int
    kernel: int
    out_size: int  # output map side, pixels


def _conv_layers(spec: ArchSpec) -> list[_Layer]:
    """Every conv of the network, in order, with its output map size."""
    layers = [_Layer(3, spec.stem_width, spec.stem_kernel, spec.input_size)]
    cin, size = spec.stem_width, spec.input_size
    for stage in spec.stages:
        for b in range(stage.repeats):
            stride = stage.stride if b == 0 else 1
            out = (size - 1) // stride + 1
            layers.append(_Layer(cin, stage.width, stage.kernel, out))
            layers.append(_Layer(stage.width, stage.width, stage.kernel, out))
            if stride != 1 or cin != stage.width:
                layers.append(_Layer(cin, stage.width, stage.skip_kernel, out))
            cin, size = stage.width, out
    return layers


def count_params(spec: ArchSpec) -> int:
    """Trainable parameters of the model `build_model(spec)` would make."""
    # Stage by stage rather than layer by layer: the sampler counts many specs per trial.
    convs = _conv_bn(3, spec.stem_width, spec.stem_kernel)
    cin = spec.stem_width
    for s in spec.stages:
        w, k = s.width, s.kernel
        convs += _conv_bn(cin, w, k) + (2 * s.repeats - 1) * _conv_bn(w, w, k)
        if s.stride != 1 or cin != w:  # the first block's projection shortcut
            convs += _conv_bn(cin, w, s.skip_kernel)
        cin = w
    return convs + spec.classifier_features() * spec.num_classes + spec.num_classes


def count_flops(spec: ArchSpec) -> int:
    """Forward FLOPs per input image: 2 x multiply-accumulates of convs and the linear.

    BatchNorm, ReLU, the residual adds and pooling are left out: together they are under
    1% of the total for every member of the family.
    """
    macs = sum(
        layer.cin * layer.cout * layer.kernel**2 * layer.out_size**2 for layer in _conv_layers(spec)
    )
    macs += spec.classifier_features() * spec.num_classes
    return 2 * macs


def count_convs(spec: ArchSpec) -> int:
    return len(_conv_layers(spec))


def check_budget(spec: ArchSpec, limit: int = DEFAULT_MAX_PARAMS) -> int:
    """Return the parameter count, or raise `BudgetError` naming count and limit."""
    params = count_params(spec)
    if params > limit:
        raise BudgetError(params, limit)
    return params
