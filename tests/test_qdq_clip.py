"""Sub-8-bit activations: the integer Clip between QuantizeLinear and DequantizeLinear moves in front of the Q.

References: ONNX Runtime without graph optimisations on the original graph (it honours the integer Clip), and the
quantize-clip arithmetic written out in numpy.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeattn.export.qdq import CLIP_MARGIN, clean_qdq, move_activation_clips, summarize_qdq
from onnx import TensorProto, helper, numpy_helper

WEIGHTS = np.random.default_rng(0).integers(-7, 8, size=(4, 3, 3, 3)).astype(np.int8)


def _graph(bits: int, scale: float, dq_fed: bool) -> onnx.ModelProto:
    """x -> [Q -> DQ at ``scale * 1.0003``] -> Q -> Clip(``bits``) -> DQ -> Conv(int8 weights): a ``bits``-bit
    activation as brevitas exports it; ``dq_fed`` puts another quantizer in front, as between two blocks."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    inits = [
        numpy_helper.from_array(np.array(scale, np.float32), "s"),
        numpy_helper.from_array(np.array(scale * 1.0003, np.float32), "s0"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(np.array(lo, np.int8), "lo"),
        numpy_helper.from_array(np.array(hi, np.int8), "hi"),
        numpy_helper.from_array(WEIGHTS, "w"),
        numpy_helper.from_array(np.full(4, 0.05, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(4, np.int8), "wz"),
    ]
    nodes = []
    src = "x"
    if dq_fed:
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "s0", "z"], ["q0"]),
            helper.make_node("DequantizeLinear", ["q0", "s0", "z"], ["d0"]),
        ]
        src = "d0"
    nodes += [
        helper.make_node("QuantizeLinear", [src, "s", "z"], ["q"]),
        helper.make_node("Clip", ["q", "lo", "hi"], ["c"]),
        helper.make_node("DequantizeLinear", ["c", "s", "z"], ["d"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["d", "wd"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts).run(None, {"x": x})[0]


@pytest.mark.parametrize("bits", [4, 7])
@pytest.mark.parametrize("dq_fed", [False, True])
def test_moved_clip_computes_the_same_integers(bits, dq_fed):
    scale = 0.6 if bits == 4 else 0.05
    original = _graph(bits, scale, dq_fed)
    moved = copy.deepcopy(original)
    assert move_activation_clips(moved) == 1
    onnx.checker.check_model(moved, full_check=True)
    ops = [n.op_type for n in moved.graph.node]
    assert ops.index("Clip") < ops.index("QuantizeLinear", 2 if dq_fed else 0)  # the Clip now feeds the Q
    assert summarize_qdq(original).clip_between_q_dq == 1 and summarize_qdq(moved).clip_between_q_dq == 0
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32) * 4 * scale * 2 ** (bits - 1)
    np.testing.assert_array_equal(_ort(moved, x), _ort(original, x))  # bit for bit, clipped values included


def test_openvino_honours_the_moved_clip():
    """OpenVINO's CPU plugin drops the integer Clip (2026.4) and keeps the float one, in front of a quantizer fed
    by the graph input or by another DequantizeLinear (where it moves the Clip into integers)."""
    ov = pytest.importorskip("openvino", reason="openvino is not installed")
    from edgeattn.openvino_core import openvino_core

    core = openvino_core()
    x = np.random.default_rng(2).normal(size=(2, 3, 8, 8)).astype(np.float32) * 8
    for dq_fed in (False, True):
        original = _graph(4, 0.6, dq_fed)
        reference = _ort(original, x)
        moved = copy.deepcopy(original)
        move_activation_clips(moved)
        # f32: on CPUs with AVX512_BF16 the plugin's default inference precision is bf16, 2-3 digits
        net = core.read_model(moved.SerializeToString(), ov.Tensor(np.empty(0, np.uint8)))
        got = core.compile_model(net, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        out = got(x)[0]
        assert np.abs(out - reference).max() <= 1e-5 * np.abs(reference).max(), dq_fed


def test_float_bounds_round_to_the_integer_bounds():
    """numpy: clip(round(x / s), lo, hi) == round(clip(x, (lo - m) s, (hi + m) s) / s) in float32, half to even,
    for values on both sides of the bounds and at every half step near them."""
    rng = np.random.default_rng(3)
    for bits, s in ((4, np.float32(0.6081)), (7, np.float32(0.0123)), (4, np.float32(3.3e-3))):
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        steps = np.concatenate([np.arange(lo - 3, hi + 3, 0.25), rng.uniform(lo - 40, hi + 40, 4000)])
        x = (steps * s).astype(np.float32)
        exact = np.clip(np.rint(x / s), lo, hi)
        flo = np.float32((lo - CLIP_MARGIN) * np.float64(s))
        fhi = np.float32((hi + CLIP_MARGIN) * np.float64(s))
        np.testing.assert_array_equal(np.rint(np.clip(x, flo, fhi) / s), exact)


def test_clean_qdq_reports_the_moved_clips():
    model = _graph(4, 0.6, dq_fed=True)
    assert clean_qdq(model)["activation_clips_moved"] == 1
    assert "lo" not in {i.name for i in model.graph.initializer}  # the integer Clip's bounds are gone
