"""What `edgeattn export` reports: each figure of report.json and the console against a reference the test builds.

References: the figures recomputed here in numpy float64 from the artifact run in ONNX Runtime and the torch model;
the ONNX graph counted with ``onnx``; hand-built graphs whose first diverging node and lint findings are known by
construction (and, for the bisection, found again by a brute-force scan of every tensor).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from _export_models import TinyViT, tiny_quant_vit  # noqa: E402
from edgeattn.export import export_model  # noqa: E402
from edgeattn.export.lint import lint_tensorrt  # noqa: E402
from edgeattn.export.parity import _float_outputs, _with_output, first_diverging_node  # noqa: E402

from edgeattn.cli import main  # noqa: E402
from edgeattn.errors import EdgeAttnError  # noqa: E402

N = 8
X = np.random.default_rng(0).standard_normal((N, 3, 32, 32)).astype(np.float32)  # export_model's seed-0 draw


def _ort(model: onnx.ModelProto, x: np.ndarray, optimise: bool) -> np.ndarray:
    """``model``'s first output in ONNX Runtime, optimised or with every graph optimisation off."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _figures(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """docs/export.md's parity figures, written out in float64: max abs error, it over the reference's range,
    max relative error (denominator floored at 1e-3 of the range), smallest per-sample cosine, top-1 agreement."""
    r = ref.astype(np.float64).reshape(len(ref), -1)
    g = got.astype(np.float64).reshape(len(got), -1)
    err = np.abs(g - r)
    span = r.max() - r.min()
    cos = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(r, g, strict=True)]
    return {
        "max_abs": float(err.max()),
        "max_abs_rel_range": float(err.max() / span),
        "max_rel": float((err / np.maximum(np.abs(r), 1e-3 * span)).max()),
        "cosine": min(cos),
        "top1": float(np.mean(r.argmax(1) == g.argmax(1))),
    }


# ------------------------------------------------------------------------------ report.json against the artifact
@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    """A dynamic-batch FP32 ONNX export of TinyViT (seeded), its report and the torch model."""
    torch.manual_seed(0)
    model = TinyViT().eval()
    out = tmp_path_factory.mktemp("qa") / "fp32"
    report = export_model(model, "onnx", "host-cpu", out, precision="fp32", n_inputs=N, dynamic_batch=True)
    return model, report, out


def test_parity_figures_equal_a_float64_recomputation_on_the_documented_inputs(fp32_run):
    model, report, out = fp32_run
    onnx_model = onnx.load(str(out / "model.onnx"))
    with torch.no_grad():
        ref = model(torch.from_numpy(X)).numpy()
    b = report.settings["batch"]  # the gate feeds the export batch at a time (ORT's sums differ by batch size)
    runs = {
        name: np.concatenate([_ort(onnx_model, X[i : i + b], optimise) for i in range(0, N, b)])
        for name, optimise in (("onnxruntime-noopt", False), ("onnxruntime", True))
    }
    assert [p["runtime"] for p in report.parity] == list(runs)
    for entry in report.parity:
        mine = _figures(ref, runs[entry["runtime"]])
        assert entry["n_inputs"] == N and report.parity_inputs == {"random": N, "real": 0}
        for key, value in mine.items():
            assert entry[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (entry["runtime"], key)


def test_graph_facts_in_the_report_are_the_files(fp32_run):
    _, report, out = fp32_run
    onnx_model = onnx.load(str(out / "model.onnx"))
    assert report.node_counts == dict(Counter(n.op_type for n in onnx_model.graph.node))
    opset = next(o.version for o in onnx_model.opset_import if o.domain == "")
    assert report.settings["opset"] == opset and report.settings["dynamic_batch"] is True
    for spec, vi in ((report.inputs[0], onnx_model.graph.input[0]), (report.outputs[0], onnx_model.graph.output[0])):
        dims = vi.type.tensor_type.shape.dim
        assert spec["name"] == vi.name and dims[0].dim_param and not dims[0].dim_value  # a symbolic batch ...
        assert spec["shape"] == ["batch", *[d.dim_value for d in dims[1:]]]  # ... reported as "batch"
        assert spec["dtype"] == "float32" == onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["settings"] == report.settings and on_disk["versions"]["edgeattn"]


def test_console_lines_carry_report_json_figures_one_line_each(tmp_path, capsys):
    """Rich wraps at 80 columns when stdout is not a terminal: the verdict used to land on its own line."""
    code = main(
        ["export", "fmvit_t", "-t", "onnx", "-p", "host-cpu", "--precision", "fp32", "--img-size", "32",
         "--n-inputs", "2", "-o", str(tmp_path / "o"), "--json", str(tmp_path / "r.json")]
    )
    text = capsys.readouterr().out
    assert code == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert json.loads((tmp_path / "r.json").read_text()) == report
    lines = text.splitlines()
    for p in report["parity"]:
        line = next(ln for ln in lines if ln.startswith(p["runtime"] + " "))
        assert line.rstrip().endswith(" ok")
        assert f"{p['max_abs_rel_range']:.2e}" in line and f"cos {p['cosine']:.6f}" in line
    assert f"report: {tmp_path / 'o' / 'report.json'}" in lines


def test_inputs_left_out_of_the_last_static_batch_are_reported(tmp_path):
    """parity_inputs counts the inputs drawn; the gates ran whole static batches only, and the report said not."""
    torch.manual_seed(0)
    report = export_model(
        TinyViT().eval(), "onnx", "host-cpu", tmp_path / "o", precision="fp32", n_inputs=5, batch=2,
        dynamic_batch=False,
    )
    assert report.parity_inputs == {"random": 5, "real": 0} and {p["n_inputs"] for p in report.parity} == {4}
    assert "1 of the 5 parity inputs do not fill a last static batch of 2 and were not run" in report.notes[-1]
    assert report.inputs[0]["shape"] == [2, 3, 32, 32] and report.settings["batch"] == 2


def test_a_capped_openvino_run_says_why_it_has_no_kernel_report(tmp_path):
    # 7-bit weights and K/V: under the AVX2 cap the kernels add int8 products in 16-bit pairs, so full 8-bit weights
    # saturate (and fail parity) even on a VNNI host, whatever the host profile resolves to
    model = tiny_quant_vit(weight_bits=7, kv_bits=7)
    report = export_model(model, "openvino", "host-cpu", tmp_path / "o", n_inputs=2, cpu_isa="avx2")
    assert report.kernels is None and report.settings["cpu_isa"] == "AVX2"
    assert any(n.startswith("kernels: not collected under --cpu-isa AVX2") for n in report.notes)


# ------------------------------------------------------------------------------------------ noise floor + timings
def test_noise_floor_runs_once_and_no_second_is_timed_twice(tmp_path, monkeypatch):
    """A quantized model under a tight --atol: both ONNX Runtime gates need the floor of the same inputs. It was
    computed twice, and its seconds were counted in both ``noise_floor_fp32`` and ``parity_ort``."""
    import time

    import edgeattn.export.noise_floor as nf

    calls = []
    real = nf.rounding_noise_floor

    def slow_floor(*args, **kwargs):
        calls.append(1)
        time.sleep(1.5)  # a floor that takes far longer than the tiny model's ONNX Runtime gate, even on a busy machine
        return real(*args, **kwargs)

    monkeypatch.setattr(nf, "rounding_noise_floor", slow_floor)
    with pytest.raises(EdgeAttnError) as info:
        export_model(tiny_quant_vit(), "onnx", "host-cpu", tmp_path / "o", n_inputs=4, atol=1e-9)
    report = info.value.report
    assert len(calls) == 1 and all(p["noise_floor"] for p in report.parity)
    t = report.timings_s
    assert t["noise_floor_fp32"] >= 1.5 and t["parity_ort"] < 1.5  # the floor's seconds are not in parity_ort
    stages = sum(v for k, v in t.items() if k != "total")
    assert stages <= t["total"] + 0.01 and "parity_onnxruntime" in t
    floor = report.parity[0]["noise_floor"]
    tol = report.parity[0]["tolerance"]
    want = min(max(1e-9, 2 * floor["max_abs_rel_range"]), 4e-9)  # docs: 2x the floor, at most 4x the tolerance
    assert tol["max_abs"] == pytest.approx(want) and report.parity[0]["profile_tolerance"]["max_abs"] == 1e-9


def test_failure_line_names_the_node_of_a_bisected_gate_behind_a_failed_reference(tmp_path, monkeypatch):
    """onnxruntime-noopt (never bisected) fails first under a tiny --atol; the optimised gate's node was dropped."""
    real = ort.InferenceSession

    class Negating:  # optimised ONNX Runtime that negates every output: the first data-path node diverges
        def __init__(self, model, opts=None, providers=None):
            self.sess = real(model, opts, providers=providers)
            level = opts.graph_optimization_level if opts is not None else None
            self.flip = level != ort.GraphOptimizationLevel.ORT_DISABLE_ALL

        def __getattr__(self, name):
            return getattr(self.sess, name)

        def run(self, names, feeds):
            return [-o if self.flip else o for o in self.sess.run(names, feeds)]

    monkeypatch.setattr(ort, "InferenceSession", Negating)
    torch.manual_seed(0)
    with pytest.raises(EdgeAttnError) as info:
        export_model(TinyViT().eval(), "onnx", "host-cpu", tmp_path / "o", precision="fp32", n_inputs=2, atol=1e-15)
    noopt, opt = info.value.report.parity
    assert not noopt["passed"] and noopt["max_abs_rel_range"] > 1e-15  # the precondition: the reference fails first
    node = opt["first_diverging_node"]
    first_tensor, first_node = _float_outputs(onnx.load(str(tmp_path / "o" / "model.FAILED_PARITY.onnx")))[0]
    assert node["node"] == first_node and node["tensor"] == first_tensor
    assert f"first diverging node {first_node} ({node['op_type']}) in onnxruntime" in str(info.value)


