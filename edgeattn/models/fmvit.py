"""FMViT: a hybrid conv/attention network that mixes high- and low-frequency features (design: docs/fmvit.md).

Layout: a reparameterizable stem (3x3 stride-2 conv, then depthwise 3x3 + pointwise 1x1 with stride 2, or 1
for inputs below 64 px), then four stages at strides 4/8/16/32 (2/4/8/16 for small inputs). Stages 1-2 are
high-frequency conv stages (:class:`HFBlock`); stages 3-4 mix a depthwise-conv path with RLMHSA through CFB
(:class:`FMBlock`). Each stage after the first opens with a MobileOne-style reparameterizable downsampling
(depthwise 3x3 stride 2 + pointwise 1x1; ``downsample="dense"`` uses one dense 3x3 instead). Head: global
average pool + Linear.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgeattn.blocks.fmvit import FMBlock, HFBlock
from edgeattn.blocks.rep import RepConv, check_input, param_dtype
from edgeattn.models._checks import check_positive_int, check_positive_ints, check_positive_numbers
from edgeattn.models.registry import register_model

__all__ = ["FMViT", "fmvit_t", "fmvit_s", "fmvit_b", "FMVIT_CONFIGS"]

# Per size: stage widths and depths, heads of stages 3-4 (head_dim 32), gMLP expansion per stage, and the
# number of over-parameterized k x k branches in the stem/downsampling convs (MobileOne uses 4 for its
# smallest model).
FMVIT_CONFIGS: dict[str, dict] = {
    "t": {
        "widths": (32, 64, 128, 256),
        "depths": (1, 2, 4, 1),
        "heads": (4, 8),
        "mlp_ratios": (2, 2, 3, 3),
        "num_branches": 4,
    },
    "s": {
        "widths": (48, 96, 192, 384),
        "depths": (2, 2, 6, 2),
        "heads": (6, 12),
        "mlp_ratios": (3, 3, 3, 3),
        "num_branches": 2,
    },
    "b": {
        "widths": (64, 128, 256, 512),
        "depths": (2, 3, 8, 3),
        "heads": (8, 16),
        "mlp_ratios": (4, 4, 4, 4),
        "num_branches": 1,
    },
}


class FMViT(nn.Module):
    """FMViT classifier mapping (B, C, H, W) -> (B, num_classes); any H, W (fully convolutional up to the pool).

    ``model_name`` names the model in input errors (the registry factories set theirs).
    """

    model_name = "FMViT"

    def __init__(
        self,
        widths: Sequence[int],
        depths: Sequence[int],
        heads: Sequence[int],
        mlp_ratios: Sequence[float] = (3.0, 3.0, 3.0, 3.0),
        num_branches: int = 1,
        sr_ratios: Sequence[int] = (2, 1),
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        softmax: str = "exact",
        gelu: str = "exact",
        downsample: str = "dwpw",
    ) -> None:
        super().__init__()
        if downsample not in ("dense", "dwpw"):
            raise ValueError(f"FMViT: unknown downsample {downsample!r}; allowed: 'dense', 'dwpw'")
        check_positive_int(
            "FMViT", num_classes=num_classes, in_chans=in_chans, img_size=img_size, num_branches=num_branches
        )
        for key, values in (("widths", widths), ("depths", depths), ("heads", heads), ("sr_ratios", sr_ratios)):
            check_positive_ints("FMViT", key, values)
        check_positive_numbers("FMViT", "mlp_ratios", mlp_ratios)
        if (
            len(widths) != 4
            or len(depths) != 4
            or len(mlp_ratios) != 4
            or len(heads) != 2
            or len(sr_ratios) != 2
        ):
            raise ValueError(
                "FMViT: widths/depths/mlp_ratios need 4 entries, heads/sr_ratios 2 (stages 3, 4)"
            )
        _check_fmvit_shapes(widths, heads, mlp_ratios)
        self.input_size = (in_chans, img_size, img_size)
        self.num_classes = num_classes
        # Small inputs (e.g. 32x32 digits) keep more resolution: the stem downsamples 2x instead of 4x.
        stem2_stride = 2 if img_size >= 64 else 1

        def down(cin: int, cout: int, stride: int) -> nn.Module:
            if downsample == "dense":
                return RepConv(cin, cout, 3, stride=stride, num_branches=num_branches)
            # MobileOne-style: reparameterizable depthwise 3x3 (strided) then pointwise 1x1
            return nn.Sequential(
                RepConv(cin, cin, 3, stride=stride, groups=cin, num_branches=num_branches),
                RepConv(cin, cout, 1, num_branches=num_branches),
            )

        self.stem = nn.Sequential(
            RepConv(in_chans, widths[0] // 2, 3, stride=2, num_branches=num_branches),
            down(widths[0] // 2, widths[0], stem2_stride),
        )
        stages: list[nn.Module] = []
        for i, (width, depth, ratio) in enumerate(zip(widths, depths, mlp_ratios, strict=True)):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(down(widths[i - 1], width, 2))
            for _ in range(depth):
                if i < 2:
                    layers.append(HFBlock(width, ratio, gelu=gelu))
                else:
                    layers.append(
                        FMBlock(width, heads[i - 2], sr_ratios[i - 2], ratio, softmax=softmax, gelu=gelu)
                    )
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the last stage's (B, widths[-1], H/32, W/32) map."""
        check_input(self.model_name, x, ("N", self.input_size[0], "H", "W"), dtype=param_dtype(self))
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=(2, 3)))


