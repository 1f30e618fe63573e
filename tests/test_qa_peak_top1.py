"""The profiler's peak for what ONNX Runtime actually ran, and the sample count behind the parity gate's top-1.

References: a hand-made ONNX Runtime trace and a fixed host/clock (peaks written out by hand); real ORT runs whose
kernels this file reads from ORT's own profiling JSON, independently of ``edgeattn.profile``; hand-counted MACs;
and parity arrays whose stable samples are known by construction.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from _profiler_models import conv_stack  # noqa: E402
from edgeattn.export.noise_floor import NoiseFloor  # noqa: E402
from edgeattn.export.parity import compare_outputs  # noqa: E402
from edgeattn.export.report import ExportReport  # noqa: E402

from edgeattn.hostinfo import HostInfo  # noqa: E402
from edgeattn.profile import measure, system  # noqa: E402
from edgeattn.profile.layers import ort_macs_by_precision  # noqa: E402
from edgeattn.profile.runners import OrtRunner  # noqa: E402

CLOCK = 2.0  # GHz, fixed so every peak below is a hand number
MAC_OPS = {"Conv", "FusedConv", "QLinearConv", "ConvInteger", "Gemm", "MatMul", "QLinearMatMul", "MatMulInteger"}


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    monkeypatch.setattr(system, "peak_clock_ghz", lambda: (CLOCK, "test"))


def _node(name: str, op: str, ts: int, ins: list[dict], outs: list[dict]) -> dict:
    args = {"op_name": op, "provider": "CPUExecutionProvider", "input_type_shape": ins, "output_type_shape": outs}
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": 5, "args": args}


def _run(ts: int, dur: int) -> dict:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}


# ------------------------------------------------------------------------------------------ peak: hand cases
def test_trace_macs_per_precision_hand_case():
    trace = [
        _run(0, 100),
        _node("old", "QLinearConv", 10, [{"uint8": [1, 4, 8, 8]}, {"int8": [8, 4, 3, 3]}], [{"uint8": [1, 8, 8, 8]}]),
        _run(200, 100),  # the last run: only its events count
        # 8x8x8 outputs x 4 x 3 x 3 = 18432 int8 MACs (weight listed: not pre-packed)
        _node("qc", "QLinearConv", 210, [{"uint8": [1, 4, 8, 8]}, {"float": []}, {"uint8": []},
                                         {"int8": [8, 4, 3, 3]}, {"float": [8]}], [{"uint8": [1, 8, 8, 8]}]),
        _node("dq", "DequantizeLinear", 220, [{"uint8": [1, 8, 8, 8]}], [{"float": [1, 8, 8, 8]}]),  # no MACs
        # a Conv left between DQ and Q: float inputs, 8x8x8 x 8 x 3 x 3 = 36864 fp32 MACs
        _node("fc", "FusedConv", 230, [{"float": [1, 8, 8, 8]}, {"float": [8, 8, 3, 3]}, {"float": [8]}],
              [{"float": [1, 8, 8, 8]}]),
        _node("g", "Gemm", 240, [{"float": [2, 16]}, {"float": [10]}], [{"float": [2, 10]}]),  # 2x10x16 = 320
        _node("mm", "MatMul", 250, [{"float": [1, 10]}], [{"float": [1, 6]}]),  # 6 x 10 = 60
    ]
    assert ort_macs_by_precision(trace) == ({"int8": 18432, "fp32": 36864 + 320 + 60}, "")
    # a pre-packed QLinearConv weight is not in the trace: its MACs are the graph's total less the rest
    trace[3]["args"]["input_type_shape"].pop(3)
    macs, how = ort_macs_by_precision(trace, graph_macs=18432 + 37244)
    assert macs == {"int8": 18432, "fp32": 37244} and "18432 MACs" in how
    macs, how = ort_macs_by_precision(trace)  # no graph count: left out, and said so
    assert macs == {"fp32": 37244} and "left out" in how


def _host() -> HostInfo:
    return HostInfo(system="Linux", machine="x86_64", cpu_model="test", physical_cores=4, logical_cores=4,
                    isa_flags=["avx2", "avx512f", "avx512_vnni"], has_vnni=True, has_amx=False, runtimes={},
                    matching_profile="host-cpu", recommended_weight_bits=8)


def test_mixed_peak_is_the_mac_weighted_harmonic_mean_hand_case():
    # one core at 2 GHz, AVX-512 + VNNI: fp32 2 x 16 x 1 x 2 = 64 GMAC/s, int8 2 x 16 x 4 x 2 = 256 GMAC/s
    peak, formula, label = system.mixed_peak_gmacs({"int8": 18432, "fp32": 37244}, threads=1, host=_host())
    assert label == "mixed"
    assert peak == pytest.approx(55676 / (18432 / 256 + 37244 / 64))  # 85.14: the time at each one's peak
    assert formula.startswith("MAC-weighted: 1 / (0.669/64.0 + 0.331/256.0) = 85.1 GMAC/s")
    peak, formula, label = system.mixed_peak_gmacs({"fp32": 5, "int8": 0}, threads=1, host=_host())
    assert (peak, label) == (64.0, "fp32") and formula.startswith("2 FMA x 16 lanes x 1 MAC/lane (fp32)")


# ------------------------------------------------------------------------------- peak: real ONNX Runtime runs
def _kernels(path: Path, tmp: Path) -> dict[str, set[str]]:
    """{op ORT ran: first-input dtypes} for the MAC ops of one inference, read straight from ORT's profile JSON."""
    so = ort.SessionOptions()
    so.enable_profiling, so.profile_file_prefix, so.intra_op_num_threads = True, str(tmp / "ref"), 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in sess.get_inputs()}
    sess.run(None, feed)
    ran: dict[str, set[str]] = {}
    for e in json.loads(Path(sess.end_profiling()).read_text()):
        op = e.get("args", {}).get("op_name")
        if e.get("cat") == "Node" and op in MAC_OPS:
            ran.setdefault(op, set()).update(e["args"]["input_type_shape"][0])
    return ran


