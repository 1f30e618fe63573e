"""Shared by the HLS tests: skip, saying what is missing, when the C simulation cannot run here (g++ or the
ap_types headers); the accuracy gate's figures recomputed from a project's files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from edgeattn.fpga_hls import find_ap_types

from edgeattn.errors import MissingBackendError

ZCU102_ACT_F = 22  # fraction bits of zcu102-hls' ap_fixed<32,10> activations


def require_toolchain() -> None:
    """``pytest.skip`` unless g++ and the ap_types headers (shipped in the hls4ml wheel) are both available."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    try:
        find_ap_types()
    except MissingBackendError:
        pytest.skip("the ap_types headers (hls4ml wheel) are not installed")


def gate_figures(
    prj: Path, outputs: str = "tb_data/tb_golden.dat", act_f: int = ZCU102_ACT_F
) -> tuple[float, float]:
    """(max abs error / reference range, smallest per-vector cosine) of a project's fixed-point ``outputs``
    against its ``tb_float.dat`` reference, in float64 from the files (independent of the gate's code)."""
    got = np.loadtxt(prj / outputs, ndmin=2) * 2.0**-act_f
    ref = np.loadtxt(prj / "tb_data/tb_float.dat", ndmin=2)
    rel = np.abs(got - ref).max() / (ref.max() - ref.min())
    cos = min(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in zip(got, ref, strict=True))
    return float(rel), cos