def _check_fmvit_shapes(widths: Sequence[int], heads: Sequence[int], mlp_ratios: Sequence[float]) -> None:
    """Raise ``ValueError`` naming the argument for widths/heads/ratios the layers cannot be built from (the
    layers' own errors would name their parameters, e.g. RLMHSA's ``dim``, not the model's)."""
    if widths[0] < 2:
        raise ValueError(
            f"FMViT: widths[0] must be >= 2 (the stem's first conv has widths[0] // 2 channels), got {widths[0]}"
        )
    for i, n_heads in enumerate(heads):
        if widths[i + 2] % n_heads:
            raise ValueError(
                f"FMViT: heads[{i}]={n_heads} must divide widths[{i + 2}]={widths[i + 2]} (stage {i + 3} attention)"
            )
    for i, (width, ratio) in enumerate(zip(widths, mlp_ratios, strict=True)):
        if int(width * ratio) < 1:
            raise ValueError(f"FMViT: mlp_ratios[{i}]={ratio!r} gives widths[{i}]={width} a gMLP hidden width of 0")


def _build(
    size: str, num_classes: int, in_chans: int, img_size: int, softmax: str, gelu: str, /, **kw
) -> FMViT:
    # Positional-only, so a user's ``size=...`` lands in ``kw`` and FMViT rejects it as an unexpected keyword
    # (the size is the factory's name) instead of clashing with this function's own ``size``.
    cfg = {**FMVIT_CONFIGS[size], **kw}
    model = FMViT(
        num_classes=num_classes, in_chans=in_chans, img_size=img_size, softmax=softmax, gelu=gelu, **cfg
    )
    model.model_name = f"fmvit_{size}"
    return model


@register_model
def fmvit_t(
    num_classes: int = 1000,
    in_chans: int = 3,
    img_size: int = 224,
    softmax: str = "exact",
    gelu: str = "exact",
    **kwargs,
) -> FMViT:
    """FMViT-T: 1.94M parameters, 0.24G MACs at 224x224 (deploy form)."""
    return _build("t", num_classes, in_chans, img_size, softmax, gelu, **kwargs)


@register_model
def fmvit_s(
    num_classes: int = 1000,
    in_chans: int = 3,
    img_size: int = 224,
    softmax: str = "exact",
    gelu: str = "exact",
    **kwargs,
) -> FMViT:
    """FMViT-S: 6.9M parameters, 0.86G MACs at 224x224 (deploy form)."""
    return _build("s", num_classes, in_chans, img_size, softmax, gelu, **kwargs)


@register_model
def fmvit_b(
    num_classes: int = 1000,
    in_chans: int = 3,
    img_size: int = 224,
    softmax: str = "exact",
    gelu: str = "exact",
    **kwargs,
) -> FMViT:
    """FMViT-B: 19.6M parameters, 2.44G MACs at 224x224 (deploy form)."""
    return _build("b", num_classes, in_chans, img_size, softmax, gelu, **kwargs)
