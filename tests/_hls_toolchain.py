"""Shared by the HLS tests: skip, saying what is missing, when the C simulation cannot run here (g++ or the
ap_types headers); the accuracy gate's figures recomputed from a project's files."""

from __future__ import annotations

import math
import re
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


def _define(prj: Path, name: str) -> int:
    m = re.search(rf"#define {name} (\d+)", (prj / "firmware/parameters.h").read_text())
    assert m is not None, name
    return int(m.group(1))


def header_ints(prj: Path, name: str) -> np.ndarray:
    """The integers of ``name`` in a project's ``weights.h``: a ``static const`` array or scalar."""
    text = (prj / "firmware/weights.h").read_text()
    m = re.search(r"static const \w+ " + name + r"(\[[^=]*\])? = \{?(.*?)\}?;", text, re.S)
    assert m is not None, name
    return np.array([int(v) for v in m.group(2).replace("\n", " ").split(",") if v.strip()], dtype=np.int64)


def project_weight(prj: Path, name: str, shape: tuple[int, int], index: int = 0) -> np.ndarray:
    """Weight matrix ``name`` (``qkv``, ``fc1``, ``efc1``, ``head``, ...; ``index``: which one, experts of MoE
    layer m at ``m * experts + e``) of shape (out, in) read back from a project's DDR image
    (``tb_data/weights.dat``) by the layout docs/hls.md gives: word ``off + ((r // C) * ceil(in / R) + col // R)
    * C + r % C``, lane ``col % R`` holds ``W[r][col]``; written out here, not taken from the generator."""
    rows, cols = _define(prj, "EA_MAC_R"), _define(prj, "EA_MAC_C")
    words = np.loadtxt(prj / "tb_data/weights.dat", skiprows=1, ndmin=2, dtype=np.int64)
    off = int(header_ints(prj, f"{name}_w_off")[index])
    n_out, n_in = shape
    r, col = np.meshgrid(np.arange(n_out), np.arange(n_in), indexing="ij")
    word = off + ((r // cols) * math.ceil(n_in / rows) + col // rows) * cols + r % cols
    return words[word, col % rows]


def project_bias(prj: Path, name: str, size: int, index: int = 0) -> np.ndarray:
    """Bias ``name`` of ``size`` values from a project's ``bias_rom`` at ``{name}_b_off[index]``."""
    off = int(header_ints(prj, f"{name}_b_off")[index])
    return header_ints(prj, "bias_rom")[off : off + size]
