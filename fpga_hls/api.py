"""Public API of :mod:`edgeattn.fpga_hls` (what the CLI and the demo call).

- :func:`generate_project` (model, profile, out_dir, layer=0, vectors=4, ...) -> :class:`ProjectInfo`
- :func:`run_csim` (project_dir) -> the ``csim_report.json`` dict
- :func:`estimate_model` (model, profile, layer=0) -> the analytical cycles / DSP / BRAM estimate
- :class:`HLSFormats`: the fixed-point widths (from a profile, or overridden for width sweeps)
"""

from __future__ import annotations

from typing import Any

from edgeattn.fpga_hls.csim import find_ap_types, find_compiler, run_csim
from edgeattn.fpga_hls.estimate import LayerShape, estimate
from edgeattn.fpga_hls.generator import ProjectInfo, generate_project
from edgeattn.fpga_hls.golden import HLSFormats

__all__ = [
    "HLSFormats",
    "LayerShape",
    "ProjectInfo",
    "estimate",
    "estimate_model",
    "find_ap_types",
    "find_compiler",
    "generate_project",
    "run_csim",
]


def estimate_model(model: Any, profile: Any, layer: int | None = 0, attn_parallel: int | None = None) -> dict:
    """Analytical estimate for encoder layer ``layer`` of ``model`` (``None``: whole ViT) on ``profile``."""
    from edgeattn.fpga_hls.extract import check_vit
    from edgeattn.fpga_hls.generator import _resolve_model, _resolve_profile

    from edgeattn.models.edge_moe_vit import MoEMlp

    prof = _resolve_profile(profile)
    hls = prof.hls
    if attn_parallel is not None:
        hls = hls.model_copy(update={"attn_parallel": int(attn_parallel)})
    net, name = _resolve_model(model)
    check_vit(net, name)
    blocks = list(net.blocks) if layer is None else [net.blocks[layer]]
    attn = blocks[0].attn
    moe = [b.mlp for b in blocks if isinstance(b.mlp, MoEMlp)]
    first_mlp = moe[0].experts[0] if moe else blocks[0].mlp
    shape = LayerShape(
        tokens=int(net.pos_embed.shape[1]),
        dim=attn.qkv.in_features,
        heads=attn.num_heads,
        hidden=first_mlp.fc1.out_features,
        experts=moe[0].num_experts if moe else 0,
        top_k=moe[0].top_k if moe else 0,
        depth=len(blocks),
        moe_layers=len(moe),
        patch_dim=int(net.patch_embed.weight[0].numel()) if layer is None else 0,
        classes=int(net.head.out_features) if layer is None else 0,
    )
    return estimate(shape, hls, HLSFormats.from_profile(hls))
