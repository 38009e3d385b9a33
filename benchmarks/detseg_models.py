"""Detection and segmentation targets on torchvision's real constructors (random weights, no download):
Faster R-CNN (ResNet-50 FPN, MobileNetV3 FPN), RetinaNet, FCOS, SSD, SSDlite x Grad-CAM, saliency,
integrated gradients, occlusion; FCN, DeepLabV3, LRASPP x the same. Prints one row per model and
method: the CAM layer chosen, the map's shape, its largest magnitude and the seconds taken.

    python benchmarks/detseg_models.py                 # every model; 96x128 inputs, 1 thread
    python benchmarks/detseg_models.py ssd300_vgg16    # the models named
"""

from __future__ import annotations

import sys
import time

import torch
from torchvision.models import detection as D
from torchvision.models import segmentation as S

from convscope.methods import GradCAM, IntegratedGradients, Occlusion, Saliency
from convscope.targets_vision import Detection, Region

DETECTORS = {
    "fasterrcnn_resnet50_fpn": dict(box_score_thresh=0.0, min_size=96, max_size=128),
    "fasterrcnn_mobilenet_v3_large_fpn": dict(box_score_thresh=0.0, min_size=96, max_size=128),
    "retinanet_resnet50_fpn": dict(score_thresh=0.0, min_size=96, max_size=128),
    "fcos_resnet50_fpn": dict(score_thresh=0.0, min_size=96, max_size=128),
    "ssd300_vgg16": dict(score_thresh=0.0),
    "ssdlite320_mobilenet_v3_large": dict(score_thresh=0.0),
}
SEGMENTERS = ["fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]
METHODS = {"grad_cam": lambda m: GradCAM(m), "saliency": lambda m: Saliency(m),
           "integrated_gradients": lambda m: IntegratedGradients(m, steps=4),
           "occlusion": lambda m: Occlusion(m, window=32, stride=32)}


def row(name: str, model: torch.nn.Module, x: torch.Tensor, target: object) -> None:
    for method, make in METHODS.items():
        start = time.perf_counter()
        try:
            explainer = make(model)
            maps = explainer.attribute(x, target)
            layer = ",".join(getattr(explainer, "last_layers", ())) or "-"
            result = f"{layer:28s} {str(list(maps.shape)):18s} max|map| {float(maps.abs().max()):.3g}"
        except Exception as error:  # noqa: BLE001 - a row says what failed
            result = f"FAILED {type(error).__name__}: {str(error)[:120]}"
        print(f"{name:36s} {method:22s} {result}  {time.perf_counter() - start:.1f}s", flush=True)


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    for name, kwargs in DETECTORS.items():
        if names and name not in names:
            continue
        torch.manual_seed(0)
        model = getattr(D, name)(weights=None, weights_backbone=None, **kwargs).eval()
        with torch.no_grad():
            det = model(x)[0]
        sides = det["boxes"][:, 2:] - det["boxes"][:, :2]
        j = int((sides >= 8).all(1).nonzero()[0, 0])
        row(name, model, x, Detection(int(det["labels"][j]), det["boxes"][j].tolist()))
    for name in SEGMENTERS:
        if names and name not in names:
            continue
        torch.manual_seed(0)
        model = getattr(S, name)(weights=None, weights_backbone=None, num_classes=5).eval()
        row(name, model, x, Region(1, (32, 24, 96, 72)))


if __name__ == "__main__":
    main(sys.argv[1:])
