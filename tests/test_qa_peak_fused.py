"""The peak probe counts ONNX Runtime's fused MAC kernels, and reuses the ``--per-layer`` trace.

References: the op types and shapes ONNX Runtime ran are read straight from its own profiling JSON (independently
of ``edgeattn.profile``); MACs are hand-counted from the graphs' dimensions; the clock is fixed so peaks are hand
numbers. Every test here failed before fused kernels were counted / the per-layer trace was reused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeattn.profile import measure, system
from edgeattn.profile.layers import ort_macs_by_precision
from edgeattn.profile.runners import OrtRunner

CLOCK = 2.0  # GHz, fixed so the peaks below are hand numbers
M, K, N, P = 16, 64, 32, 8  # x [M, K] @ int8 W [K, N] (-> MatMulNBits), then x' [M, N] @ float [N, P] (-> FusedMatMul)
INT8_MACS, FP32_MACS = M * N * K, M * P * N


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    monkeypatch.setattr(system, "peak_clock_ghz", lambda: (CLOCK, "test"))


def _save(nodes: list, inputs: list, outputs: list, inits: list, path: Path, opset: int = 21) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def _fusing_model(path: Path) -> Path:
    """DequantizeLinear(int8 per-column weight) -> MatMul, then MatMul x 0.5: ONNX Runtime (ORT_ENABLE_ALL) fuses the
    first into MatMulNBits (8-bit weight, int8 compute) and the second with its scale into FusedMatMul (fp32)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.integers(-100, 100, (K, N)).astype(np.int8), "wq"),
        numpy_helper.from_array(np.full(N, 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(N, np.int8), "wz"),
        numpy_helper.from_array(rng.standard_normal((N, P)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1),
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, P])
    return _save(nodes, [x], [y], inits, path)


def _ort_trace(path: Path, tmp: Path, feeds: dict[str, np.ndarray] | None = None) -> Path:
    """One inference of ``path`` in a plain ORT session (ORT_ENABLE_ALL, 1 thread) with its profiler on."""
    so = ort.SessionOptions()
    so.enable_profiling, so.profile_file_prefix, so.intra_op_num_threads = True, str(tmp / path.stem), 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    if feeds is None:
        feeds = {}
        for i in sess.get_inputs():
            a = rng.standard_normal(i.shape)
            feeds[i.name] = (a * 20 + 128).clip(0, 255).astype(np.uint8) if "uint8" in i.type else a.astype(np.float32)
    sess.run(None, feeds)
    return Path(sess.end_profiling())


def _node_events(trace: Path) -> list[tuple[str, list, list]]:
    """(op, input shapes, output shapes) of every node event, from ORT's JSON."""
    out = []
    for e in json.loads(trace.read_text()):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            args = e["args"]
            shapes = [[list(v) for d in args[k] for v in d.values()] for k in ("input_type_shape", "output_type_shape")]
            out.append((args["op_name"], *shapes))
    return out


# ----------------------------------------------------------------------------- fused kernels, real ORT traces
def test_ort_fuses_the_model_and_its_fused_kernels_get_their_precision(tmp_path):
    path = _fusing_model(tmp_path / "fused.onnx")
    ran = {op for op, _, _ in _node_events(_ort_trace(path, tmp_path))}
    assert ran == {"MatMulNBits", "FusedMatMul"}, ran  # ORT's own record: both MatMuls were fused
    r = measure.profile_artifacts([path], warmup=1, iters=3, threads=1).results[0]
    ef = r.efficiency
    assert r.precision == "int8" and ef.macs == INT8_MACS + FP32_MACS  # graph count: 32768 + 4096
    assert ef.macs_by_precision == {"int8": INT8_MACS, "fp32": FP32_MACS}
    assert ef.macs_covered == 1.0 and ef.peak_trace == "probe" and ef.peak_precision == "mixed"
    p8, p32 = system.peak_gmacs("int8", 1)[0], system.peak_gmacs("fp32", 1)[0]
    assert ef.peak_gmacs == pytest.approx(ef.macs / (INT8_MACS / p8 + FP32_MACS / p32), rel=1e-12)


B, S, D, L, HEADS = 1, 8, 16, 12, 2


