"""Vision transformers: the CAM family on token outputs with no reshape code, attention rollout and
its gradient-weighted form.

Oracles: pytorch-grad-cam with the reshape transforms its documentation gives for ViT and Swin
(raw maps equal to 1e-5; its ViT transform ``tensor[:, 1:, :]`` is wrong for models with
distillation or register tokens, shown here); a naive rollout written below over attention
materialised by ``nn.MultiheadAttention(need_weights=True)``, and a naive gradient-weighted
relevance over a hand-written forward pass of torchvision's ViT with explicit attention; timm's
explicit (non-fused) attention against its fused one. Small configurations keep the file fast.
"""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.swin_transformer import SwinTransformer as TorchvisionSwin
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

from convscope.backends.torch.attention import AttentionCapture
from convscope.errors import ConvscopeError
from convscope.methods import (
    AblationCAM,
    AttentionRollout,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    GradRollout,
    LayerCAM,
    ScoreCAM,
    get_method,
)
from convscope.methods.cam import Tokens
from convscope.methods.registry import applicable

timm = pytest.importorskip("timm")
pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CLASSES = [1, 3]
X = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def seeded(build, seed: int = 0) -> nn.Module:  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    model = build().eval()
    for p in model.parameters():  # torchvision zeroes the head: every class would score 0
        if p.dim() == 2 and not p.abs().sum():
            nn.init.normal_(p, std=0.2)
    return model


TIMM_KW = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)
BUILDERS = {  # small configurations of torchvision's vit_b_16 / swin_t and of timm's ViT, DeiT and Swin
    "torchvision_vit": lambda: TorchvisionViT(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                              mlp_dim=64, num_classes=5),
    "torchvision_swin": lambda: TorchvisionSwin(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                                window_size=[2, 2], num_classes=5),
    "vit": lambda: timm.models.VisionTransformer(**TIMM_KW),
    "vit_registers": lambda: timm.models.VisionTransformer(reg_tokens=3, **TIMM_KW),
    "vit_avg": lambda: timm.models.VisionTransformer(class_token=False, global_pool="avg", **TIMM_KW),
    "vit_map": lambda: timm.models.VisionTransformer(class_token=False, global_pool="map", **TIMM_KW),
    "deit_distilled": lambda: timm.models.deit.VisionTransformerDistilled(**TIMM_KW),
    "swin": lambda: timm.models.swin_transformer.SwinTransformer(
        img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2), num_classes=5),
}


@functools.cache
def model_named(name: str) -> nn.Module:
    """One model per name for the whole module, built on first use."""
    return seeded(BUILDERS[name])


class Models(dict):  # type: ignore[type-arg]
    def __missing__(self, name: str) -> nn.Module:
        return model_named(name)


TIMM = Models()


def tv_vit() -> nn.Module:
    return model_named("torchvision_vit")
PREFIX = {"vit": 1, "vit_registers": 4, "vit_avg": 0, "vit_map": 0, "deit_distilled": 2}


def close(a: Tensor, b: Tensor, tol: float = 1e-5) -> bool:
    return bool((a - b).abs().max() <= tol * max(float(b.abs().max()), 1e-12))


# ---------------------------------------------------------------- the CAM family
def vit_transform(prefix: int, grid: tuple[int, int]):  # type: ignore[no-untyped-def]
    """pytorch-grad-cam's documented ViT reshape_transform (``prefix=1``), with the prefix as a parameter."""
    def reshape(tensor: Tensor) -> Tensor:
        result = tensor[:, prefix:, :].reshape(tensor.size(0), grid[0], grid[1], tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)
    return reshape


def swin_transform(tensor: Tensor) -> Tensor:
    """Channels-last ``[N, h, w, C]`` stage outputs (torchvision, timm >= 0.9) to ``[N, C, h, w]``."""
    return tensor.permute(0, 3, 1, 2)


def theirs_raw(cls_name: str, model: nn.Module, layer: str, x: Tensor, transform, **kw) -> Tensor:  # type: ignore[no-untyped-def]
    """pytorch-grad-cam's raw map [N, 1, h, w] (its forward/backward, then ``get_cam_image``)."""
    model = copy.deepcopy(model)
    module = model.get_submodule(layer)
    targets = [ClassifierOutputTarget(c) for c in CLASSES]
    with getattr(pgc, cls_name)(model=model, target_layers=[module], reshape_transform=transform, **kw) as cam:
        cam(input_tensor=x.clone(), targets=targets)
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy() if cam.uses_gradients else None
        raw = cam.get_cam_image(x.clone(), module, targets, acts, grads, False)
    return torch.from_numpy(np.asarray(raw, dtype=np.float32))[:, None]


