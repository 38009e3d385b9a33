"""Tiny torchvision detectors and segmenters (their real classes, a 3-conv backbone, random weights,
64x64 inputs), for fast tests. Each factory seeds its own weights, so two calls build equal models;
they are also ``module:factory`` specs for the command line (``vision_nets:faster_rcnn``).

The detectors keep every candidate (score thresholds 0) and few of them, so random weights still
detect something and a forward pass takes milliseconds.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD
from torchvision.models.segmentation import FCN, LRASPP, DeepLabV3
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.ops import MultiScaleRoIAlign

CLASSES = 4
SIZE = dict(min_size=64, max_size=64)


class Body(nn.Module):
    """stem (stride 2) -> layer1 (stride 2) -> layer2: a 16x16 map for a 64x64 input."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(8, channels, 3, 2, 1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.layer2(self.layer1(self.stem(x)))


class Backbone(nn.Module):
    """One feature level ``{"0": map}`` under ``body``, as torchvision's FPN backbones name theirs."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.body = Body(channels)
        self.out_channels = channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict([("0", self.body(x))])


class SSDBackbone(nn.Module):
    """Two levels without a pyramid, as torchvision's SSD backbones: ``features`` scaled by an
    operation that is no module (SSD300's L2 norm) for the first, an ``extra`` block for the second."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.features = Body(channels)
        self.extra = nn.ModuleList([nn.Sequential(nn.Conv2d(channels, channels, 3, 2, 1), nn.ReLU())])
        self.scale = nn.Parameter(torch.full((channels, 1, 1), 2.0))
        self.out_channels = [channels, channels]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        a = self.features(x)
        return OrderedDict([("0", self.scale * a), ("1", self.extra[0](a))])


def faster_rcnn() -> nn.Module:
    torch.manual_seed(0)
    return FasterRCNN(Backbone(), num_classes=CLASSES, rpn_anchor_generator=AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),)),
                      box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), box_score_thresh=0.0, rpn_pre_nms_top_n_test=50,
                      rpn_post_nms_top_n_test=20, box_detections_per_img=20, **SIZE).eval()


def retinanet() -> nn.Module:
    torch.manual_seed(0)
    return RetinaNet(Backbone(), num_classes=CLASSES, anchor_generator=AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),)),
                     score_thresh=0.0, detections_per_img=20, **SIZE).eval()


def fcos() -> nn.Module:
    torch.manual_seed(0)
    model = FCOS(Backbone(32), num_classes=CLASSES, anchor_generator=AnchorGenerator(((8,),), ((1.0,),)),
                 score_thresh=0.0, detections_per_img=20, **SIZE).eval()
    with torch.no_grad():  # boxes of about 16 px (its initial regression is near 0: sub-pixel boxes)
        model.head.regression_head.bbox_reg.bias.fill_(1.0)
    return model


def ssd() -> nn.Module:
    torch.manual_seed(0)
    return SSD(SSDBackbone(), DefaultBoxGenerator([[2], [2]]), (64, 64), num_classes=CLASSES, score_thresh=0.0,
               detections_per_img=20, topk_candidates=50).eval()


class SegBackbone(nn.Module):
    """``{"low": stride-4 map, "out": the stride-4 layer2 map, "high": the same}``: what FCN and
    DeepLabV3 (``out``) and LRASPP (``low``, ``high``) read."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body(16)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        low = self.body.layer1(self.body.stem(x))
        high = self.body.layer2(low)
        return OrderedDict([("low", low), ("out", high), ("high", high)])


def fcn() -> nn.Module:
    torch.manual_seed(0)
    return FCN(SegBackbone(), FCNHead(16, CLASSES)).eval()


def deeplabv3() -> nn.Module:
    torch.manual_seed(0)
    return DeepLabV3(SegBackbone(), DeepLabHead(16, CLASSES)).eval()


def lraspp() -> nn.Module:
    torch.manual_seed(0)
    return LRASPP(SegBackbone(), 16, 16, CLASSES, inter_channels=8).eval()


class CoarseSegmenter(nn.Module):
    """Per-pixel class scores at a quarter of the input's size, ``{"out": [N, K, H/4, W/4]}``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body(16)
        self.classifier = nn.Conv2d(16, CLASSES, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": self.classifier(self.body(x))}


def coarse_segmenter() -> nn.Module:
    torch.manual_seed(0)
    return CoarseSegmenter().eval()


DETECTORS = {"faster_rcnn": faster_rcnn, "retinanet": retinanet, "fcos": fcos, "ssd": ssd}
SEGMENTERS = {"fcn": fcn, "deeplabv3": deeplabv3, "lraspp": lraspp}
