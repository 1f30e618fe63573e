"""edgeattn.fpga_hls: HLS C++ for an Edge-MoE-style attention accelerator, the project generator, the
fixed-point golden model, the g++ C-simulation runner and the analytical estimator.

Public API (see :mod:`edgeattn.fpga_hls.api`): ``generate_project``, ``run_csim``, ``estimate_model``,
``estimate``, ``HLSFormats``, ``ProjectInfo``.
"""

from __future__ import annotations

from edgeattn.fpga_hls.api import (
    HLSFormats,
    LayerShape,
    ProjectInfo,
    estimate,
    estimate_model,
    find_ap_types,
    find_compiler,
    generate_project,
    run_csim,
)

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
