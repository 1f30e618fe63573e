"""QA of `edgeattn profile`: figures recomputed from the raw samples, MACs against a hand count and a second
counter, throughput at the batch actually run, tables that never cut a number, outputs refused before measuring.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from _profiler_models import conv_stack, to_openvino_ir
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from edgeattn.cli import main
from edgeattn.profile import ProfileReport, measure, profile_artifacts, render_table
from edgeattn.profile.macs import onnx_macs, openvino_macs
from edgeattn.profile.runners import _first_line

ov = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    """A fixed-batch-4 conv stack, its dynamic-batch twin, and its OpenVINO IR (all tiny)."""
    d = tmp_path_factory.mktemp("qa_artifacts")
    conv_stack(d / "b4.onnx", size=8, ch=8, n=2, batch=4)
    conv_stack(d / "dyn.onnx", size=8, ch=8, n=2, batch="N")
    conv_stack(d / "small.onnx", size=8, ch=8, n=2)
    to_openvino_ir(d / "small.onnx", d / "small.xml")
    return d


def _err(capsys) -> str:
    return capsys.readouterr().err


# ---------------------------------------------------------------- throughput at the batch actually run


@pytest.mark.parametrize(
    ("name", "kwargs", "batch"),
    [
        ("b4.onnx", {}, 4),  # exported with a fixed batch of 4: 4 samples per inference without --batch
        ("dyn.onnx", {"shapes": {"x": [3, 3, 8, 8]}}, 3),  # batch set through --shape
        ("dyn.onnx", {"batch": 2}, 2),
        ("dyn.onnx", {}, 1),
    ],
)
def test_throughput_counts_the_samples_each_inference_runs(art, name, kwargs, batch):
    report = profile_artifacts([art / name], iters=5, warmup=1, threads=1, **kwargs)
    r = report.results[0]
    assert r.input_shapes["x"][0] == batch and r.batch == batch
    # reference: samples per second recomputed from the raw samples with numpy
    assert r.latency.throughput == pytest.approx(batch * 1000.0 / np.mean(r.samples_ms))
    assert report.settings["batch"] == kwargs.get("batch")


def test_input_batch_rules():
    assert measure.input_batch({"x": [4, 3, 8, 8]}) == 4
    assert measure.input_batch({"x": [4, 3, 8, 8]}, batch=2) == 2
    assert measure.input_batch({"scale": [], "ids": [6, 128]}) == 6
    assert measure.input_batch({}) == 1


# ---------------------------------------------------------------- every figure of the JSON from its samples


def test_json_figures_recomputed_from_the_samples(art, tmp_path):
    out = tmp_path / "r.json"
    args = ["profile", str(art / "small.onnx"), str(art / "small.xml"), "--threads", "1", "--warmup", "1"]
    rc = main([*args, "--iters", "9", "--per-layer", "--layer-runs", "3", "--json", str(out)])
    assert rc == 0
    report = ProfileReport.model_validate(json.loads(out.read_text()))
    first = report.results[0].latency.p50_ms
    for r in report.results:
        s, lat = r.samples_ms, r.latency
        assert lat.count == len(s) == 9
        assert lat.mean_ms == pytest.approx(statistics.fmean(s))
        assert lat.std_ms == pytest.approx(statistics.stdev(s))
        assert (lat.min_ms, lat.max_ms) == (min(s), max(s))
        assert lat.p50_ms == pytest.approx(statistics.median(s))
        # statistics.quantiles' "inclusive" method is numpy's linear interpolation
        q = statistics.quantiles(s, n=100, method="inclusive")
        assert (lat.p90_ms, lat.p99_ms) == (pytest.approx(q[89]), pytest.approx(q[98]))
        assert lat.throughput == pytest.approx(1000.0 / statistics.fmean(s))
        assert r.ratio_to_first == pytest.approx(statistics.median(s) / first)
        ef = r.efficiency
        assert ef.achieved_gmacs == pytest.approx(ef.macs / (statistics.median(s) * 1e-3) / 1e9)
        assert ef.fraction_of_peak == pytest.approx(ef.achieved_gmacs / ef.peak_gmacs)
        b = r.layers
        assert b.total_ms == pytest.approx(sum(layer.time_ms for layer in b.layers))
        assert sum(layer.share for layer in b.layers) == pytest.approx(1.0)
        assert sum(b.by_op_type.values()) == pytest.approx(b.total_ms)
        assert sum(b.by_precision.values()) == pytest.approx(b.total_ms)
        assert b.sum_over_end_to_end == pytest.approx(b.total_ms / lat.p50_ms)


# ---------------------------------------------------------------- MACs: a hand count and a second counter


def test_macs_of_strided_grouped_dilated_conv_transposed_conv_and_gemms(tmp_path):
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        # x [2,8,10,12], w [16, 8/2, 3, 3], stride 2, dilation 2, pads 1: out [2,16,4,5]
        helper.make_node("Conv", ["x", "w"], ["c"], group=2, strides=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1]),
        # ConvTranspose stride 2, w [16, 3, 2, 2]: out [2,3,8,10]
        helper.make_node("ConvTranspose", ["c", "wt"], ["ct"], strides=[2, 2]),
        helper.make_node("Flatten", ["ct"], ["fl"]),  # [2, 240]
        helper.make_node("Gemm", ["fl", "gw"], ["gm"], transB=1),  # [2,240] x [7,240]^T -> [2,7]
        helper.make_node("Transpose", ["gm"], ["gmt"]),  # [7, 2]
        helper.make_node("Gemm", ["gmt", "gb"], ["g2"], transA=1),  # [7,2]^T x [7,5] -> [2,5]
        helper.make_node("MatMul", ["g2", "mw"], ["y"]),  # [2,5] x [5,3]
    ]
    graph = helper.make_graph(
        nodes,
        "mix",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 10, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [init("w", 16, 4, 3, 3), init("wt", 16, 3, 2, 2), init("gw", 7, 240), init("gb", 7, 5), init("mw", 5, 3)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    hand = (
        2 * 16 * 4 * 5 * (8 // 2) * 3 * 3  # Conv: out elements x Cin/groups x kH x kW
        + 2 * 16 * 4 * 5 * 3 * 2 * 2  # ConvTranspose: in elements x Cout x kH x kW
        + 2 * 7 * 240  # Gemm
        + 2 * 5 * 7  # Gemm, transA: K is A's first dim
        + 2 * 3 * 5  # MatMul
    )
    assert hand == 34180
    assert onnx_macs(model, {"x": [2, 8, 10, 12]}) == (hand, 0)
    path = tmp_path / "mix.onnx"
    onnx.save(model, str(path))
    ov_model = ov.Core().read_model(str(path))
    ov_model.reshape({"x": [2, 8, 10, 12]})
    assert openvino_macs(ov_model) == (hand, 0)  # the second counter, on OpenVINO's own graph


def test_macs_of_a_grouped_transposed_conv_in_both_counters(tmp_path):
    """OpenVINO names a grouped ConvTranspose GroupConvolutionBackpropData; its MACs were left out (no note)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=2, strides=[2, 2])],
        "gct",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    hand = 2 * 8 * 8 * 8 * 3 * 4 * 4  # in elements x Cout/groups x kH x kW (Cout = 2 groups x 3)
    assert hand == 49152 and onnx_macs(model, {"x": [2, 8, 8, 8]}) == (hand, 0)
    path = tmp_path / "gct.onnx"
    onnx.save(model, str(path))
    ov_model = ov.Core().read_model(str(path))
    assert "GroupConvolutionBackpropData" in {op.get_type_name() for op in ov_model.get_ordered_ops()}
    assert openvino_macs(ov_model) == (hand, 0)


