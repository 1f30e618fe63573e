"""Plain ViT baseline (``vit_tiny``): patch embedding, class token, pre-norm Attention/Mlp blocks."""

from __future__ import annotations

import torch
from torch import nn

from edgeattn.blocks.attention import Attention, Mlp
from edgeattn.blocks.rep import check_input, param_dtype
from edgeattn.models._checks import check_positive_int, check_positive_number
from edgeattn.models.registry import register_model

__all__ = ["VisionTransformer", "ViTBlock", "vit_tiny"]


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, softmax: str = "exact", gelu: str = "exact"
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True, softmax=softmax)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), gelu=gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT classifier mapping (B, C, H, W) -> (B, num_classes) with a learned class token and position table.

    Shapes are fixed at construction (``img_size``/``patch_size``), so the graph is static for export and the
    input must be exactly (B, in_chans, img_size, img_size): the position table has one row per patch.
    """

    _arg_owner = "vit"  # names the model in argument errors (subclasses override)
    model_name = "vit"  # names the model in input errors (factories set their registry name)

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        softmax: str = "exact",
        gelu: str = "exact",
    ) -> None:
        super().__init__()
        check_positive_int(
            self._arg_owner,
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
        )
        check_positive_number(self._arg_owner, mlp_ratio=mlp_ratio)
        if img_size % patch_size:
            raise ValueError(f"{self._arg_owner}: img_size={img_size} must be divisible by patch_size={patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"{self._arg_owner}: embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        if int(embed_dim * mlp_ratio) < 1:  # the MLP's hidden width; 0 would build empty Linear layers
            raise ValueError(
                f"{self._arg_owner}: mlp_ratio={mlp_ratio} leaves the MLP no hidden unit "
                f"(int(embed_dim * mlp_ratio) = 0; embed_dim={embed_dim})"
            )
        self.input_size = (in_chans, img_size, img_size)
        self.num_classes = num_classes
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, embed_dim) * 0.02)
        self.blocks = nn.Sequential(
            *[ViTBlock(embed_dim, num_heads, mlp_ratio, softmax=softmax, gelu=gelu) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, img_size, img_size) -> (B, num_classes)."""
        check_input(self.model_name, x, ("N", *self.input_size), dtype=param_dtype(self))
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@register_model
def vit_tiny(
    num_classes: int = 1000,
    in_chans: int = 3,
    img_size: int = 224,
    patch_size: int | None = None,
    softmax: str = "exact",
    gelu: str = "exact",
    **kwargs,
) -> VisionTransformer:
    """ViT-Tiny (DeiT-Ti sizes: width 192, depth 12, 3 heads, ~5.7M params at 224x224, patch 16).

    ``patch_size`` defaults to 16 at >= 112 px and to 4 below, so small inputs (e.g. 32x32 digits) still
    give a useful number of tokens.
    """
    if patch_size is None:
        check_positive_int("vit", img_size=img_size)  # compared below, before the model checks it
        patch_size = 16 if img_size >= 112 else 4
        if img_size % patch_size:  # the user never named a patch size: say which one applies and why
            raise ValueError(
                f"vit_tiny: img_size={img_size} must be divisible by its patch size, {patch_size} at this size "
                "(4 below 112 px, 16 from 112 px); or pass patch_size"
            )
    model = VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        softmax=softmax,
        gelu=gelu,
        **kwargs,
    )
    model.model_name = "vit_tiny"
    return model
