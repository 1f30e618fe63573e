"""ULSAM: Ultra-Lightweight Subspace Attention Module.

The m input channels are split into g subspaces of G = m/g channels. Per subspace:
depthwise 1x1 conv -> BN -> ReLU -> 3x3 max-pool (stride 1, pad 1) -> pointwise conv G->1 -> BN -> ReLU ->
softmax over all h*w positions (one attention map A) -> ``A * F + F``; the subspaces are concatenated.
The softmax is an :class:`~edgeattn.approx.ApproxSoftmax` (``softmax=`` picks the method, exact by default), so
``edgeattn.approx.set_approximations`` and a device profile's ``approx`` reach it like an attention block's.

The g subspaces are computed together: the depthwise 1x1 over all m channels is the per-subspace depthwise
convs side by side, and a conv m->g with ``groups=g`` is the g pointwise G->1 convs side by side. That is the
same arithmetic as running the subspaces one by one, with fewer, larger ops for the runtimes. Conv weights:
m (depthwise) + m (pointwise) = 2m per module, as published. BatchNorm uses PyTorch's default momentum.
``reparameterize()`` folds both BNs into the convs before them.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeattn.approx import ApproxSoftmax
from edgeattn.blocks.rep import check_input, check_positive_ints, fuse_bn, param_dtype, set_weight_bias

__all__ = ["ULSAM"]


class ULSAM(nn.Module):
    """Subspace attention over (B, m, H, W) with ``num_subspaces`` (g) subspaces; m must divide by g.

    ``softmax``: the method of the softmax over positions (one of ``edgeattn.approx.SOFTMAX_METHODS``).
    """

    def __init__(self, channels: int, num_subspaces: int = 4, softmax: str = "exact") -> None:
        super().__init__()
        check_positive_ints("ULSAM", channels=channels, num_subspaces=num_subspaces)
        if channels % num_subspaces:
            raise ValueError(f"ULSAM: channels={channels} must be divisible by num_subspaces={num_subspaces}")
        self.channels, self.num_subspaces = channels, num_subspaces
        self.conv_dw = nn.Conv2d(channels, channels, 1, groups=channels)
        self.bn_dw = nn.BatchNorm2d(channels)
        self.relu_dw = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.conv_pw = nn.Conv2d(channels, num_subspaces, 1, groups=num_subspaces)
        self.bn_pw = nn.BatchNorm2d(num_subspaces)
        self.relu_pw = nn.ReLU()
        self.softmax = ApproxSoftmax(method=softmax, dim=-1)
        self.deployed = False

    def extra_repr(self) -> str:
        return f"{self.channels}, num_subspaces={self.num_subspaces}, deployed={self.deployed}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, m, H, W) -> (B, m, H, W)."""
        check_input("ULSAM", x, ("N", self.channels, "H", "W"), dtype=param_dtype(self))
        b, m, h, w = x.shape
        g = self.num_subspaces
        if self.deployed:
            a = self.relu_dw(self.conv_dw(x))
            a = self.relu_pw(self.conv_pw(self.maxpool(a)))
        else:
            a = self.relu_dw(self.bn_dw(self.conv_dw(x)))
            a = self.relu_pw(self.bn_pw(self.conv_pw(self.maxpool(a))))
        attn = self.softmax(a.reshape(b, g, 1, h * w))  # one map per subspace, over all positions
        feats = x.reshape(b, g, m // g, h * w)
        return (attn * feats + feats).reshape(b, m, h, w)

    def reparameterize(self) -> None:
        """Fold ``bn_dw`` into ``conv_dw`` and ``bn_pw`` into ``conv_pw`` (in place)."""
        if self.deployed:
            return
        for conv_name, bn_name in (("conv_dw", "bn_dw"), ("conv_pw", "bn_pw")):
            conv = getattr(self, conv_name)
            kernel, bias = fuse_bn(conv.weight, conv.bias, getattr(self, bn_name))
            set_weight_bias(conv, kernel, bias)
            delattr(self, bn_name)
        self.deployed = True
