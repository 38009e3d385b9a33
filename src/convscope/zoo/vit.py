"""``shapes-vit``: a small torchvision ``VisionTransformer`` for 3x64x64 Shapes images.

8x8 patches (64 tokens and a class token), 4 encoder layers of width 64 with 4 heads, MLP 128,
six classes. It is torchvision's own class (``conv_proj``, ``class_token``,
``encoder.layers[i].self_attention`` an ``nn.MultiheadAttention``), so tooling written for
``vit_b_16`` applies unchanged. torchvision is imported only when the model is built.

Example::

    logits = shapes_vit()(torch.zeros(1, 3, 64, 64))  # -> [1, 6]
"""

from __future__ import annotations

from torch import nn

from convscope.data.shapes import CLASSES


def shapes_vit(image_size: int = 64, patch_size: int = 8, num_layers: int = 4, num_heads: int = 4,
               hidden_dim: int = 64, mlp_dim: int = 128) -> nn.Module:
    """A ``torchvision.models.VisionTransformer`` of the given (small) configuration."""
    try:
        from torchvision.models import VisionTransformer
    except ImportError:
        from convscope.errors import ConvscopeError

        raise ConvscopeError("the zoo's shapes-vit is a torchvision VisionTransformer, and torchvision is not installed",
                             "pip install 'convscope[torchvision]'") from None
    return VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=num_layers, num_heads=num_heads,
                             hidden_dim=hidden_dim, mlp_dim=mlp_dim, num_classes=len(CLASSES))