CASES = {  # the default layer convscope picks, pytorch-grad-cam's reshape transform for it
    "torchvision_vit": ("encoder.layers.encoder_layer_1.ln_1", vit_transform(1, (4, 4))),
    "torchvision_swin": ("features.3.0.norm1", swin_transform),
    "vit": ("blocks.1.norm1", vit_transform(1, (4, 4))),
    "swin": ("layers.1.blocks.0.norm1", swin_transform),
}


@pytest.mark.parametrize("case", list(CASES))
def test_grad_cam_needs_no_layer_and_equals_pytorch_grad_cam_with_its_reshape(case: str) -> None:
    model, (layer, transform) = model_named(case), CASES[case]
    cam = GradCAM(model)
    maps = cam.attribute(X, CLASSES)
    assert cam.last_layers == (layer,) and maps.shape == (2, 1, 32, 32) and maps.abs().sum() > 0
    raw = GradCAM(model, upsample=False, relu=False).attribute(X, CLASSES)
    assert close(raw, theirs_raw("GradCAM", model, layer, X, transform))
    assert close(maps, F.interpolate(raw.clamp(min=0), size=(32, 32), mode="bilinear", align_corners=False))


PAIRS = {
    "GradCAMPlusPlus": lambda m: GradCAMPlusPlus(m, upsample=False, relu=False, eps=1e-6),
    "LayerCAM": lambda m: LayerCAM(m, upsample=False, relu=False),
}


@pytest.mark.parametrize("name", list(PAIRS))
def test_other_cams_on_vit_tokens_equal_pytorch_grad_cam(name: str) -> None:
    model, (layer, transform) = model_named("vit"), CASES["vit"]
    assert close(PAIRS[name](model).attribute(X, CLASSES), theirs_raw(name, model, layer, X, transform))


@pytest.mark.parametrize("name", ["vit_registers", "deit_distilled", "vit_avg"])
def test_extra_tokens_come_from_the_model_where_the_documented_transform_is_wrong(name: str) -> None:
    model, prefix = TIMM[name], PREFIX[name]
    ours = GradCAM(model, upsample=False, relu=False).attribute(X, CLASSES)
    assert close(ours, theirs_raw("GradCAM", model, "blocks.1.norm1", X, vit_transform(prefix, (4, 4))))
    if prefix != 1:  # the documented tensor[:, 1:, :] keeps extra tokens (or drops a patch): no 4 x 4 grid
        with pytest.raises(RuntimeError):
            theirs_raw("GradCAM", model, "blocks.1.norm1", X, vit_transform(1, (4, 4)))


def naive_token_map(model: nn.Module, layer: str, x: Tensor, prefix: int, grid: tuple[int, int]) -> Tensor:
    """Grad-CAM by hand: tokens recorded by a hook, the patch tokens' gradients averaged per channel."""
    seen: list[Tensor] = []
    clone = copy.deepcopy(model)
    clone.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o))
    out = clone(x)
    (grad,) = torch.autograd.grad(out[torch.arange(len(x)), torch.tensor(CLASSES)].sum(), seen[0])
    acts, grad = seen[0][:, prefix:].detach(), grad[:, prefix:]
    maps = torch.zeros(len(x), grid[0] * grid[1])
    for n in range(len(x)):
        for k in range(acts.shape[-1]):
            maps[n] += grad[n, :, k].mean() * acts[n, :, k]
    return maps.view(len(x), 1, *grid)


