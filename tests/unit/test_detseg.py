"""Detectors and segmenters: the Detection and Region targets on torchvision's Faster R-CNN,
RetinaNet, FCOS, SSD, FCN, DeepLabV3 and LRASPP (tiny backbones, random weights, 64x64 inputs).

Oracles: a hand-written detection score (a Python loop over the detections, scalar IoU) and
autograd of it; torchvision's ``box_iou``; Captum's integrated gradients of the hand-written score;
a hand-computed occlusion drop; a hand-written Grad-CAM from hooks; pytorch-grad-cam's
``FasterRCNNBoxScoreTarget`` with its Grad-CAM on the same Faster R-CNN (equal where both score the
same detection; where the best-overlapping box has another class it scores nothing, shown below);
a hand-written sum of segmentation logits and pytorch-grad-cam's ``SemanticSegmentationTarget``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from vision_nets import CLASSES, DETECTORS, SEGMENTERS

from convscope.errors import ConvscopeError
from convscope.methods import GradCAM, IntegratedGradients, Occlusion, Saliency
from convscope.targets import Class, FunctionTarget
from convscope.targets_vision import Detection, Region, box_iou

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # these models are tiny: one thread is fastest, and immune to a busy machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def detectors() -> dict[str, nn.Module]:
    return {name: make() for name, make in DETECTORS.items()}


@pytest.fixture(scope="module")
def segmenters() -> dict[str, nn.Module]:
    return {name: make() for name, make in SEGMENTERS.items()}


X = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def close(a: Tensor, b: Tensor, tol: float = 1e-5) -> bool:
    return bool((a - b).abs().max() <= tol * max(float(b.abs().max()), 1e-12))


# --- the hand-written detection score ------------------------------------------------------------

def naive_iou(a: list[float], b: Tensor) -> Tensor:
    """IoU of a box given as floats with one box tensor [4], corner by corner."""
    w = torch.clamp(torch.minimum(b[2], torch.tensor(a[2])) - torch.maximum(b[0], torch.tensor(a[0])), min=0)
    h = torch.clamp(torch.minimum(b[3], torch.tensor(a[3])) - torch.maximum(b[1], torch.tensor(a[1])), min=0)
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def naive_score(output: list[dict[str, Tensor]], label: int, box: list[float], iou: bool = False,
                min_iou: float = 0.5) -> Tensor:
    """Per image: among detections of ``label``, the one with the highest IoU (first on ties); its
    score (+ IoU), or 0 below ``min_iou``."""
    values = []
    for det in output:
        best, best_iou = None, -1.0
        for j in range(len(det["boxes"])):
            if int(det["labels"][j]) == label:
                overlap = float(naive_iou(box, det["boxes"][j]))
                if overlap > best_iou:
                    best, best_iou = j, overlap
        if best is None or best_iou < min_iou:
            values.append(torch.zeros(()))
        else:
            values.append(det["scores"][best] + (naive_iou(box, det["boxes"][best]) if iou else 0))
    return torch.stack(values)


def a_detection(model: nn.Module, x: Tensor = X, k: int = 1) -> tuple[int, list[float]]:
    """Class and box (shifted by one pixel, so the IoU is below 1) of the ``k``-th detection of
    image 0 at least 8x8 pixels large."""
    with torch.no_grad():
        det = model(x)[0]
    sides = det["boxes"][:, 2:] - det["boxes"][:, :2]
    j = int((sides >= 8).all(1).nonzero()[k, 0])
    box = (det["boxes"][j] + 1.0).clamp(0, 64).tolist()
    return int(det["labels"][j]), box


def test_box_iou_equals_torchvision() -> None:
    from torchvision.ops import box_iou as theirs

    g = torch.Generator().manual_seed(0)
    corners = torch.rand(7, 2, 2, generator=g) * 50
    boxes = torch.cat([corners.min(1).values, corners.max(1).values + 1], 1)
    assert close(box_iou(boxes[:3], boxes), theirs(boxes[:3], boxes), 1e-6)


@pytest.mark.parametrize("name", list(DETECTORS))
@pytest.mark.parametrize("iou", [False, True])
def test_detection_score_and_gradient_equal_the_hand_written_ones(name: str, iou: bool,
                                                                  detectors: dict[str, nn.Module]) -> None:
    model = detectors[name]
    label, box = a_detection(model)
    target = Detection(label, box, iou=iou)
    leaf = X.clone().requires_grad_()
    expected_score = naive_score(model(leaf), label, box, iou)
    (expected,) = torch.autograd.grad(expected_score.sum(), leaf)
    assert float(expected_score[0]) > 0 and float(expected.abs().max()) > 0
    with torch.no_grad():
        assert close(target.matches(model(X), require=False)[0].score + (target.last_matches()[0].iou if iou else 0),
                     expected_score[0].detach())
    assert close(Saliency(model).attribute(X, target), expected)


# the backbone's last map under a pyramid-like body; SSD: the map its first level is computed from
CAM_LAYERS = {"faster_rcnn": "backbone.body.layer2", "retinanet": "backbone.body.layer2", "fcos": "backbone.body.layer2",
              "ssd": "backbone.features"}


@pytest.mark.parametrize("name", list(DETECTORS))
def test_grad_cam_on_the_backbone_equals_a_hand_written_one(name: str, detectors: dict[str, nn.Module]) -> None:
    model = detectors[name]
    label, box = a_detection(model)
    cam = GradCAM(model, upsample=False, relu=False)
    ours = cam.attribute(X, Detection(label, box))
    assert cam.last_layers == (CAM_LAYERS[name],)
    seen: list[Tensor] = []
    handle = model.get_submodule(CAM_LAYERS[name]).register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        score = naive_score(model(X), label, box)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score.sum(), seen[0])
    expected = (grad.mean((2, 3), keepdim=True) * seen[0]).sum(1, keepdim=True)
    assert close(ours, expected.detach())
    assert GradCAM(model).attribute(X, Detection(label, box)).shape == (2, 1, 64, 64)


@pytest.mark.parametrize("name", ["faster_rcnn", "ssd"])
def test_integrated_gradients_equal_captums_of_the_hand_written_score(name: str, detectors: dict[str, nn.Module]) -> None:
    from captum.attr import IntegratedGradients as CaptumIG

    model = detectors[name]
    label, box = a_detection(model)
    x = X[:1]
    theirs = CaptumIG(lambda t: naive_score(model(t), label, box)).attribute(x, n_steps=4, method="gausslegendre")
    ours = IntegratedGradients(model, steps=4).attribute(x, Detection(label, box))
    assert float(theirs.abs().max()) > 0
    assert close(ours, theirs.float(), 1e-4)


def test_occlusion_is_the_hand_computed_score_drop(detectors: dict[str, nn.Module]) -> None:
    model = detectors["faster_rcnn"]
    label, box = a_detection(model)
    x = X[:1]
    ours = Occlusion(model, window=32, stride=32).attribute(x, Detection(label, box))
    with torch.no_grad():
        clean = naive_score(model(x), label, box)
        expected = torch.zeros_like(x)
        for top in (0, 32):
            for left in (0, 32):
                covered = x.clone()
                covered[..., top:top + 32, left:left + 32] = 0
                expected[..., top:top + 32, left:left + 32] = clean - naive_score(model(covered), label, box)
    assert close(ours, expected)


def test_a_callable_maps_any_output_to_a_score(detectors: dict[str, nn.Module]) -> None:
    model = detectors["retinanet"]

    def top3(output: list[dict[str, Tensor]]) -> Tensor:
        return torch.stack([o["scores"][:3].sum() for o in output])

    leaf = X.clone().requires_grad_()
    (expected,) = torch.autograd.grad(top3(model(leaf)).sum(), leaf)
    assert close(Saliency(model).attribute(X, top3), expected)
    assert close(Saliency(model).attribute(X, FunctionTarget(top3)), expected)
    assert close(Saliency(model).attribute(X, 0.5 * FunctionTarget(top3) + 1.0), 0.5 * expected)


def test_ssds_last_block_misses_a_finer_levels_detection(detectors: dict[str, nn.Module]) -> None:
    """Why SSD's default CAM layer is the source of its first level: a detection from that level
    has no gradient at the last block (which feeds only the coarsest level)."""
    model = detectors["ssd"]
    seen: list[Tensor] = []
    handle = model.get_submodule("backbone.extra.0").register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        output = model(X[:1])
    finally:
        handle.remove()
    det = output[0]
    j = next(j for j in range(len(det["scores"]))  # a detection whose score does not move with the last block
             if float(torch.autograd.grad(det["scores"][j], seen[0], retain_graph=True)[0].abs().max()) == 0.0)
    target = Detection(int(det["labels"][j]), det["boxes"][j].tolist(), min_iou=0.99)
    assert float(GradCAM(model, "backbone.extra.0").attribute(X[:1], target).abs().max()) == 0.0
    assert float(GradCAM(model).attribute(X[:1], target).abs().max()) > 0.0


class PlainSegmenter(nn.Module):
    """Per-pixel class scores as one tensor [N, K, H, W] (no dict)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(8, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class OneBoxDetector(nn.Module):
    """Not torchvision: one detection per image, its box and score computed from the features."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        f = self.features(x).mean((2, 3))  # [N, 4]
        boxes = torch.cat([8 + f[:, :2], 40 + f[:, 2:]], 1)
        return [{"boxes": b[None], "labels": torch.tensor([1]), "scores": s[None]} for b, s in zip(boxes, f.sum(1))]


def test_any_model_with_these_outputs(detectors: dict[str, nn.Module]) -> None:
    plain = PlainSegmenter()
    leaf = X.clone().requires_grad_()
    (expected,) = torch.autograd.grad(plain(leaf)[:, 1, 20:50, 10:30].sum(), leaf)
    assert close(Saliency(plain).attribute(X, Region(1, BOX)), expected)
    custom = OneBoxDetector()
    leaf = X.clone().requires_grad_()
    (expected,) = torch.autograd.grad(naive_score(custom(leaf), 1, [8, 8, 40, 40], iou=True).sum(), leaf)
    assert close(Saliency(custom).attribute(X, Detection(1, (8, 8, 40, 40), iou=True)), expected)


# --- pytorch-grad-cam ----------------------------------------------------------------------------

def pgc_raw(model: nn.Module, layer: str, x: Tensor, targets: list) -> tuple[Tensor, float]:
    """pytorch-grad-cam's raw Grad-CAM (before its ReLU and normalisation) and its summed score."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    import numpy as np

    model = copy.deepcopy(model)  # it back-propagates into the parameters
    module = model.get_submodule(layer)
    cam = pgc.GradCAM(model=model, target_layers=[module])
    with cam:
        outputs = cam.activations_and_grads(x.clone())
        score = sum(t(o) for t, o in zip(targets, outputs))
        model.zero_grad()
        score.backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        raw = cam.get_cam_image(x, module, targets, acts, grads, False)
    return torch.from_numpy(np.asarray(raw, dtype=np.float32))[:, None], float(score)


def test_equals_pytorch_grad_cams_box_score_target_on_faster_rcnn(detectors: dict[str, nn.Module]) -> None:
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    model = detectors["faster_rcnn"]
    x = X[:1]
    with torch.no_grad():
        det = model(x)[0]
    box, label = det["boxes"][4], int(det["labels"][4])  # exactly a detection's box: it wins the IoU
    theirs, their_score = pgc_raw(model, "backbone.body.layer2", x, [FasterRCNNBoxScoreTarget([label], [box])])
    ours = GradCAM(model, upsample=False, relu=False).attribute(x, Detection(label, box.tolist(), iou=True))
    assert their_score == pytest.approx(float(det["scores"][4]) + 1.0, rel=1e-6)
    assert close(ours, theirs)


def test_where_pytorch_grad_cam_differs_the_best_box_of_another_class(detectors: dict[str, nn.Module]) -> None:
    """FasterRCNNBoxScoreTarget takes the best-overlapping box of any class and scores nothing when
    its class differs (its Grad-CAM then raises a raw RuntimeError); Detection chooses among the
    asked class's detections first."""
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    model = detectors["faster_rcnn"]
    x = X[:1]
    with torch.no_grad():
        det = model(x)[0]
    ious = box_iou(det["boxes"], det["boxes"])
    other_class = det["labels"][:, None] != det["labels"][None, :]
    k, j = ((ious >= 0.5) & other_class).nonzero()[0].tolist()  # detection j, of another class, overlaps k
    box, other = det["boxes"][k], int(det["labels"][j])
    ious = box_iou(box[None], det["boxes"][det["labels"] == other])[0]
    their_target = FasterRCNNBoxScoreTarget([other], [box])
    assert float(their_target(det)) == 0.0  # its best box (k itself, IoU 1) has the other class
    import pytorch_grad_cam as pgc

    with pytest.raises(RuntimeError, match="does not require grad"):  # and its Grad-CAM fails on that score
        with pgc.GradCAM(model=copy.deepcopy(model), target_layers=[model.backbone.body.layer2]) as cam:
            cam(input_tensor=x.clone(), targets=[their_target])
    with torch.no_grad():
        (match,) = Detection(other, box.tolist()).matches(model(x))
    assert match.index >= 0 and match.score > 0 and match.iou == pytest.approx(float(ious.max()))


# --- segmentation --------------------------------------------------------------------------------

BOX = (10.0, 20.0, 30.0, 50.0)  # pixel centres x in 10.5..29.5, y in 20.5..49.5: columns 10..29, rows 20..49


def hand_region_sum(out: Tensor, label: int, box: tuple[float, ...] | None = None, mask: Tensor | None = None) -> Tensor:
    total = torch.zeros(out.shape[0])
    for n in range(out.shape[0]):
        for y in range(out.shape[2]):
            for x in range(out.shape[3]):
                if box is not None and box[0] <= x + 0.5 <= box[2] and box[1] <= y + 0.5 <= box[3]:
                    total[n] = total[n] + out[n, label, y, x]
                elif mask is not None and mask[y, x]:
                    total[n] = total[n] + out[n, label, y, x]
    return total


@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_region_score_is_the_hand_written_sum_of_logits(name: str, segmenters: dict[str, nn.Module]) -> None:
    model = segmenters[name]
    with torch.no_grad():
        out = model(X)["out"]
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[5:9, 40:60] = True
    mask[30, 3] = True
    from convscope.targets import Record

    for target, expected in [(Region(2, BOX), hand_region_sum(out, 2, box=BOX)),
                             (Region(1, mask=mask), hand_region_sum(out, 1, mask=mask)),
                             (Region(1, mask=mask, reduce="mean"), hand_region_sum(out, 1, mask=mask) / 81)]:
        got = target.score(Record(output={"out": out}, acts={}, rows=torch.arange(2)))
        assert close(got, expected)


@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_region_gradients_and_grad_cam(name: str, segmenters: dict[str, nn.Module]) -> None:
    model = segmenters[name]
    leaf = X.clone().requires_grad_()
    x0, y0, x1, y1 = map(int, BOX)
    (expected,) = torch.autograd.grad(model(leaf)["out"][:, 2, y0:y1, x0:x1].sum(), leaf)
    assert close(Saliency(model).attribute(X, Region(2, BOX)), expected)
    cam = GradCAM(model)
    assert cam.attribute(X, Region(2, BOX)).shape == (2, 1, 64, 64)
    assert cam.last_layers == ("backbone.body.layer2",)  # in the backbone, not the classifier's logits


def test_region_equals_pytorch_grad_cams_segmentation_target(segmenters: dict[str, nn.Module]) -> None:
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    from convscope.targets import Record

    with torch.no_grad():
        out = segmenters["deeplabv3"](X)["out"]
    mask = (torch.rand(64, 64, generator=torch.Generator().manual_seed(3)) > 0.7).float()
    theirs = torch.stack([SemanticSegmentationTarget(3, mask.numpy())(o) for o in out])
    ours = Region(3, mask=mask).score(Record(output={"out": out}, acts={}, rows=torch.arange(2)))
    assert close(ours, theirs)


def test_per_sample_labels_boxes_and_masks(segmenters: dict[str, nn.Module], detectors: dict[str, nn.Module]) -> None:
    from convscope.targets import Record

    with torch.no_grad():
        out = segmenters["fcn"](X)["out"]
    boxes = [(0, 0, 8, 8), BOX]
    got = Region([1, 3], boxes).score(Record(output={"out": out}, acts={}, rows=torch.arange(2)))
    assert close(got, torch.stack([hand_region_sum(out[:1], 1, box=boxes[0])[0], hand_region_sum(out[1:], 3, box=BOX)[0]]))
    model = detectors["ssd"]
    (label0, box0), (label1, box1) = a_detection(model, X[:1]), a_detection(model, X[1:])
    one = Saliency(model).attribute(X, Detection([label0, label1], [box0, box1]))
    assert close(one[:1], Saliency(model).attribute(X[:1], Detection(label0, box0)))
    assert close(one[1:], Saliency(model).attribute(X[1:], Detection(label1, box1)))
    # chunks of one sample: each chunk's rows pick their own box, and IG's expanded batches too
    assert close(Saliency(model, max_batch=1).attribute(X, Detection([label0, label1], [box0, box1])), one)
    target = Detection([label0, label1], [box0, box1])
    assert close(IntegratedGradients(model, steps=3, max_batch=2).attribute(X, target),
                 IntegratedGradients(model, steps=3).attribute(X, target))


# --- scoping and errors --------------------------------------------------------------------------

def test_a_model_in_train_mode_is_explained_in_eval_mode_and_left_as_it_was(detectors: dict[str, nn.Module]) -> None:
    model = detectors["faster_rcnn"]
    label, box = a_detection(model)
    expected = Saliency(model).attribute(X, Detection(label, box))
    model.train()
    try:
        assert close(Saliency(model).attribute(X, Detection(label, box)), expected)
        assert all(m.training for m in model.modules())
    finally:
        model.eval()


def test_hooks_are_gone_after_a_failing_target(detectors: dict[str, nn.Module]) -> None:
    model = detectors["fcos"]
    with pytest.raises(ConvscopeError, match="needs per-pixel class scores"):
        GradCAM(model).attribute(X, Region(1, BOX))
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
    assert not model.training


@pytest.mark.parametrize(("make", "needle"), [
    (lambda: Detection(1, (70, 0, 80, 10)), "lies outside the 64x64 image"),
    (lambda: Detection(1, (-1, 0, 8, 8)), "lies outside the 64x64 image"),
    (lambda: Detection(1, (10, 10, 5, 20)), "is empty: it needs x0 < x1"),
    (lambda: Detection(1, (1, 2, 3)), "is not x0, y0, x1, y1"),
    (lambda: Detection(1.5, (1, 2, 3, 4)), "is not a class index"),
    (lambda: Detection(1, (0, 0, 8, 8), min_iou=2), "min_iou=2 is not in"),
    (lambda: Detection([1, 2, 3], (0, 0, 8, 8)), "3 per-sample entries for a batch of 2"),
    (lambda: Class(1), "Class target needs a model output of shape \\[N, classes\\], got a list of 2 dicts"),
    (lambda: Region(1, BOX), "needs per-pixel class scores"),
])
def test_detector_mistakes_are_clear(make, needle: str, detectors: dict[str, nn.Module]) -> None:
    with pytest.raises(ConvscopeError, match=needle):
        Saliency(detectors["faster_rcnn"]).attribute(X, make())


@pytest.mark.parametrize(("make", "needle"), [
    (lambda: Region(9, BOX), "class 9 is out of range for a segmenter of 4 classes"),
    (lambda: Region(1, (0, 0, 65, 10)), "lies outside the 64x64 image"),
    (lambda: Region(1, (3.2, 3.2, 3.4, 3.4)), "holds no pixel centre"),
    (lambda: Region(1, mask=torch.ones(32, 32)), "mask is 32x32 pixels but the model's output is 64x64"),
    (lambda: Region(1, mask=torch.zeros(64, 64)), "mask is empty"),
    (lambda: Region(1, BOX, key="logits"), "has no entry 'logits' \\(it has \\['out'\\]\\)"),
    (lambda: Region(1, BOX, mask=torch.ones(64, 64)), "exactly one of box= or mask="),
    (lambda: Detection(1, BOX), "needs a detector's output, got a dict"),
    (lambda: Class(1), "got a dict \\{'out': \\[2, 4, 64, 64\\]\\}"),
])
def test_segmenter_mistakes_are_clear(make, needle: str, segmenters: dict[str, nn.Module]) -> None:
    with pytest.raises(ConvscopeError, match=needle):
        Saliency(segmenters["fcn"]).attribute(X, make())


def test_no_matching_detection_is_named_with_the_nearest(detectors: dict[str, nn.Module]) -> None:
    model = detectors["faster_rcnn"]
    with torch.no_grad():
        output = model(X)
    seen = int(output[0]["labels"][0])
    with pytest.raises(ConvscopeError, match=f"no detection of class {seen} matches box .* in image 0 with IoU >= 0.99: "
                                             "the nearest has IoU"):
        Detection(seen, (0, 0, 3, 3), min_iou=0.99).matches(output)
    unseen = next(c for c in range(CLASSES) if not bool((output[0]["labels"] == c).any()))
    with pytest.raises(ConvscopeError, match=f"the model detects no class {unseen} there"):
        Detection(unseen, (0, 0, 3, 3)).matches(output)
    assert Detection(seen, (0, 0, 3, 3), min_iou=0.99).matches(output, require=False)[0].index == -1
    with pytest.raises(ConvscopeError, match="needs a detector's output, got a dict"):
        Detection(seen, (0, 0, 3, 3)).matches({"out": torch.zeros(2, 4, 8, 8)})
    # a pass without the detection scores 0 (as a perturbed copy may): an all-zero map, not an error
    assert float(Saliency(model).attribute(X, Detection(seen, (0, 0, 3, 3), min_iou=0.99)).abs().max()) == 0.0
