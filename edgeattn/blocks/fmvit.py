"""FMViT parts, designed here (only the paper's abstract was published; see docs/fmvit.md).

- :class:`GMLP` — "convolutional multi-group reparameterization" MLP: two 1x1 conv layers, each a set of
  parallel 1x1 conv-BN branches with different group counts that fold into one dense 1x1 at deploy.
- :class:`RLMHSA` — lightweight multi-head self-attention: queries from every token, keys/values from
  average-pooled tokens (``sr_ratio`` x fewer per side); the input BatchNorm folds into the q and kv Linear
  layers at deploy (BN is per-channel affine and commutes with average pooling). Same quant points as
  :class:`edgeattn.blocks.Attention`.
- :class:`CFB` — convolutional fusion block: concatenates the high- and low-frequency paths and fuses them
  with a multi-group 1x1 conv, then a reparameterizable depthwise 3x3.
- :class:`HFBlock` (conv stages: high frequency only) and :class:`FMBlock` (mixing stages: high-frequency
  depthwise conv path + low-frequency RLMHSA path, fused by CFB, then gMLP).

All tensors are NCHW; every train-time branch and BN folds away in ``reparameterize()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgeattn.approx import ApproxGELU, ApproxSoftmax
from edgeattn.blocks.attention import ATTENTION_QUANT_POINTS, add_quant_points
from edgeattn.blocks.rep import (
    MultiGroupConv1x1,
    RepConv,
    check_input,
    check_positive_ints,
    format_shape,
    fuse_bn_into_linear,
    param_dtype,
    set_weight_bias,
    static_shape,
)

__all__ = ["GMLP", "RLMHSA", "CFB", "HFBlock", "FMBlock", "usable_groups"]


def usable_groups(channels: Sequence[int], groups: Sequence[int], where: str = "usable_groups") -> tuple[int, ...]:
    """The group counts of ``groups`` that divide every channel count in ``channels`` (1 always kept).

    Raises ``ValueError`` (prefixed with ``where``, the calling block) for a group count that is not a positive
    integer: 0 would divide by zero here.
    """
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise ValueError(f"{where}: groups must be a list of positive integers, got {groups!r}")
    check_positive_ints(where, **{f"groups[{i}]": g for i, g in enumerate(groups)})
    keep = tuple(g for g in groups if all(c % g == 0 for c in channels))
    return keep if 1 in keep else (1, *keep)


class GMLP(nn.Module):
    """gMLP: ``fc2(act(fc1(x)))`` with multi-group reparameterizable 1x1 convs (NCHW).

    Quant points as in :class:`edgeattn.blocks.Mlp`: ``in_quant`` (before fc1) and ``hidden_quant``
    (before fc2). ``groups`` lists the branch group counts; counts that do not divide the widths are dropped.
    """

    quant_point_consumers = {"in_quant": ("fc1",), "hidden_quant": ("fc2",)}

    def __init__(
        self, dim: int, hidden_dim: int, groups: Sequence[int] = (1, 2, 4), gelu: str = "exact"
    ) -> None:
        super().__init__()
        check_positive_ints("GMLP", dim=dim, hidden_dim=hidden_dim)
        g = usable_groups((dim, hidden_dim), groups, "GMLP")
        self.dim = dim
        self.in_quant = nn.Identity()
        self.fc1 = MultiGroupConv1x1(dim, hidden_dim, g)
        self.act = ApproxGELU(method=gelu)
        self.hidden_quant = nn.Identity()
        self.fc2 = MultiGroupConv1x1(hidden_dim, dim, g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, dim, H, W)."""
        check_input("GMLP", x, ("N", self.dim, "H", "W"), dtype=param_dtype(self))
        return self.fc2(self.hidden_quant(self.act(self.fc1(self.in_quant(x)))))