# ----------------------------------------------------------------------------------------------------- bisection
def _model(nodes: list, inits: list, out: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _tampered_runner(name: str, factor: float, **more: float):
    """A "runtime under test": ONNX Runtime on the probe model with initializer ``name`` multiplied by ``factor``
    (and each initializer named in ``more`` by its value)."""
    factors = {name: factor, **more}

    def run(sub: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
        probe = onnx.ModelProto()
        probe.CopyFrom(sub)
        for init in probe.graph.initializer:
            if init.name in factors:
                values = numpy_helper.to_array(init)
                init.CopyFrom(numpy_helper.from_array((values * factors[init.name]).astype(values.dtype), init.name))
        return _ort(probe, x, False)

    return run


def _brute_force_first(model: onnx.ModelProto, x: np.ndarray, run, tol) -> str:
    """The first node on the data path (fed, through any chain, by the input ``x``), in topological order, whose
    output leaves ``tol``, found by probing every such node's output."""
    live = {"x"}
    for node in model.graph.node:
        if not live.intersection(node.input):
            continue
        live.update(node.output)
        sub = _with_output(model, node.output[0])
        ref, got = _ort(sub, x, False).reshape(len(x), -1), run(sub, x).reshape(len(x), -1)
        if np.abs(got - ref).max() / max(np.ptp(ref), 1e-12) > tol.max_abs:
            return node.name
    raise AssertionError("nothing diverges")


TOL = SimpleNamespace(max_abs=1e-3, min_cosine=0.999)
XS = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)


@pytest.mark.parametrize("k", range(6))
def test_bisection_ignores_weight_chains_and_names_the_layer_whose_weight_is_wrong(k):
    """Six int8 layers ``DequantizeLinear(w_i) -> MatMul -> Relu``: a weight DQ depends on no input and always
    agrees, so a search that lands on one moved past the real divergence (it named a later layer)."""
    nodes, inits, h = [], [numpy_helper.from_array(np.array(0.05, np.float32), "s")], "x"
    for i in range(6):
        w = np.random.default_rng(10 + i).integers(-60, 60, (4, 4)).astype(np.int8)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [
            helper.make_node("DequantizeLinear", [f"w{i}", "s"], [f"wd{i}"], name=f"wdq{i}"),
            helper.make_node("MatMul", [h, f"wd{i}"], [f"m{i}"], name=f"mm{i}"),
            helper.make_node("Tanh", [f"m{i}"], [f"t{i}"], name=f"tanh{i}"),
        ]
        h = f"t{i}"
    model = _model(nodes, inits, h)
    run = _tampered_runner(f"w{k}", -1.0)
    found = first_diverging_node(model, XS, run, TOL, max_steps=4)  # 12 candidates: 4 steps converge
    assert found["node"] == f"mm{k}" == _brute_force_first(model, XS, run, TOL)
    assert found["exact"] is True


def test_bisection_walks_up_out_of_a_parallel_branch_that_agrees():
    """``x -> a (wrong) -> Add <- b1..b20 (right) <- x``, with ``a`` placed among the b's: a binary search over the
    topological order lands on b's that agree and skips ``a``; the named node must have inputs that agree."""
    inits = [
        numpy_helper.from_array(np.full(4, 1.01, np.float32), "c"),
        numpy_helper.from_array(np.ones(4, np.float32), "ca"),
    ]
    nodes, h = [], "x"
    for i in range(20):
        nodes.append(helper.make_node("Mul", [h, "c"], [f"b{i}"], name=f"b{i}"))
        h = f"b{i}"
        if i == 4:
            nodes.append(helper.make_node("Mul", ["x", "ca"], ["a"], name="a"))
    nodes.append(helper.make_node("Add", ["a", h], ["y"], name="add"))
    model = _model(nodes, inits, "y")
    run = _tampered_runner("ca", 3.0)
    found = first_diverging_node(model, XS, run, TOL)
    assert found["node"] == "a" == _brute_force_first(model, XS, run, TOL)


def test_bisection_counts_the_cosine_only_on_the_samples_the_gate_judged():
    """``x -> Add(b) = h -> Mul(w) = y``. The runtime's ``b`` is off by 1e-4 (harmless: 3e-5 of the range) and its
    ``w`` has the wrong sign (the fault). Sample 0 sits at ``x = -b``, so its ``h`` is ~1e-6 and the 1e-4 offset turns
    it (cosine far below 0.999); the gate leaves such a near-zero sample's cosine out. Counting every sample's
    cosine, the search names the Add; counting the gate's samples, the Mul, the node the max abs error names."""
    b = np.array([1.0, -2.0, 0.5, 1.5], np.float32)
    inits = [numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.full(4, 2.0, np.float32), "w")]
    nodes = [
        helper.make_node("Add", ["x", "b"], ["h"], name="shift"),
        helper.make_node("Mul", ["h", "w"], ["y"], name="scale"),
    ]
    model = _model(nodes, inits, "y")
    x = np.stack([-b + np.float32(1e-6) * np.array([-1, 1, 1, -1], np.float32), np.array([2, 1, -3, 0.5])])
    x = x.astype(np.float32)
    run = _tampered_runner("b", 1.0001, w=-1.0)
    everyone = first_diverging_node(model, x, run, TOL)
    assert everyone["node"] == "shift" and everyone["cosine"] < 0.5
    judged = first_diverging_node(model, x, run, TOL, cosine_samples=np.array([False, True]))
    assert judged["node"] == "scale" == _brute_force_first(model, x, run, TOL)
    assert judged["cosine"] == pytest.approx(-1.0, abs=1e-6)  # sample 1: the sign flip
    with pytest.raises(ValueError, match="one bool per input sample"):
        first_diverging_node(model, x, run, TOL, cosine_samples=np.array([True]))


