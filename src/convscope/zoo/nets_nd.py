"""The zoo's 1-D and 3-D counterparts of ``ShapesVGG``: ``features`` (conv-bn-relu-maxpool blocks),
then global average pooling and a linear ``classifier``, so the last conv block's maps
(``features``' last ReLU) are the natural CAM layer.

``SignalsCNN`` takes ``[N, 2, 128]`` signals (:class:`convscope.data.Signals`): three blocks
(128 -> 16 samples). ``VolumesCNN`` takes ``[N, 1, 16, 16, 16]`` volumes
(:class:`convscope.data.Volumes`): three blocks (16 -> 4 voxels, the last one without pooling).

Example::

    SignalsCNN()(torch.zeros(1, 2, 128)).shape         # [1, 4]
    VolumesCNN()(torch.zeros(1, 1, 16, 16, 16)).shape  # [1, 4]
"""

from __future__ import annotations

import torch
from torch import nn

_LAYERS = {1: (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d),
           3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d)}


class ConvNetND(nn.Module):
    """``features``: per width a conv(k=3 in 3-D, 5 in 1-D)-bn-relu block, max-pooled by 2 where
    ``pools`` says so; then ``pool`` (global average) and ``classifier`` (linear)."""

    def __init__(self, dims: int, in_channels: int, num_classes: int, widths: tuple[int, ...],
                 pools: tuple[bool, ...], kernel: int) -> None:
        super().__init__()
        conv, norm, maxpool, avgpool = _LAYERS[dims]
        layers: list[nn.Module] = []
        cin = in_channels
        for w, pool in zip(widths, pools):
            layers += [conv(cin, w, kernel, padding=kernel // 2, bias=False), norm(w), nn.ReLU(inplace=True)]
            if pool:
                layers.append(maxpool(2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = avgpool(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class SignalsCNN(ConvNetND):
    """The 1-D zoo model (``signals-cnn``)."""

    def __init__(self, in_channels: int = 2, num_classes: int = 4) -> None:
        super().__init__(1, in_channels, num_classes, (16, 32, 64), (True, True, False), kernel=5)


class VolumesCNN(ConvNetND):
    """The 3-D zoo model (``volumes-cnn``)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4) -> None:
        super().__init__(3, in_channels, num_classes, (8, 16, 32), (True, True, False), kernel=3)
