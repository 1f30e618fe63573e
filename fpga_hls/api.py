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
    """Analytical estimate for encoder layer ``layer`` of ``model`` (``None``: whole ViT) on ``profile``.

    The model, layer and ``attn_parallel`` are checked as :func:`generate_project` checks them; an
    ``attn_parallel`` above the model's token count is clamped to it as the generated design is (the result's
    ``parallelism`` holds ``attn_parallel``, the slots counted, and ``attn_parallel_requested``).
    """
    from edgeattn.fpga_hls.generator import _resolve_target, check_formats, model_shape, profile_label

    net, name, prof, hls = _resolve_target(model, profile, layer, attn_parallel)
    shape, fmt = model_shape(net, layer, name), HLSFormats.from_profile(hls)
    check_formats(fmt, shape, profile_label(profile, prof), profile=True)
    return estimate(shape, hls, fmt)