# ------------------------------------------------------------------------------------------------------------ lint
def _qdq_conv(act_zero_point: bool = True, weight_zero_point: bool = True, weight_axis: int = 0) -> onnx.ModelProto:
    """``x -> Q -> DQ -> Conv(DQ(int8 W), bias)``: with both zero points int8 and the weight scale on axis 0, the
    graph TensorRT wants. Zero points can be left out (ONNX then takes uint8 for Q, the input's type for DQ)."""
    channels = 4 if weight_axis == 0 else 3
    w = np.random.default_rng(0).integers(-100, 100, (4, 3, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.full(channels, 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(channels, np.int8), "wzp"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b"),
    ]
    azp = ["zp"] if act_zero_point else []
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", *azp], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", *azp], ["xd"], name="dq"),
        helper.make_node(
            "DequantizeLinear", ["w", "ws", *(["wzp"] if weight_zero_point else [])], ["wd"], name="wdq",
            axis=weight_axis,
        ),
        helper.make_node("Conv", ["xd", "wd", "b"], ["y"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_lint_is_quiet_on_a_clean_qdq_conv():
    assert lint_tensorrt(_qdq_conv()) == []


def test_lint_takes_a_dequantized_int8_weight_without_zero_point_as_signed():
    """ONNX: a DequantizeLinear without zero point has its input's type. The int8 weight was reported as
    'unsigned' (an error, which stops a TensorRT export with exit 5)."""
    model = _qdq_conv(weight_zero_point=False)
    weights = _ort(_with_output(model, "wd"), np.zeros((1, 3, 8, 8), np.float32), False)
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w"))
    assert weights.min() < 0 and np.allclose(weights, w * 0.01)  # ONNX Runtime decodes it as signed
    assert lint_tensorrt(model) == []


def test_lint_flags_a_quantize_linear_without_zero_point_as_unsigned():
    findings = lint_tensorrt(_qdq_conv(act_zero_point=False))
    found = sorted((f.rule, f.severity, f.node) for f in findings)
    assert found == [("unsigned", "error", "dq"), ("unsigned", "error", "q")]


def test_lint_flags_a_weight_scale_on_the_input_channel_axis():
    """The weight-axis rule only ran for a weight that was itself a constant, never for one behind its DQ."""
    findings = lint_tensorrt(_qdq_conv(weight_axis=1))
    assert [(f.rule, f.severity, f.node) for f in findings] == [("weight-axis", "warning", "wdq")]
    assert "axis 1" in findings[0].message and "output-channel axis 0" in findings[0].message
