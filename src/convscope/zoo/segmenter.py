"""``shapes-segmenter``: a small FCN that labels every pixel of a Shapes image.

Like torchvision's segmenters (FCN, DeepLabV3, LRASPP) it returns a dict ``{'out': logits}``
with logits ``[N, K, H, W]`` at the input's size, ``K = len(CLASSES) + 1``: class 0 is the
background, class ``c + 1`` the Shapes class ``c``. ``backbone`` reaches stride 4 and widens its
receptive field with dilated convolutions (a shape is up to ~40 px across); ``classifier`` is an
FCN head (3x3 conv-bn-relu, dropout, 1x1 conv); the logits are upsampled bilinearly.

Example::

    out = ShapesFCN()(torch.zeros(1, 3, 64, 64))["out"]  # -> [1, 7, 64, 64]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convscope.data.shapes import CLASSES


def _block(cin: int, cout: int, dilation: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class ShapesFCN(nn.Module):
    """``backbone`` (stride 4, dilations 1, 2, 4) -> ``classifier`` (FCN head) -> bilinear upsampling."""

    def __init__(self, num_classes: int = len(CLASSES) + 1, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        a, b, c = widths
        self.backbone = nn.Sequential(
            *_block(3, a), nn.MaxPool2d(2),
            *_block(a, b), nn.MaxPool2d(2),
            *_block(b, c), *_block(c, c, dilation=2), *_block(c, c, dilation=4),
        )
        self.classifier = nn.Sequential(*_block(c, c // 2), nn.Dropout(0.1), nn.Conv2d(c // 2, num_classes, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.classifier(self.backbone(x))
        return {"out": F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)}
