"""Multi-head self-attention and MLP written from plain Linear / matmul / softmax.

Every tensor that quantization cares about passes through a named ``nn.Identity`` "quant point", so
``edgeattn.quant`` can swap it for a brevitas quantizer and hooks can probe it, and every exporter sees
ordinary MatMul / Softmax / Gemm nodes (no fused ``scaled_dot_product_attention``).

Order of operations (the shared contract): the 1/sqrt(head_dim) scale multiplies q *before* ``q_quant``
and the first matmul, which is what TensorRT's INT8 attention fusion looks for.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeattn.approx import ApproxGELU, ApproxSoftmax
from edgeattn.blocks.rep import check_input, check_positive_ints, param_dtype

__all__ = ["ATTENTION_QUANT_POINTS", "Attention", "Mlp", "add_quant_points"]

# The quant points of an attention block, in forward order. ``logits_probe`` (the attention logits before the
# softmax) is never quantized: EdgeQAT's distribution loss reads it.
ATTENTION_QUANT_POINTS = ("in_quant", "q_quant", "k_quant", "v_quant", "logits_probe", "attn_quant", "proj_in_quant")


def add_quant_points(block: nn.Module, names: tuple[str, ...] = ATTENTION_QUANT_POINTS) -> None:
    """Give ``block`` one ``nn.Identity`` per name: identities in float, brevitas quantizers after
    ``edgeattn.quant.quantize_model``, and a place for hooks to probe."""
    for name in names:
        block.add_module(name, nn.Identity())


class Attention(nn.Module):
    """Multi-head self-attention over (B, N, C) tokens with a pluggable softmax approximation.

    Args:
        dim: token width C; must divide by ``num_heads``.
        num_heads: number of heads H; ``head_dim = dim // num_heads``.
        qkv_bias: bias on the fused q/k/v projection.
        softmax: an ``edgeattn.approx`` softmax method name.
        attn_drop: dropout on the attention probabilities (train only).
        proj_drop: dropout after the output projection (train only).
    """

    # the layers each quant point feeds (read by edgeattn.quant when Linear layers stay float)
    quant_point_consumers = {"in_quant": ("qkv",), "proj_in_quant": ("proj",)}

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        softmax: str = "exact",
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive_ints("Attention", dim=dim, num_heads=num_heads)
        if dim % num_heads:
            raise ValueError(f"Attention: dim={dim} must be divisible by num_heads={num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = dim // num_heads
        self.scale = float(self.head_dim**-0.5)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.softmax = ApproxSoftmax(method=softmax, dim=-1)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        add_quant_points(self)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        check_input("Attention", x, ("N", "T", self.dim), dtype=param_dtype(self))
        b, n, c = x.shape
        x = self.in_quant(x)
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, H, N, hd)
        q = self.q_quant(q * self.scale)
        k = self.k_quant(k)
        v = self.v_quant(v)
        logits = self.logits_probe(q @ k.transpose(-2, -1))
        attn = self.attn_quant(self.softmax(logits))
        attn = self.attn_drop(attn)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(self.proj_in_quant(out)))


class Mlp(nn.Module):
    """Two-layer MLP ``fc2(act(fc1(x)))`` with a pluggable GELU approximation.

    Quant points: ``in_quant`` (before fc1) and ``hidden_quant`` (before fc2).
    """

    quant_point_consumers = {"in_quant": ("fc1",), "hidden_quant": ("fc2",)}

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        gelu: str = "exact",
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        out_features = in_features if out_features is None else out_features
        check_positive_ints(
            "Mlp", in_features=in_features, hidden_features=hidden_features, out_features=out_features
        )
        self.in_features = in_features
        self.in_quant = nn.Identity()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = ApproxGELU(method=gelu)
        self.hidden_quant = nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)."""
        check_input("Mlp", x, ("...", self.in_features), dtype=param_dtype(self))
        x = self.act(self.fc1(self.in_quant(x)))
        x = self.drop(x)
        return self.drop(self.fc2(self.hidden_quant(x)))