class LinearPatches(nn.Module):
    """A ViT whose patch embedding is a linear layer on unfolded patches: no convolution tells the grid."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3 * 8 * 8, 32)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 32))
        self.blocks = nn.Sequential(*[timm.models.vision_transformer.Block(32, 2) for _ in range(2)])
        self.head = nn.Linear(32, 5)

    def forward(self, x: Tensor) -> Tensor:
        patches = F.unfold(x, 8, stride=8).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), self.embed(patches)], dim=1)
        return self.head(self.blocks(tokens)[:, 0])


def test_an_unknown_grid_names_tokens_and_the_given_layout_is_used() -> None:
    model = seeded(LinearPatches)
    with pytest.raises(ConvscopeError, match=r"patch grid is unknown.*tokens=Tokens\(prefix=1, grid=\(14, 14\)\)"):
        GradCAM(model).attribute(X, CLASSES)
    cam = GradCAM(model, upsample=False, relu=False, tokens=Tokens(prefix=1, grid=(4, 4)))
    assert close(cam.attribute(X, CLASSES), naive_token_map(model, "blocks.1.norm1", X, 1, (4, 4)))
    with pytest.raises(ConvscopeError, match="17 tokens, not the 2"):
        GradCAM(model, tokens=Tokens(prefix=2, grid=(4, 4))).attribute(X, CLASSES)
    with pytest.raises(ConvscopeError, match="not a token layout"):
        GradCAM(model, tokens=(1, 4, 4))
    for bad in ({"prefix": -1, "grid": (4, 4)}, {"grid": 16}, {"grid": (4, 0)}):
        with pytest.raises(ConvscopeError, match="not a token layout"):
            Tokens(**bad)


def test_the_grid_follows_the_input_size() -> None:
    model = seeded(lambda: timm.models.VisionTransformer(dynamic_img_size=True, **TIMM_KW))
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(2))  # 4 x 6 patches
    cam = GradCAM(model, upsample=False, relu=False)
    assert close(cam.attribute(x, CLASSES), naive_token_map(model, "blocks.1.norm1", x, 1, (4, 6)))
    assert GradCAM(model).attribute(X, CLASSES).shape == (2, 1, 32, 32)  # 4 x 4 patches, traced again


def test_named_layers_and_other_families_work_on_tokens() -> None:
    model = TIMM["deit_distilled"]
    by_hand = naive_token_map(model, "blocks.0", X, 2, (4, 4))
    assert close(GradCAM(model, "blocks.0", upsample=False, relu=False).attribute(X, CLASSES), by_hand)
    for method in (EigenCAM(model), ScoreCAM(model, max_batch=64)):
        maps = method.attribute(X, CLASSES)
        assert maps.shape == (2, 1, 32, 32) and torch.isfinite(maps).all()
    assert GradCAM(model, upsample=False).attribute(X, CLASSES, wrt="blocks.1.norm1").shape == (2, 1, 4, 4)


def test_ablation_cam_zeroes_one_patch_channel_and_keeps_the_extra_tokens() -> None:
    model = TIMM["vit_registers"]
    layer, prefix = model.blocks[1].norm1, PREFIX["vit_registers"]
    with torch.no_grad():
        base = model(X)[torch.arange(2), torch.tensor(CLASSES)]
        seen: list[Tensor] = []
        handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
        model(X)
        handle.remove()
        acts = seen[0]
        weights = torch.zeros(2, acts.shape[-1])
        for k in range(acts.shape[-1]):
            def zero(m: nn.Module, i: object, o: Tensor, k: int = k) -> Tensor:
                o = o.clone()
                o[:, prefix:, k] = 0
                return o
            handle = layer.register_forward_hook(zero)
            weights[:, k] = (base - model(X)[torch.arange(2), torch.tensor(CLASSES)]) / base
            handle.remove()
    maps = (weights[:, None, :] * acts[:, prefix:]).sum(-1).view(2, 1, 4, 4)
    ours = AblationCAM(model, upsample=False, relu=False).attribute(X, CLASSES)
    torch.testing.assert_close(ours, maps, rtol=1e-3, atol=1e-4 * float(maps.abs().max()))


def test_tokens_round_trip() -> None:
    t = torch.randn(2, 3 + 6, 5)
    view = Tokens(prefix=3, grid=(2, 3))
    m = view.to_map(t)
    assert m.shape == (2, 5, 2, 3) and torch.equal(m[1, :, 1, 2], t[1, 3 + 5])
    assert torch.equal(view.to_layer(m, t), t)
    hw = torch.randn(2, 2, 3, 5)
    assert torch.equal(Tokens(channels_last=True).to_layer(Tokens(channels_last=True).to_map(hw), hw), hw)


class ChannelAttention(nn.Module):
    """A CNN's squeeze-and-excitation block: "attention" by name, not over tokens."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.fc(x.mean((2, 3))))[:, :, None, None]


def test_a_cnn_with_channel_attention_keeps_the_cnn_default_layer() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), ChannelAttention(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 5)).eval()
    cam = GradCAM(model)
    assert cam.attribute(X, CLASSES).shape == (2, 1, 32, 32) and cam.last_layers == ("2",)
    assert "attention_rollout" not in applicable(model) and "attention_rollout" in applicable(tv_vit())


