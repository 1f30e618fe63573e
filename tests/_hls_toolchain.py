"""Skip a test, saying what is missing, when the HLS C simulation cannot run here (g++ or the ap_types headers)."""

from __future__ import annotations

import shutil

import pytest
from edgeattn.fpga_hls import find_ap_types

from edgeattn.errors import MissingBackendError


def require_toolchain() -> None:
    """``pytest.skip`` unless g++ and the ap_types headers (shipped in the hls4ml wheel) are both available."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    try:
        find_ap_types()
    except MissingBackendError:
        pytest.skip("the ap_types headers (hls4ml wheel) are not installed")