def _attention_models(tmp: Path) -> dict[str, tuple[Path, dict[str, int]]]:
    """com.microsoft attention kernels as ORT runs them, with their hand-counted MACs per precision.

    Per batch, S queries against L keys cost S x L x (D_qk + D_v) (Q K^T and softmax x V over all heads); Attention
    and QAttention add the QKV projection S x D x 3D (int8 for QAttention, whose Q K^T and x V run in fp32)."""
    vi = helper.make_tensor_value_info
    rng = np.random.default_rng(0)
    bias = numpy_helper.from_array(np.zeros(3 * D, np.float32), "b")
    core_self, projection = B * S * S * (D + D), B * S * D * 3 * D  # 2048, 6144
    mha = _save(
        [helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft", num_heads=HEADS)],
        [vi("q", TensorProto.FLOAT, [B, S, D]), vi("k", TensorProto.FLOAT, [B, L, D]),
         vi("v", TensorProto.FLOAT, [B, L, D])],
        [vi("o", TensorProto.FLOAT, [B, S, D])], [], tmp / "mha.onnx", opset=17,
    )
    att = _save(
        [helper.make_node("Attention", ["x", "w", "b"], ["o"], domain="com.microsoft", num_heads=HEADS)],
        [vi("x", TensorProto.FLOAT, [B, S, D])], [vi("o", TensorProto.FLOAT, [B, S, D])],
        [numpy_helper.from_array(rng.standard_normal((D, 3 * D)).astype(np.float32), "w"), bias],
        tmp / "att.onnx", opset=17,
    )
    q_inits = [
        numpy_helper.from_array(rng.integers(-100, 100, (D, 3 * D)).astype(np.int8), "wq"), bias,
        numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
        numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
        numpy_helper.from_array(np.array(128, np.uint8), "xz"), numpy_helper.from_array(np.array(0, np.int8), "wz"),
    ]
    qatt = _save(
        [helper.make_node("QAttention", ["x", "wq", "b", "xs", "ws", "", "xz", "wz"], ["o"], domain="com.microsoft",
                          num_heads=HEADS)],
        [vi("x", TensorProto.UINT8, [B, S, D])], [vi("o", TensorProto.FLOAT, [B, S, D])], q_inits,
        tmp / "qatt.onnx", opset=17,
    )
    return {
        "MultiHeadAttention": (mha, {"fp32": B * S * L * (D + D)}),  # 3072
        "Attention": (att, {"fp32": projection + core_self}),  # 8192
        "QAttention": (qatt, {"int8": projection, "fp32": core_self}),
    }


def test_fused_attention_kernels_counted_from_real_traces(tmp_path):
    for op, (path, hand) in _attention_models(tmp_path).items():
        trace = _ort_trace(path, tmp_path)
        events = _node_events(trace)
        assert [e[0] for e in events] == [op], events  # ORT ran the one attention kernel
        assert ort_macs_by_precision(trace) == (hand, ""), op


def test_group_query_attention_hand_trace():
    # GQA: 4 query heads x 8 dims over 2 kv heads, 3 new tokens after 5 past ones: L = 8 from present_key
    args = {
        "op_name": "GroupQueryAttention",
        "input_type_shape": [{"float": [1, 3, 32]}, {"float": [1, 3, 16]}, {"float": [1, 3, 16]},
                             {"float": [1, 2, 5, 8]}, {"float": [1, 2, 5, 8]}],
        "output_type_shape": [{"float": [1, 3, 32]}, {"float": [1, 2, 8, 8]}, {"float": [1, 2, 8, 8]}],
    }
    trace = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        {"cat": "Node", "name": "gqa_kernel_time", "ts": 10, "dur": 5, "args": args},
    ]
    assert ort_macs_by_precision(trace) == ({"fp32": 3 * 8 * (32 + 32)}, "")  # 1536


# ------------------------------------------------------------------------------- reuse of the per-layer trace
def _count_traced_sessions(monkeypatch, path: Path) -> list[int]:
    """Patch ort.InferenceSession to count the sessions of ``path`` created with the profiler on."""
    real = ort.InferenceSession
    count = [0]

    def counting(model, sess_options=None, *args, **kwargs):
        if str(model) == str(path) and sess_options is not None and sess_options.enable_profiling:
            count[0] += 1
        return real(model, sess_options, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting)
    return count


def test_per_layer_trace_is_reused_for_the_peak(tmp_path, monkeypatch):
    path = _fusing_model(tmp_path / "fused.onnx")
    count = _count_traced_sessions(monkeypatch, path)
    r = measure.profile_artifacts([path], warmup=1, iters=3, threads=1, per_layer=True, layer_runs=3).results[0]
    assert count[0] == 1  # the per-layer session only: its trace also gave the peak (it was 2)
    count[0] = 0
    probed = measure.profile_artifacts([path], warmup=1, iters=3, threads=1).results[0]
    assert count[0] == 1 and probed.efficiency.peak_trace == "probe"  # without --per-layer: the probe's session
    assert r.layers is not None and {x.op_type for x in r.layers.layers} >= {"MatMulNBits", "FusedMatMul"}
    assert r.efficiency.peak_trace == "per-layer"
    assert r.efficiency.macs_by_precision == probed.efficiency.macs_by_precision == {
        "int8": INT8_MACS, "fp32": FP32_MACS}
    assert r.efficiency.peak_gmacs == probed.efficiency.peak_gmacs


def test_a_per_layer_trace_of_other_settings_is_not_reused(tmp_path, monkeypatch):
    path = _fusing_model(tmp_path / "fused.onnx")
    runner = OrtRunner(path, "CPU", 1, None, None)
    try:
        runner.profile_layers(2, 0.0)
        assert runner.executed_macs()[0] == {"int8": INT8_MACS, "fp32": FP32_MACS}
        assert runner.peak_trace == "per-layer"
        key, events = runner._layer_trace
        runner._layer_trace = ((key[0], key[1], 2, *key[3:]), events)  # traced with 2 threads: probe again
        count = _count_traced_sessions(monkeypatch, path)
        assert runner.executed_macs()[0] == {"int8": INT8_MACS, "fp32": FP32_MACS}
        assert runner.peak_trace == "probe" and count[0] == 1
    finally:
        runner.close()