# ---------------------------------------------------------------- attention rollout
def naive_vit_attention(model: TorchvisionViT, x: Tensor) -> list[Tensor]:
    """torchvision ViT's blocks run one by one, each attention asked for its weights (need_weights=True)."""
    tokens = model._process_input(x)
    tokens = torch.cat([model.class_token.expand(len(x), -1, -1), tokens], dim=1) + model.encoder.pos_embedding
    weights = []
    for block in model.encoder.layers:
        y = block.ln_1(tokens)
        _, w = block.self_attention(y, y, y, need_weights=True, average_attn_weights=False)
        weights.append(w)
        tokens = block(tokens)
    return weights


def naive_rollout(weights: list[Tensor], fusion: str = "mean") -> Tensor:
    """Abnar & Zuidema, sample by sample: B = rows_sum_to_1((fuse(A) + I) / 2), R = B_L ... B_1."""
    n, t = weights[0].shape[0], weights[0].shape[-1]
    out = []
    for s in range(n):
        r = torch.eye(t, dtype=torch.float64)
        for a in weights:
            heads = a[s].double()
            fused = {"mean": heads.mean(0), "max": heads.max(0).values, "min": heads.min(0).values}[fusion]
            b = 0.5 * fused + 0.5 * torch.eye(t, dtype=torch.float64)
            b = b / b.sum(1, keepdim=True)
            r = b @ r
        out.append(r)
    return torch.stack(out)


def as_map(relevance: Tensor, prefix: int, grid: tuple[int, int], class_row: bool = True) -> Tensor:
    row = relevance[:, 0, prefix:] if class_row else relevance[:, prefix:, prefix:].mean(1)
    return row.reshape(len(row), 1, *grid).float()


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_equals_a_naive_rollout_over_materialised_attention(fusion: str) -> None:
    with torch.no_grad():
        expected = as_map(naive_rollout(naive_vit_attention(tv_vit(), X), fusion), 1, (4, 4))
    ours = AttentionRollout(tv_vit(), head_fusion=fusion, upsample=False).attribute(X, CLASSES)
    assert close(ours, expected)
    upsampled = AttentionRollout(tv_vit(), head_fusion=fusion).attribute(X, 0)
    assert close(upsampled, F.interpolate(expected, size=(32, 32), mode="bilinear", align_corners=False))


def explicit_vit(model: TorchvisionViT, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """torchvision ViT's forward written out, attention computed by hand from the in-projection, so
    the weights ``A`` are on the path to the logits."""
    tokens = model._process_input(x)
    tokens = torch.cat([model.class_token.expand(len(x), -1, -1), tokens], dim=1) + model.encoder.pos_embedding
    weights = []
    for block in model.encoder.layers:
        attn = block.self_attention
        heads, width = attn.num_heads, attn.embed_dim
        y = block.ln_1(tokens)
        q, k, v = (F.linear(y, w, b).view(len(x), -1, heads, width // heads).transpose(1, 2)
                   for w, b in zip(attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3)))
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(width // heads), dim=-1)
        weights.append(a)
        mixed = (a @ v).transpose(1, 2).reshape(len(x), -1, width)
        tokens = tokens + attn.out_proj(mixed)
        tokens = tokens + block.mlp(block.ln_2(tokens))
    return model.heads(model.encoder.ln(tokens)[:, 0]), weights


def test_grad_rollout_equals_chefer_by_hand_on_an_explicit_forward() -> None:
    logits, weights = explicit_vit(tv_vit(), X)
    with torch.no_grad():
        assert close(logits, tv_vit()(X))  # the hand-written forward is the model's
    score = logits[torch.arange(2), torch.tensor(CLASSES)].sum()
    grads = torch.autograd.grad(score, weights)
    relevance = []
    for s in range(2):
        r = torch.eye(weights[0].shape[-1])
        for a, g in zip(weights, grads):
            cam = (g[s] * a[s]).clamp(min=0).mean(0)
            r = r + cam @ r
        relevance.append(r)
    expected = as_map(torch.stack(relevance).detach(), 1, (4, 4))
    assert close(GradRollout(tv_vit(), upsample=False).attribute(X, CLASSES), expected)
    other = GradRollout(tv_vit(), upsample=False).attribute(X, targets=[CLASSES, [0, 0]])
    assert close(other[0], expected) and not close(other[1], expected, 1e-2)  # per class


@pytest.mark.parametrize("name", ["vit", "vit_registers", "deit_distilled", "vit_avg", "vit_map"])
def test_explicit_attention_gives_what_fused_attention_gives(name: str) -> None:
    fused = TIMM[name]
    explicit = copy.deepcopy(fused)
    for module in explicit.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    assert any(getattr(m, "fused_attn", None) is True for m in fused.modules())
    for method in (AttentionRollout, GradRollout):
        a = method(fused, upsample=False).attribute(X, CLASSES)
        b = method(explicit, upsample=False).attribute(X, CLASSES)
        assert a.shape == (2, 1, 4, 4) and close(a, b)
    # the class token's row where there is one; else the mean over the patch tokens
    with torch.no_grad(), AttentionCapture() as capture:
        fused(X)
    assert len(capture.weights) == 2 + (name == "vit_map")  # the blocks', then the pooling head's [1, T]
    expected = as_map(naive_rollout(capture.weights[:2]), PREFIX[name], (4, 4), class_row=PREFIX[name] > 0)
    assert close(AttentionRollout(fused, upsample=False).attribute(X, 0), expected)


def test_capture_answers_fused_attention_as_the_model_does() -> None:
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    q = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(1))
    mask = torch.eye(5, dtype=torch.bool).roll(1, 0)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, 4] = True
    for kwargs in ({"need_weights": False}, {"attn_mask": mask}, {"key_padding_mask": padding},
                   {"attn_mask": mask, "key_padding_mask": padding, "average_attn_weights": False}):
        out, w = mha(q, q, q, **kwargs)
        with AttentionCapture() as capture:
            ours, ours_w = mha(q, q, q, **kwargs)
        assert close(ours, out) and (w is None or close(ours_w, w))
        assert len(capture.weights) == 1 and capture.weights[0].shape == (3, 2, 5, 5)
    qh, kh, vh = (torch.randn(2, 2, 4, 3) for _ in range(3))
    for kwargs in ({}, {"is_causal": True}, {"attn_mask": (torch.rand(4, 4) > 0.3) | torch.eye(4, dtype=torch.bool)},
                   {"scale": 0.3}):
        with AttentionCapture() as capture:
            ours = F.scaled_dot_product_attention(qh, kh, vh, **kwargs)
        assert close(ours, F.scaled_dot_product_attention(qh, kh, vh, **kwargs))


