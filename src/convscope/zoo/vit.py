"""``shapes-vit``: a small torchvision ``VisionTransformer`` for 3x64x64 Shapes images.

A convolutional stem (three stride-2 conv-bn-relu, 3 -> 16 -> 32 -> 64 channels, then a 1x1
conv: torchvision's ``conv_stem_configs``, Xiao et al. 2021, "Early convolutions help
transformers see better") turns the image into 8x8 tokens, i.e. 8x8 patches; a class token; 2
encoder layers of width 64 with 4 heads, MLP 128; six classes. A plain 8x8 patchify learns
nothing in the zoo's budget of a minute on two cores (chance accuracy); with the stem it reaches
about 63% held-out accuracy (a partly trained ViT; see the README's zoo table). It is
torchvision's own class (``conv_proj``, ``class_token``, ``encoder.layers[i].self_attention`` an
``nn.MultiheadAttention``), so tooling written for ``vit_b_16`` applies unchanged. torchvision is
imported only when the model is built.

Example::

    logits = shapes_vit()(torch.zeros(1, 3, 64, 64))  # -> [1, 6]
"""

from __future__ import annotations

from torch import nn

from convscope.data.shapes import CLASSES


def shapes_vit(image_size: int = 64, patch_size: int = 8, num_layers: int = 2, num_heads: int = 4,
               hidden_dim: int = 64, mlp_dim: int = 128) -> nn.Module:
    """A ``torchvision.models.VisionTransformer`` of the given (small) configuration."""
    try:
        from torchvision.models import VisionTransformer
        from torchvision.models.vision_transformer import ConvStemConfig
    except ImportError:
        from convscope.errors import ConvscopeError

        raise ConvscopeError("the zoo's shapes-vit is a torchvision VisionTransformer, and torchvision is not installed",
                             "pip install 'convscope[torchvision]'") from None
    stem = [ConvStemConfig(out_channels=w, kernel_size=3, stride=2) for w in (16, 32, 64)]
    return VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=num_layers, num_heads=num_heads,
                             hidden_dim=hidden_dim, mlp_dim=mlp_dim, num_classes=len(CLASSES), conv_stem_configs=stem)
