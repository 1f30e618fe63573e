"""edgeattn.fpga_hls: HLS C++ for an Edge-MoE-style attention accelerator, the project generator, the
fixed-point golden model, the g++ C-simulation runner and the analytical estimator.

Public API (see :mod:`edgeattn.fpga_hls.api`): ``generate_project``, ``run_csim``, ``estimate_model``,
``estimate``, ``HLSFormats``, ``ProjectInfo``.
"""

from __future__ import annotations

from edgeattn.fpga_hls import api
from edgeattn.fpga_hls.api import *  # noqa: F403  (the package's face is api.__all__)

__all__ = api.__all__
