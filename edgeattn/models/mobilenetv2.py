"""MobileNet-V2 and its ELA / ULSAM variants.

- ``mobilenetv2``: the standard network (width 1.0: ~3.5M parameters, ~300M MACs at 224x224).
- ``mobilenetv2_ela``: ELA-L inside every expanding inverted residual, after the depthwise conv (and its
  BN + ReLU6) and before the projecting 1x1, as the ELA authors place it.
- ``mobilenetv2_ulsam``: ULSAM (g=4) on the output of late stride-1 inverted residuals at low resolution
  (see ``ULSAM_AFTER``): after the last 96-channel block (14x14 at 224 input) and after the two stride-1
  160-channel blocks (7x7). ULSAM is inserted there, no block is removed.

Below 64 px input the stem and the first stride-2 stage run at stride 1 (the usual CIFAR-style adaptation),
so a 32x32 input ends at 2x2 instead of 1x1.
"""

from __future__ import annotations

from numbers import Real

import torch
from torch import nn

from edgeattn.blocks.ela import ELA
from edgeattn.blocks.rep import ConvBN, check_input, param_dtype
from edgeattn.blocks.ulsam import ULSAM
from edgeattn.models._checks import check_positive_int
from edgeattn.models.registry import register_model

__all__ = ["MobileNetV2", "InvertedResidual", "mobilenetv2", "mobilenetv2_ela", "mobilenetv2_ulsam"]

# expansion t, output channels c, repeats n, first stride s
MOBILENETV2_CFG = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# (stage index, block index within the stage) whose output gets a ULSAM module in mobilenetv2_ulsam
ULSAM_AFTER = ((4, 2), (5, 1), (5, 2))


class InvertedResidual(nn.Module):
    """MobileNet-V2 block: [1x1 expand] -> 3x3 depthwise -> [ELA] -> 1x1 project (+ residual if it fits)."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, expand: int, attention: str | None = None
    ) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBN(in_ch, hidden, 1, act="relu6"))
        layers.append(ConvBN(hidden, hidden, 3, stride, groups=hidden, act="relu6"))
        if attention == "ela" and expand != 1:
            layers.append(ELA(hidden, "L"))
        layers.append(ConvBN(hidden, out_ch, 1))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNet-V2 classifier (B, C, H, W) -> (B, num_classes); ``attention``: None, "ela" or "ulsam".

    ``softmax`` is the method of ULSAM's softmax, the model's only one (so ``attention="ulsam"`` only). Any H, W
    (convolutional up to the global pool); ``model_name`` names the model in input errors.
    """

    model_name = "MobileNetV2"

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        attention: str | None = None,
        ulsam_subspaces: int = 4,
        dropout: float = 0.2,
        softmax: str = "exact",
    ) -> None:
        super().__init__()
        if attention not in (None, "ela", "ulsam"):
            raise ValueError(f"MobileNetV2: unknown attention {attention!r}; allowed: None, 'ela', 'ulsam'")
        check_positive_int(
            "MobileNetV2",
            num_classes=num_classes,
            in_chans=in_chans,
            img_size=img_size,
            ulsam_subspaces=ulsam_subspaces,
        )
        if attention == "ulsam":
            ulsam_widths = sorted({MOBILENETV2_CFG[stage][1] for stage, _ in ULSAM_AFTER})
            if any(c % ulsam_subspaces for c in ulsam_widths):
                raise ValueError(
                    f"MobileNetV2: ulsam_subspaces={ulsam_subspaces} must divide the channels ULSAM sees "
                    f"({', '.join(map(str, ulsam_widths))})"
                )
        if isinstance(dropout, bool) or not isinstance(dropout, Real) or not 0 <= dropout < 1:
            raise ValueError(f"MobileNetV2: dropout must be a number in [0, 1), got {dropout!r}")
        if softmax != "exact" and attention != "ulsam":
            raise ValueError(
                f"MobileNetV2: softmax={softmax!r} needs attention='ulsam' (ULSAM holds the model's only softmax)"
            )
        self.input_size = (in_chans, img_size, img_size)
        self.num_classes = num_classes
        small = img_size < 64
        features: list[nn.Module] = [ConvBN(in_chans, 32, 3, stride=1 if small else 2, act="relu6")]
        in_ch = 32
        for stage, (t, c, n, s) in enumerate(MOBILENETV2_CFG):
            for i in range(n):
                stride = s if i == 0 else 1
                if small and stage == 1 and i == 0:
                    stride = 1
                features.append(
                    InvertedResidual(in_ch, c, stride, t, attention="ela" if attention == "ela" else None)
                )
                in_ch = c
                if attention == "ulsam" and (stage, i) in ULSAM_AFTER:
                    features.append(ULSAM(c, ulsam_subspaces, softmax=softmax))
        features.append(ConvBN(in_ch, 1280, 1, act="relu6"))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal convolutions (fan in), unit BatchNorms, a small classifier. torch's default conv init shrinks
        the signal ~2.4x per conv; with eval-mode BatchNorm (identity until trained) 52 of them left a random model's
        features at ~1e-8, so every input gave the same logits and no parity gate could see a broken graph. Fan-in
        scaling keeps them at ~1.6 (measured at 32 and 224 px)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_classes)."""
        check_input(self.model_name, x, ("N", self.input_size[0], "H", "W"), dtype=param_dtype(self))
        return self.classifier(self.features(x).mean(dim=(2, 3)))


@register_model
def mobilenetv2(num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, **kwargs) -> MobileNetV2:
    """MobileNet-V2 1.0 (~3.5M parameters at 1000 classes)."""
    return _named("mobilenetv2", MobileNetV2(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs))


@register_model
def mobilenetv2_ela(num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, **kwargs) -> MobileNetV2:
    """MobileNet-V2 with ELA-L after the depthwise conv of every expanding inverted residual."""
    model = MobileNetV2(num_classes=num_classes, in_chans=in_chans, img_size=img_size, attention="ela", **kwargs)
    return _named("mobilenetv2_ela", model)


@register_model
def mobilenetv2_ulsam(
    num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, softmax: str = "exact", **kwargs
) -> MobileNetV2:
    """MobileNet-V2 with ULSAM (g=4) after late stride-1 inverted residuals (see ``ULSAM_AFTER``);
    ``softmax`` is the method of ULSAM's softmax over positions."""
    model = MobileNetV2(
        num_classes=num_classes,
        in_chans=in_chans,
        img_size=img_size,
        attention="ulsam",
        softmax=softmax,
        **kwargs,
    )
    return _named("mobilenetv2_ulsam", model)


def _named(name: str, model: MobileNetV2) -> MobileNetV2:
    model.model_name = name  # the registry name, for input errors
    return model