def _qlinear_then_float(path: Path) -> int:
    """Quantize -> QLinearConv (int8, 4->8 channels, 3x3, 8x8) -> Dequantize -> Flatten -> fp32 MatMul (512->10).

    Returns the int8 MACs; the fp32 MatMul has 512 x 10 = 5120."""
    rng = np.random.default_rng(0)
    arrays = {
        "xs": np.array(0.05, np.float32), "xz": np.array(128, np.uint8),
        "w": rng.integers(-100, 100, (8, 4, 3, 3)).astype(np.int8), "ws": np.full(8, 0.01, np.float32),
        "wz": np.zeros(8, np.int8), "ys": np.array(0.1, np.float32), "yz": np.array(128, np.uint8),
        "fc": rng.standard_normal((512, 10)).astype(np.float32),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"], pads=[1, 1, 1, 1]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
        helper.make_node("Flatten", ["y"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "qlinear_then_float", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return 8 * 8 * 8 * 4 * 9


def test_unfused_qdq_graph_gets_the_fp32_peak(tmp_path):
    path = tmp_path / "qdq.onnx"
    hand = conv_stack(path, size=16, int8=True)["macs"]
    ran = _kernels(path, tmp_path)  # ORT leaves these Convs (no QuantizeLinear after them) unfused, in float
    assert ran and not set(ran) & {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}, ran
    assert set().union(*ran.values()) == {"float"}, ran
    r = measure.profile_artifacts([path], warmup=1, iters=3, threads=1).results[0]
    ef = r.efficiency
    assert r.precision == "int8"  # the graph is Q/DQ ...
    assert ef.peak_precision == "fp32" and ef.macs_by_precision == {"fp32": hand} == {"fp32": ef.macs}
    assert ef.peak_gmacs == system.peak_gmacs("fp32", 1)[0]  # ... but its MACs ran in fp32
    assert ef.fraction_of_peak == pytest.approx(ef.achieved_gmacs / ef.peak_gmacs)


def test_qlinear_and_float_kernels_get_the_mac_weighted_peak(tmp_path):
    path = tmp_path / "mixed.onnx"
    int8_macs = _qlinear_then_float(path)
    ran = _kernels(path, tmp_path)
    assert ran == {"QLinearConv": {"uint8"}, "MatMul": {"float"}}, ran
    ef = measure.profile_artifacts([path], warmup=1, iters=3, threads=1).results[0].efficiency
    assert ef.macs == int8_macs + 5120
    assert ef.macs_by_precision == {"int8": int8_macs, "fp32": 5120} and ef.peak_precision == "mixed"
    p8, p32 = system.peak_gmacs("int8", 1)[0], system.peak_gmacs("fp32", 1)[0]
    assert ef.peak_gmacs == pytest.approx(ef.macs / (int8_macs / p8 + 5120 / p32), rel=1e-12)


def test_without_a_trace_the_peak_keeps_the_graph_precision_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "qdq.onnx"
    conv_stack(path, size=8, int8=True)
    monkeypatch.setattr(OrtRunner, "executed_macs", lambda self, macs=None: None)  # e.g. the probe failed
    ef = measure.profile_artifacts([path], warmup=0, iters=2, threads=1).results[0].efficiency
    assert ef.peak_precision == "int8" and ef.peak_gmacs == system.peak_gmacs("int8", 1)[0]
    assert ef.macs_by_precision == {} and "no profiling trace" in ef.note


# ------------------------------------------------------------------------------------- parity: top-1 counts
def _floor(stable: tuple[bool, ...]) -> NoiseFloor:
    return NoiseFloor("fp32", 2.0**-20, 4, 0.01, 0.9999, 1.0, stable)


REF = np.array([[0.0, 1.0, 0.5], [1.0, 0.98, 0.0], [0.2, 0.1, 0.9], [0.5, 0.49, 0.0]])
OUT = np.array([[0.0, 1.0, 0.5], [0.98, 1.0, 0.0], [0.2, 0.1, 0.9], [0.49, 0.5, 0.0]])  # samples 1 and 3 flip


def test_top1_records_how_many_samples_it_counts():
    from edgeattn.device_profile import load_profile

    tol = load_profile("host-cpu").tolerance_for("int8")
    plain = compare_outputs(REF, OUT, tol, runtime="onnxruntime")
    assert (plain.top1, plain.top1_samples, plain.top1_of) == (0.5, 4, 4)
    floored = compare_outputs(REF, OUT, tol, runtime="onnxruntime", noise_floor=_floor((True, False, True, False)))
    assert (floored.top1, floored.top1_samples, floored.top1_of) == (1.0, 2, 4)  # the 2 stable samples agree
    d = floored.to_dict()
    assert (d["top1_samples"], d["top1_of"]) == (2, 4)
    json.dumps(d)  # plain ints in report.json
    none = compare_outputs(REF, OUT, tol, runtime="x", noise_floor=_floor((False,) * 4))
    assert (none.top1, none.top1_samples, none.top1_of) == (1.0, 0, 4)


def test_console_line_says_over_how_many_stable_samples():
    from edgeattn.device_profile import load_profile

    tol = load_profile("host-cpu").tolerance_for("int8")
    floored = compare_outputs(REF, OUT, tol, runtime="onnxruntime", noise_floor=_floor((True, False, True, False)))
    every = compare_outputs(REF, OUT, tol, runtime="openvino", noise_floor=_floor((True,) * 4))
    old = dict(floored.to_dict())
    old.pop("top1_samples"), old.pop("top1_of")  # a report written before the count was recorded
    old["runtime"] = "coreml"
    report = ExportReport("m", "onnx", "int8", {}, "o", parity=[floored.to_dict(), every.to_dict(), old])
    lines = report.summary().splitlines()
    assert "top1 1.000 (2/4 stable samples)  ok" in lines[0]
    assert "top1 0.500  FAILED" in lines[1]  # all 4 stable: no count printed
    assert "top1 1.000  ok" in lines[2]