# ---------------------------------------------------------------- tables never cut a number


def test_tables_at_80_columns_print_every_figure_whole(art):
    report = profile_artifacts([art / "small.onnx", art / "small.xml"], iters=3, warmup=0, threads=1)
    r = report.results[1]
    # a slow artifact: a 4-digit cold start and a throughput below 1/s
    r.cold_ms = 8213.4711
    r.latency.throughput = 0.2174
    console = Console(width=80, record=True)
    render_table(report, console)
    text = console.export_text()
    assert "8213.47" in text and "…" not in text
    assert "0.2174" in text  # was printed as "0" with ".0f"
    for res in report.results:
        assert f"{res.efficiency.fraction_of_peak * 100:.1f}" in text  # the %peak column was squeezed out
        assert f"{res.ratio_to_first:.2f}" in text


# ---------------------------------------------------------------- outputs refused before measuring


def _no_measuring(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("measured although the output was refused")

    monkeypatch.setattr("edgeattn.profile.profile_artifacts", refuse)


def test_existing_json_is_not_overwritten_without_force(art, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.json"
    out.write_text("keep me\n")
    with monkeypatch.context() as m:
        _no_measuring(m)
        assert main(["profile", str(art / "small.onnx"), "--json", str(out)]) == 2
    err = _err(capsys)
    assert len(err.splitlines()) == 1 and "exists; pass --force" in err and "Traceback" not in err
    assert out.read_text() == "keep me\n"
    assert main(["profile", str(art / "small.onnx"), "--iters", "2", "--json", str(out), "--force"]) == 0
    assert ProfileReport.model_validate_json(out.read_text()).results[0].latency.count == 2


@pytest.mark.parametrize(
    ("plot_name", "json_name", "needle"),
    [
        ("lat.txt", None, "cannot write '.txt' files"),
        ("same.json", "same.json", "name the same file"),
    ],
)
def test_bad_plot_is_refused_before_measuring(art, tmp_path, monkeypatch, capsys, plot_name, json_name, needle):
    _no_measuring(monkeypatch)
    args = ["profile", str(art / "small.onnx"), "--plot", str(tmp_path / plot_name)]
    if json_name:
        args += ["--json", str(tmp_path / json_name)]
    assert main(args) == 2
    err = _err(capsys)
    assert len(err.splitlines()) == 1 and needle in err
    assert not list(tmp_path.iterdir())  # nothing written


# ---------------------------------------------------------------- a broken IR: one line, no runtime noise


@pytest.mark.parametrize("broken", ["ir", "onnx"])
def test_broken_file_in_openvino_is_one_line_without_frontend_noise(art, tmp_path, broken):
    if broken == "ir":
        path = tmp_path / "bad.xml"
        path.write_text((art / "small.xml").read_text()[:300])  # cut mid-tag
        (tmp_path / "bad.bin").write_bytes((art / "small.bin").read_bytes())
        runtime = []
    else:  # OpenVINO probes every frontend on it; TensorFlow's logged two abseil lines and a banner before
        path = tmp_path / "bad.onnx"
        path.write_text("garbage\n")
        runtime = ["--runtime", "openvino"]
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from edgeattn.cli import main; sys.exit(main())",
            "profile",
            str(path),
            *runtime,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1, proc.stderr  # TensorFlow's frontend printed 3 lines before it
    assert proc.stderr.startswith(f"error: cannot load '{path}' with openvino:"), proc.stderr
    assert "Exception from" not in proc.stderr


def test_first_line_skips_where_openvino_raised():
    exc = RuntimeError(
        "Exception from src/inference/src/cpp/core.cpp:84:\n"
        "Check 'res.status == pugi::status_ok' failed at src/frontends/ir/src/input_model.cpp:219:\n"
        "Start-end tags mismatch at offset 299\n"
    )
    assert _first_line(exc) == "Start-end tags mismatch at offset 299"
    assert _first_line(RuntimeError("plain message\nmore")) == "plain message"
    assert _first_line(RuntimeError("")) == "RuntimeError"


def test_ort_dequantize_time_is_not_counted_as_int8_compute(tmp_path):
    """A Q/DQ graph that ONNX Runtime did not fuse runs its Conv in fp32 between DequantizeLinear nodes: the DQ's
    int8 input made its time count as int8 compute. Conversions get their own label; integer kernels stay int8."""
    from edgeattn.profile import layers as L

    nodes = [  # (name, op, first input type, ms)
        ("dq", "DequantizeLinear", "int8", 0.4),
        ("conv", "Conv", "float", 1.0),
        ("q", "QuantizeLinear", "float", 0.2),
        ("qconv", "QLinearConv", "uint8", 0.5),
    ]
    events, ts = [], 0
    for name, op, dtype, ms in nodes:
        args = {"op_name": op, "provider": "CPUExecutionProvider", "input_type_shape": [{dtype: [1, 4]}]}
        events.append({"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": ms * 1000, "args": args})
        ts += ms * 1000 + 1
    events.append({"cat": "Session", "name": "model_run", "ts": 0, "dur": ts})
    acc = L.LayerAccumulator()
    assert L.read_ort_trace(events, acc) == 1
    b = acc.breakdown("ort", end_to_end_p50_ms=2.1)
    assert {x.name: x.precision for x in b.layers} == {"dq": "q/dq", "conv": "fp32", "q": "q/dq", "qconv": "int8"}
    assert b.by_precision == pytest.approx({"fp32": 1.0, "q/dq": 0.6, "int8": 0.5})  # hand sums of the events
