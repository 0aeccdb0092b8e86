"""The ResNet family as `nn.Module`s, built from an `ArchSpec`."""

from __future__ import annotations

import torch
from autosearch.models.spec import ArchSpec
from torch import nn


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut, then ReLU.

    The shortcut is the identity unless the block changes stride or width, when it is a
    conv+BN projection.
    """

    def __init__(self, cin: int, cout: int, *, kernel: int, stride: int, skip_kernel: int):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, kernel, stride)
        self.conv2 = _conv_bn(cout, cout, kernel)
        self.shortcut = (
            _conv_bn(cin, cout, skip_kernel, stride)
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv1(x))
        return torch.relu(self.conv2(out) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        self.stem = nn.Sequential(_conv_bn(3, spec.stem_width, spec.stem_kernel), nn.ReLU())
        blocks, cin = [], spec.stem_width
        for stage in spec.stages:
            for b in range(stage.repeats):
                blocks.append(
                    BasicBlock(
                        cin,
                        stage.width,
                        kernel=stage.kernel,
                        stride=stage.stride if b == 0 else 1,
                        skip_kernel=stage.skip_kernel,
                    )
                )
                cin = stage.width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1) if spec.pool == 0 else nn.AvgPool2d(spec.pool)
        self.fc = nn.Linear(spec.classifier_features(), spec.num_classes)

    def forward(
        self, x: torch.Tensor
    ) -> torch.Tensor:  # (B, 3, S, S) -> (B, classes), S = spec.input_size
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def build_model(spec: ArchSpec) -> ResNet:
    """A freshly initialised model for `spec`, on the CPU."""
    return ResNet(spec)
