"""``shapes-detector``: torchvision's FCOS with a tiny convolutional backbone, for Scenes.

One feature level at stride 8 (an 8x8 grid on 64x64 scenes) and one anchor of 8 px per location
(FCOS uses it only for centre sampling, radius 1.5 x 8 px); a two-conv FCOS head. The model is a
real ``torchvision.models.detection.FCOS``: it takes images in [0, 1] (a list of ``[3, H, W]``
or a batch), normalises them with the Shapes mean/std itself, and returns torchvision's
``[{'boxes', 'scores', 'labels'}]`` in eval mode (labels = Shapes class + 1; 0 is background),
the loss dict in train mode. torchvision is imported only when the model is built.

Example::

    model = shapes_fcos().eval()
    model(torch.rand(2, 3, 64, 64))  # [{'boxes': [k, 4], 'scores': [k], 'labels': [k]}, ...]
"""

from __future__ import annotations

from torch import nn

from convscope.data.shapes import CLASSES, MEAN, STD


class TinyBackbone(nn.Sequential):
    """Four conv-bn-relu blocks, three max-pools: ``[N, 3, H, W] -> [N, 64, H/8, W/8]``."""

    out_channels = 64

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 64)) -> None:
        layers: list[nn.Module] = []
        cin = 3
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            cin = w
        super().__init__(*layers)


def shapes_fcos(size: int = 64) -> nn.Module:
    """An FCOS detector for ``size x size`` Scenes with ``len(CLASSES) + 1`` classes (0: background)."""
    try:
        from torchvision.models.detection import FCOS
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.fcos import FCOSHead
    except ImportError:
        from convscope.errors import ConvscopeError

        raise ConvscopeError("the zoo's shapes-detector is a torchvision FCOS, and torchvision is not installed",
                             "pip install 'convscope[torchvision]'") from None
    backbone = TinyBackbone()
    anchors = AnchorGenerator(sizes=((8,),), aspect_ratios=((1.0,),))
    head = FCOSHead(backbone.out_channels, num_anchors=1, num_classes=len(CLASSES) + 1, num_convs=2)
    return FCOS(backbone, num_classes=len(CLASSES) + 1, min_size=size, max_size=size, image_mean=list(MEAN),
                image_std=list(STD), anchor_generator=anchors, head=head, score_thresh=0.2, detections_per_img=10)