def test_rollout_refuses_windowed_attention_and_convolutional_networks() -> None:
    with pytest.raises(ConvscopeError, match="over windows.*GradCAM"):
        AttentionRollout(TIMM["swin"]).attribute(X, 0)
    with pytest.raises(ConvscopeError, match="found no attention"):
        GradRollout(torchvision.models.resnet18(num_classes=5)).attribute(X, 0)
    with pytest.raises(ConvscopeError, match="head_fusion"):
        AttentionRollout(tv_vit(), head_fusion="median")
    with pytest.raises(ConvscopeError, match="wrt"):
        AttentionRollout(tv_vit()).attribute(X, 0, wrt="encoder")


def test_rollout_methods_are_registered() -> None:
    assert get_method("attention_rollout") is AttentionRollout and get_method("grad-rollout") is GradRollout


# ---------------------------------------------------------------- the user's model is left alone
def state(model: nn.Module) -> tuple[object, ...]:
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()]
    flags = [(m.training, getattr(m, "fused_attn", None)) for m in model.modules()]
    params = {k: v.clone() for k, v in model.state_dict().items()}
    return hooks, flags, params, [p.grad for p in model.parameters()]


def same(before: tuple[object, ...], after: tuple[object, ...]) -> bool:
    return (before[0] == after[0] and before[1] == after[1] and before[3] == after[3]
            and all(torch.equal(before[2][k], after[2][k]) for k in before[2]))  # type: ignore[index]


class Exploding(nn.Module):
    """Runs the transformer, then raises."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        self.inner(x)
        raise RuntimeError("boom")


@pytest.mark.parametrize("make", [GradCAM, AttentionRollout, GradRollout], ids=lambda c: c.__name__)
def test_the_model_is_not_changed_even_when_its_forward_raises(make) -> None:  # type: ignore[no-untyped-def]
    model = copy.deepcopy(TIMM["vit"]).train()
    before, x = state(model), X.clone()
    make(model).attribute(x, CLASSES)
    assert same(before, state(model)) and torch.equal(x, X)
    exploding = Exploding(model)
    with pytest.raises(ConvscopeError, match="boom"):
        make(exploding, **({"layer": "inner.blocks.1.norm1"} if make is GradCAM else {})).attribute(x, CLASSES)
    assert same(before, state(model)) and torch._C._len_torch_function_stack() == 0
