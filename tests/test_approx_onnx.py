"""ONNX lowering: every method exports to standard ops only and runs in ONNX Runtime and OpenVINO with the
same outputs as the torch float version (max abs error <= 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeattn.approx.onnx_lowering import (
    STANDARD_OPS,
    all_methods,
    approx_module,
    export_onnx,
    graph_ops,
    run_onnxruntime,
    run_openvino,
)

torch.set_num_threads(1)
# torch 2.13's exporter warns about its own pytree internals
pytestmark = pytest.mark.filterwarnings("ignore:.*treespec.*:FutureWarning")


@pytest.mark.parametrize(("op", "method"), all_methods())
def test_lowering_runs_in_ort_and_openvino(op: str, method: str, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    path = export_onnx(op, method, tmp_path / f"{op}_{method}.onnx", shape=(2, 3, 8, 24))
    ops = graph_ops(path)
    assert all(d in ("", "ai.onnx") and o in STANDARD_OPS for d, o in ops), ops
    rng = np.random.default_rng(0)
    # scores at attention-like scales with a masked entry; GELU inputs over [-8, 8] plus the table edge
    x = (rng.standard_normal((2, 3, 8, 24)) * (4.0 if op == "softmax" else 3.0)).astype(np.float32)
    if op == "gelu":
        x.reshape(-1)[:6] = [-8.0, 8.0, 5.5, -5.5, 5.49, 0.0]
    ref = approx_module(op, method)(torch.from_numpy(x)).numpy()
    assert np.abs(run_onnxruntime(path, x) - ref).max() <= 1e-5
    try:
        import openvino  # noqa: F401
    except ImportError:
        pytest.skip("openvino is not installed")
    assert np.abs(run_openvino(path, x) - ref).max() <= 1e-5
    assert not list(tmp_path.glob(".*tmp*")), "temporary export files left behind"