class RLMHSA(nn.Module):
    """Reduced lightweight multi-head self-attention over an NCHW feature map.

    ``x -> BN -> in_quant``; q from all H*W tokens, k and v from the ``sr_ratio`` x ``sr_ratio``
    average-pooled map (no pooling when the map is smaller than ``sr_ratio``), re-quantized by ``kv_in_quant``
    so that every MatMul input carries Q/DQ. The 1/sqrt(head_dim) scale is applied to q before ``q_quant``
    (as in :class:`edgeattn.blocks.Attention`). Deploy: BN folded into ``q`` and ``kv``.
    """

    # the layers each quant point feeds (read by edgeattn.quant when Linear layers stay float)
    quant_point_consumers = {"in_quant": ("q", "kv"), "kv_in_quant": ("kv",), "proj_in_quant": ("proj",)}

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        sr_ratio: int = 2,
        qkv_bias: bool = True,
        softmax: str = "exact",
    ) -> None:
        super().__init__()
        check_positive_ints("RLMHSA", dim=dim, num_heads=num_heads, sr_ratio=sr_ratio)
        if dim % num_heads:
            raise ValueError(f"RLMHSA: dim={dim} must be divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.sr_ratio = dim, num_heads, sr_ratio
        self.head_dim = dim // num_heads
        self.scale = float(self.head_dim**-0.5)
        self.norm = nn.BatchNorm2d(dim)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.softmax = ApproxSoftmax(method=softmax, dim=-1)
        # kv_in_quant: the pooled tokens (AveragePool's float output feeds the kv MatMul)
        add_quant_points(self, ("in_quant", "kv_in_quant", *ATTENTION_QUANT_POINTS[1:]))
        self.deployed = False

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}, deployed={self.deployed}"

    def pool_ratio(self, h: int, w: int) -> int:
        """The K/V average-pooling window (and stride) on an ``h`` x ``w`` map: ``sr_ratio``, or 1 (no pooling) when
        the map is smaller than that. Static: it depends on the shape only."""
        return self.sr_ratio if min(h, w) >= self.sr_ratio else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        check_input("RLMHSA", x, ("N", self.dim, "H", "W"), dtype=param_dtype(self))
        b, c, h, w = x.shape
        if not self.deployed:
            x = self.norm(x)
        x = self.in_quant(x)
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        r = self.pool_ratio(h, w)
        pooled = F.avg_pool2d(x, r, r) if r > 1 else x
        kv_tokens = self.kv_in_quant(pooled.flatten(2).transpose(1, 2))  # (B, M, C), M = N / r^2
        m = kv_tokens.shape[1]
        q = self.q(tokens).reshape(b, h * w, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv(kv_tokens).reshape(b, m, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = self.q_quant(q * self.scale)
        k = self.k_quant(kv[0])
        v = self.v_quant(kv[1])
        logits = self.logits_probe(q @ k.transpose(-2, -1))  # (B, H, N, M)
        attn = self.attn_quant(self.softmax(logits))
        out = (attn @ v).transpose(1, 2).reshape(b, h * w, c)
        out = self.proj(self.proj_in_quant(out))
        return out.transpose(1, 2).reshape(b, c, h, w)

    def reparameterize(self) -> None:
        """Fold the input BatchNorm into ``q`` and ``kv`` (in place).

        ``kv`` reads the pooled map: average pooling is a mean of inputs and BN is per-channel affine, so
        ``pool(BN(x)) == BN(pool(x))`` and the same fold applies to both projections.
        """
        if self.deployed:
            return
        for name in ("q", "kv"):
            lin: nn.Linear = getattr(self, name)
            w, bias = fuse_bn_into_linear(self.norm, lin)
            set_weight_bias(lin, w, bias)
        del self.norm
        self.deployed = True


class CFB(nn.Module):
    """Convolutional fusion block: ``dw3x3(fuse1x1(concat(high, low)))``, both reparameterizable.

    The multi-group 1x1 with ``groups=2`` is exactly "each path projected on its own", the dense branch mixes
    them; the depthwise 3x3 (with 1x1 and identity branches) lets the fused map see its neighbours.
    """

    def __init__(self, dim: int, groups: Sequence[int] = (1, 2)) -> None:
        super().__init__()
        check_positive_ints("CFB", dim=dim)
        self.dim = dim
        self.fuse = MultiGroupConv1x1(2 * dim, dim, usable_groups((2 * dim, dim), groups, "CFB"))
        self.local = RepConv(dim, dim, 3, groups=dim, act=None)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """Two (B, dim, H, W) maps -> (B, dim, H, W)."""
        check_input("CFB", high, ("N", self.dim, "H", "W"), what="high", dtype=param_dtype(self))
        check_input("CFB", low, ("N", self.dim, "H", "W"), what="low", dtype=param_dtype(self))
        high_shape, low_shape = static_shape(high), static_shape(low)
        if high_shape != low_shape:
            shapes = f"{format_shape(high_shape)} and {format_shape(low_shape)}"
            raise ValueError(f"CFB expects high and low of the same shape, got {shapes}")
        return self.local(self.fuse(torch.cat([high, low], dim=1)))


class HFBlock(nn.Module):
    """High-frequency (conv-only) block: ``x + dw3x3(x)`` (a reparameterizable depthwise 3x3 with its 1x1
    scale branch; the block's residual is the identity, so the conv has no identity branch of its own),
    then ``x + gMLP(x)``."""

    def __init__(
        self, dim: int, mlp_ratio: float = 3.0, groups: Sequence[int] = (1, 2, 4), gelu: str = "exact"
    ) -> None:
        super().__init__()
        self.dim = dim
        self.mixer = RepConv(dim, dim, 3, groups=dim, use_identity=False, act=None)
        self.mlp = GMLP(dim, int(dim * mlp_ratio), groups, gelu=gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, dim, H, W)."""
        check_input("HFBlock", x, ("N", self.dim, "H", "W"), dtype=param_dtype(self))
        x = x + self.mixer(x)
        return x + self.mlp(x)


class FMBlock(nn.Module):
    """Frequency-mixing block: ``x + CFB(high(x), low(x))`` then ``x + gMLP(x)``.

    high: reparameterizable depthwise 3x3 (local, high frequency); low: :class:`RLMHSA` (global, over pooled
    keys/values, low frequency).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int = 2,
        mlp_ratio: float = 3.0,
        groups: Sequence[int] = (1, 2, 4),
        softmax: str = "exact",
        gelu: str = "exact",
    ) -> None:
        super().__init__()
        self.dim = dim
        # no identity branch: the block's residual already carries x, the path carries only the local part
        self.high = RepConv(dim, dim, 3, groups=dim, use_identity=False, act=None)
        self.attn = RLMHSA(dim, num_heads, sr_ratio, softmax=softmax)
        self.cfb = CFB(dim)
        self.mlp = GMLP(dim, int(dim * mlp_ratio), groups, gelu=gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, dim, H, W)."""
        check_input("FMBlock", x, ("N", self.dim, "H", "W"), dtype=param_dtype(self))
        x = x + self.cfb(self.high(x), self.attn(x))
        return x + self.mlp(x)
