"""CIFAR-sized (32x32 input) architectures of the zoo.

- :class:`MobileNetV1` - Howard et al. 2017 with a stride-1 stem so that a 32x32 image ends
  at 2x2 before global pooling (the common CIFAR adaptation).
- :class:`MobileNetV2` - Sandler et al. 2018 with stride 1 in the stem and the first
  stride-2 stage, as usual for CIFAR; residual only where shapes match (as in the paper).
- :class:`CifarResNet` - He et al. 2016 CIFAR design (3 stages of ``n`` basic blocks,
  16/32/64 channels; depth = 6n + 2). Shortcuts that change shape are 1x1 conv + BN
  (option B), so that every channel coupling is visible to a dependency graph.
"""

from __future__ import annotations

import torch
from torch import nn

# (out_channels, stride) of the 13 depthwise-separable blocks of MobileNet-V1.
MOBILENET_V1_CFG: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def _conv_bn_relu(
    c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1, relu6: bool = False
) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True) if relu6 else nn.ReLU(inplace=True),
    ]


class MobileNetV1(nn.Module):
    """MobileNet-V1.

    Args:
        num_classes: classifier outputs.
        width: width multiplier (1.0 = 32..1024 channels).
        stem_stride: stride of the first 3x3 conv: 1 for 32x32 inputs, 2 for 224x224.
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, stem_stride: int = 1) -> None:
        super().__init__()
        c = max(8, int(32 * width))
        layers: list[nn.Module] = _conv_bn_relu(3, c, 3, stem_stride)
        for out, stride in MOBILENET_V1_CFG:
            out = max(8, int(out * width))
            layers += _conv_bn_relu(c, c, 3, stride, groups=c)  # depthwise
            layers += _conv_bn_relu(c, out, 1, 1)  # pointwise
            c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    """MobileNet-V2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += _conv_bn_relu(c_in, hidden, 1, 1, relu6=True)
        layers += _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden, relu6=True)
        layers += [nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


# (expansion, out_channels, blocks, stride); CIFAR variant: stride 1 in the second stage.
MOBILENET_V2_CIFAR_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """MobileNet-V2 for 32x32 inputs (stride-1 stem, 4x4 before the last 1x1 conv)."""

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        c = int(32 * width)
        layers: list[nn.Module] = _conv_bn_relu(3, c, 3, 1, relu6=True)
        for expand, out, blocks, stride in MOBILENET_V2_CIFAR_CFG:
            out = int(out * width)
            for i in range(blocks):
                layers.append(InvertedResidual(c, out, stride if i == 0 else 1, expand))
                c = out
        last = int(1280 * max(1.0, width))
        layers += _conv_bn_relu(c, last, 1, 1, relu6=True)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; identity or 1x1-conv shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR (He et al. 2016, section 4.2)."""

    def __init__(self, depth: int = 20, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        blocks: list[nn.Module] = []
        c = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(c, width, stride))
                c = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.classifier(torch.flatten(self.pool(out), 1))
