"""The zoo's small architectures, sized for 3x64x64 Shapes images and a 2-core CPU.

``ShapesVGG``: conv-relu-maxpool blocks and a VGG-style head (flatten, linear, relu, dropout,
linear). ``ShapesResNet``: a stem and three residual blocks with batch-norm in which one
``nn.ReLU(inplace=True)`` module is used twice, exactly as torchvision's ResNet does; those
are the cases that break naive hook-based attribution.
"""

from __future__ import annotations

import torch
from torch import nn


class ShapesVGG(nn.Module):
    """``features`` (3 conv-relu-maxpool blocks, 64 -> 8 px) then ``classifier`` (MLP head).

    Example::

        logits = ShapesVGG()(torch.zeros(1, 3, 64, 64))  # -> [1, 6]
    """

    def __init__(self, num_classes: int = 6, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * 8 * 8, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 conv-bn pairs plus the identity (or a 1x1 conv-bn projection); ``self.relu`` is
    one in-place ReLU module called twice, as in torchvision."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ShapesResNet(nn.Module):
    """Stem (conv-bn-relu-maxpool, 64 -> 32 px), ``layer1..3`` residual blocks (32 -> 8 px),
    global average pool and ``fc``.

    Example::

        logits = ShapesResNet()(torch.zeros(1, 3, 64, 64))  # -> [1, 6]
    """

    def __init__(self, num_classes: int = 6, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = BasicBlock(widths[0], widths[0])
        self.layer2 = BasicBlock(widths[0], widths[1], stride=2)
        self.layer3 = BasicBlock(widths[1], widths[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))
