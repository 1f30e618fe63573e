"""ELA: Efficient Local Attention (coordinate attention with a shared Conv1d + GroupNorm).

``z_h`` = mean over W (C x H), ``z_w`` = mean over H (C x W); one bias-free Conv1d (no channel reduction) and
one GroupNorm are shared by both directions; ``y = x * sigmoid(GN(conv(z_h))) * sigmoid(GN(conv(z_w)))``.
The four published versions (kernel, conv groups, GN groups) are T (5, C, 32), B (7, C, 16),
S (5, C/8, 16) and L (7, C/8, 16). There is no BatchNorm and nothing to reparameterize.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeattn.blocks.rep import check_input, check_positive_ints, param_dtype

__all__ = ["ELA", "ELA_VARIANTS"]

# variant -> (kernel size, "depthwise" or channels-per-conv-group, GroupNorm groups)
ELA_VARIANTS: dict[str, tuple[int, str | int, int]] = {
    "T": (5, "depthwise", 32),
    "B": (7, "depthwise", 16),
    "S": (5, 8, 16),  # conv groups = C / 8, i.e. 8 channels per group
    "L": (7, 8, 16),
}


class ELA(nn.Module):
    """Efficient Local Attention over (B, C, H, W); ``variant`` is one of T, B, S, L.

    Raises ``ValueError`` if ``channels`` is not divisible by the variant's GroupNorm group count (and by 8
    for S and L).
    """

    def __init__(self, channels: int, variant: str = "B") -> None:
        super().__init__()
        if variant not in ELA_VARIANTS:
            raise ValueError(f"unknown ELA variant {variant!r}; allowed: {', '.join(ELA_VARIANTS)}")
        kernel, per_group, gn_groups = ELA_VARIANTS[variant]
        check_positive_ints(f"ELA-{variant}", channels=channels)
        if per_group != "depthwise" and channels % per_group:
            raise ValueError(f"ELA-{variant}: channels={channels} must be divisible by {per_group}")
        if channels % gn_groups:
            raise ValueError(
                f"ELA-{variant}: channels={channels} must be divisible by its {gn_groups} GroupNorm groups"
            )
        conv_groups = channels if per_group == "depthwise" else channels // int(per_group)
        self.variant, self.channels = variant, channels
        self.conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=conv_groups, bias=False)
        self.gn = nn.GroupNorm(gn_groups, channels)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        check_input(f"ELA-{self.variant}", x, ("N", self.channels, "H", "W"), dtype=param_dtype(self))
        z_h = x.mean(dim=3)  # (B, C, H): pooled along the width
        z_w = x.mean(dim=2)  # (B, C, W): pooled along the height
        y_h = self.gate(self.gn(self.conv(z_h))).unsqueeze(3)  # (B, C, H, 1)
        y_w = self.gate(self.gn(self.conv(z_w))).unsqueeze(2)  # (B, C, 1, W)
        return x * y_h * y_w

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}"
