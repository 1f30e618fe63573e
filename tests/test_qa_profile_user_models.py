"""QA of `edgeattn profile` on users' own models: MACs of ONNX Runtime's padded NCHWc convolutions (also fused
with a residual Add), inputs of unknown rank, one batch across dynamic-batch inputs, OpenVINO load errors,
checkpoints and model names given as artifacts, a repeated --shape, OpenVINO's whole-microsecond counters on tiny
models.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeattn.cli import main
from edgeattn.cli.profile import _parse_shapes
from edgeattn.errors import EdgeAttnError
from edgeattn.profile.layers import graph_name_candidates, ort_macs_by_precision
from edgeattn.profile.measure import efficiency
from edgeattn.profile.runners import _first_line, onnx_node_macs, open_runner, resolve_shapes

pytest.importorskip("onnxruntime")
OPSET = [helper.make_opsetid("", 17)]
NO_OPENVINO = importlib.util.find_spec("openvino") is None
RUNTIMES = ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(NO_OPENVINO, reason="no openvino"))]


def _conv_net(path: Path, dtype: int = TensorProto.FLOAT16) -> None:
    """Conv 3->24 (3x3) -> Relu -> Conv 24->40 (3x3) -> Relu -> Conv 40->20 (1x1) on a 64x64 image, no padding."""
    np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for i, (cin, cout, k) in enumerate([(3, 24, 3), (24, 40, 3), (40, 20, 1)]):
        inits += [
            numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) * 0.1).astype(np_dtype), f"w{i}"),
            numpy_helper.from_array(np.zeros(cout, np_dtype), f"b{i}"),
        ]
        out = "y" if i == 2 else f"c{i}"
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [out], name=f"/{2 * i}/Conv"))
        if i < 2:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"/{2 * i + 1}/Relu"))
            x = f"r{i}"
    _save_net(path, nodes, inits, dtype, [1, 3, 64, 64])


def _save_net(path: Path, nodes: list, inits: list, dtype: int, shape: list[int]) -> None:
    """An ONNX model of ``nodes`` from input ``x`` (``shape``) to output ``y``, saved at ``path``."""
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("x", dtype, shape)],
        [helper.make_tensor_value_info("y", dtype, None)],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=OPSET), str(path))


# by hand: output elements x (input channels x kernel area) per Conv, valid padding
HAND_MACS = 24 * 62 * 62 * 3 * 9 + 40 * 60 * 60 * 24 * 9 + 20 * 60 * 60 * 40  # 2490912 + 31104000 + 2880000


def test_padded_nchwc_convolutions_count_the_graphs_macs(tmp_path):
    """ORT runs the fp16 net's Convs in fp32 NCHWc kernels with channels padded to 32/48/32 (58617216 MACs by the
    trace's shapes); the peak's MACs must be the model's 36474912, all fp32."""
    _conv_net(tmp_path / "fp16.onnx")
    runner = open_runner(tmp_path / "fp16.onnx", "onnxruntime", threads=1)
    try:
        macs, source = runner.macs()
        assert macs == HAND_MACS == 36474912
        eff = efficiency(runner, macs, source, threads=1)
    finally:
        runner.close()
    assert eff.macs_by_precision == {"fp32": HAND_MACS}
    assert eff.macs_covered == pytest.approx(1.0)
    assert "cover" not in eff.note


def _event(name: str, op: str, ins: list[list[int]], out: list[int], dtype: str = "float") -> dict:
    return {
        "cat": "Node",
        "name": f"{name}_kernel_time",
        "ts": 10,
        "dur": 1,
        "args": {
            "op_name": op,
            "input_type_shape": [{dtype: s} for s in ins],
            "output_type_shape": [{dtype: out}],
        },
    }


# the trace of the net above as ORT 1.x records it: kernels named after their output tensors, channels padded
PADDED_TRACE = [
    {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
    _event("InsertedPrecisionFreeCast_r0_nchwc", "Conv", [[1, 3, 64, 64], [32, 3, 3, 3]], [1, 32, 62, 62]),
    _event("InsertedPrecisionFreeCast_r1_nchwc", "Conv", [[1, 32, 62, 62], [48, 32, 3, 3]], [1, 48, 60, 60]),
    _event("InsertedPrecisionFreeCast_y_nchwc", "Conv", [[1, 48, 60, 60], [32, 48, 1, 1]], [1, 32, 60, 60]),
]
PADDED_MACS = 32 * 62 * 62 * 27 + 48 * 3600 * 288 + 32 * 3600 * 48  # what the padded shapes tell: 58617216


def test_trace_nodes_map_back_to_the_graphs_nodes(tmp_path):
    _conv_net(tmp_path / "fp16.onnx")
    table = onnx_node_macs(onnx.load(str(tmp_path / "fp16.onnx")), {"x": [1, 3, 64, 64]})
    # by node name, by output, and by the Relu output ORT names the fused Conv after
    assert table["/0/Conv"] == table["c0"] == table["r0"] == 24 * 62 * 62 * 27
    assert table["r1"] == 40 * 3600 * 216 and table["y"] == 20 * 3600 * 40
    assert graph_name_candidates("InsertedPrecisionFreeCast_r0_nchwc") == ["InsertedPrecisionFreeCast_r0_nchwc", "r0"]
    assert graph_name_candidates("/f/Conv_token_7") == ["/f/Conv_token_7", "/f/Conv"]
    assert ort_macs_by_precision(PADDED_TRACE, HAND_MACS, table) == ({"fp32": HAND_MACS}, "")
    assert ort_macs_by_precision(PADDED_TRACE) == ({"fp32": PADDED_MACS}, "")  # no graph: nothing to correct by


def test_counts_never_exceed_the_graphs_and_keep_their_proportions():
    """Without node names to map, padded counts are scaled down to the graph's total, keeping the split."""
    macs, note = ort_macs_by_precision(PADDED_TRACE, HAND_MACS)
    assert macs == {"fp32": HAND_MACS} and "scaled down" in note
    mixed = [*PADDED_TRACE, _event("q", "QLinearMatMul", [[1, 100], [100, 8]], [1, 8], "uint8")]
    macs, _ = ort_macs_by_precision(mixed, 1_000_000)
    assert sum(macs.values()) == 1_000_000
    # reference: the proportions of the raw counts, in float64
    assert macs["int8"] / 1e6 == pytest.approx(800 / (PADDED_MACS + 800), abs=1e-6)


def _residual_net(path: Path, dtype: int) -> None:
    """Conv 3->24 (3x3) -> Relu = r0; r0 + Conv 24->24 (3x3)(r0) -> Relu = r1 (the residual Add takes the Conv
    second); Conv 24->40 (1x1)(r1) + Conv 24->40 (1x1)(r1) = y (an Add of two Convs). Padding 1, 32x32 image."""
    np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    rng = np.random.default_rng(1)
    inits = []
    for i, (cin, cout, k) in enumerate([(3, 24, 3), (24, 24, 3), (24, 40, 1), (24, 40, 1)]):
        w = (rng.standard_normal((cout, cin, k, k)) * 0.1).astype(np_dtype)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(cout, np_dtype), f"b{i}")]

    def conv(i: int, x: str, out: str) -> onnx.NodeProto:
        pads = [1, 1, 1, 1] if i < 2 else [0, 0, 0, 0]
        return helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [out], name=f"/conv{i}", pads=pads)

    nodes = [
        conv(0, "x", "c0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="/relu0"),
        conv(1, "r0", "c1"),
        helper.make_node("Add", ["r0", "c1"], ["s0"], name="/add0"),
        helper.make_node("Relu", ["s0"], ["r1"], name="/relu1"),
        conv(2, "r1", "c2"),
        conv(3, "r1", "c3"),
        helper.make_node("Add", ["c2", "c3"], ["y"], name="/add1"),
    ]
    _save_net(path, nodes, inits, dtype, [1, 3, 32, 32])


# by hand: output elements x (input channels x kernel area) per Conv, same padding
RESIDUAL_MACS = 24 * 1024 * 3 * 9 + 24 * 1024 * 24 * 9 + 2 * 40 * 1024 * 24  # 663552 + 5308416 + 1966080


def _ort_trace(path: Path, x: np.ndarray, prefix: Path) -> list[dict]:
    """ONNX Runtime's profiling trace of one inference (default optimisations, one thread)."""
    import json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix, options.intra_op_num_threads = True, str(prefix), 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {"x": x})
    return json.loads(Path(session.end_profiling()).read_text())


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16], ids=["fp32", "fp16"])
def test_convolutions_fused_with_a_residual_add_take_their_graph_nodes_macs(tmp_path, dtype):
    """ONNX Runtime 1.x fuses both Adds into NCHWc Convs (the Add's other operand becomes the kernel's fourth
    input) with channels padded to 32/48. The fused kernels keep their Conv's output name, so each takes its graph
    node's MACs: all of them, nothing scaled; the padded shapes alone would count more."""
    path = tmp_path / "residual.onnx"
    _residual_net(path, dtype)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32))
    trace = _ort_trace(path, x.astype(np.float16 if dtype == TensorProto.FLOAT16 else np.float32), tmp_path / "t")
    kernels = [e for e in trace if e.get("cat") == "Node" and e["args"].get("op_name") in ("Conv", "FusedConv")]
    fused = [e for e in kernels if len(e["args"]["input_type_shape"]) == 4]
    assert len(kernels) == 4 and len(fused) == 2, [e["name"] for e in fused]  # both Adds fused into a Conv
    table = onnx_node_macs(onnx.load(str(path)), {"x": [1, 3, 32, 32]})
    assert sum(table[f"/conv{i}"] for i in range(4)) == RESIDUAL_MACS == 7938048
    assert ort_macs_by_precision(trace, RESIDUAL_MACS, table) == ({"fp32": RESIDUAL_MACS}, "")
    padded, note = ort_macs_by_precision(trace)  # what the kernels' own shapes tell
    assert padded["fp32"] > RESIDUAL_MACS and note == ""


# ---------------------------------------------------------------- input shapes


def _relu(path: Path, shape: list | None) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    onnx.save(helper.make_model(graph, opset_imports=OPSET), str(path))


def _two_inputs(path: Path) -> None:
    """z = x @ 1[32x8] + y @ 1[16x8], both inputs with a dynamic batch."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["a"]),
            helper.make_node("MatMul", ["y", "w2"], ["b"]),
            helper.make_node("Add", ["a", "b"], ["z"]),
        ],
        "two",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 16]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.ones((32, 8), np.float32), "w1"),
            numpy_helper.from_array(np.ones((16, 8), np.float32), "w2"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=OPSET), str(path))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_input_of_unknown_rank_needs_and_takes_any_shape(tmp_path, runtime):
    _relu(tmp_path / "r.onnx", None)
    with pytest.raises(EdgeAttnError, match=r"input 'x' of .* has no shape; give it with --shape x="):
        open_runner(tmp_path / "r.onnx", runtime)
    runner = open_runner(tmp_path / "r.onnx", runtime, shapes={"x": [2, 3]})
    try:
        assert runner.input_shapes == {"x": [2, 3]}
        runner.run()
    finally:
        runner.close()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_one_shape_sets_the_batch_of_every_dynamic_batch_input(tmp_path, runtime):
    _two_inputs(tmp_path / "two.onnx")
    runner = open_runner(tmp_path / "two.onnx", runtime, shapes={"x": [3, 32]})
    try:
        assert runner.input_shapes == {"x": [3, 32], "y": [3, 16]}
        runner.run()
    finally:
        runner.close()
    runner = open_runner(tmp_path / "two.onnx", runtime, batch=2, shapes={"x": [2, 32]})
    try:
        assert runner.input_shapes == {"x": [2, 32], "y": [2, 16]}  # --batch sets y's batch too
    finally:
        runner.close()
    # a --shape running another batch than --batch: once ran batch 3 and reported throughput for 2
    with pytest.raises(EdgeAttnError, match=r"^--batch 2 and --shape x=3x32 give '.*two.onnx' two batches; drop one"):
        open_runner(tmp_path / "two.onnx", runtime, batch=2, shapes={"x": [3, 32]})


def test_different_batches_are_refused_where_another_input_needs_one():
    inputs = {"a": [None, 4], "b": [None, 5], "c": [None, 6], "d": [7]}
    with pytest.raises(EdgeAttnError, match=r"different batches \(a 2, b 3\)"):
        resolve_shapes(inputs, None, {"a": [2, 4], "b": [3, 5]}, "m.onnx")
    # every dynamic-batch input given: each as given; fixed inputs untouched
    got = resolve_shapes(inputs, None, {"a": [2, 4], "b": [3, 5], "c": [3, 6]}, "m.onnx")
    assert got == {"a": [2, 4], "b": [3, 5], "c": [3, 6], "d": [7]}
    assert resolve_shapes(inputs, None, None, "m.onnx") == {"a": [1, 4], "b": [1, 5], "c": [1, 6], "d": [7]}


def test_a_shape_given_twice_is_refused(tmp_path, capsys):
    with pytest.raises(EdgeAttnError, match="--shape x given twice"):
        _parse_shapes(["x=1x32", "x=2x32"])
    assert _parse_shapes(["x=1x32", "y=2x16"]) == {"x": [1, 32], "y": [2, 16]}
    _two_inputs(tmp_path / "two.onnx")
    rc = main(["profile", str(tmp_path / "two.onnx"), "--shape", "x=1x32", "--shape", "x=2x32", "--iters", "1"])
    assert rc == 2 and "--shape x given twice" in capsys.readouterr().err


# ---------------------------------------------------------------- what is not an artifact, and load errors


def test_openvino_load_error_keeps_the_line_that_names_the_op(tmp_path):
    exc = RuntimeError(
        "Exception from src/inference/src/cpp/core.cpp:84:\n"
        "Check 'false' failed at src/frontends/common_translators/src/unconverted_ops_report.cpp:151:\n"
        "FrontEnd API failed with OpConversionFailure:\nModel wasn't fully converted.\nSummary:\n"
        "-- No conversion rule found for operations: my.domain.Foo\n\n"
    )
    line = _first_line(exc)
    assert line.startswith("FrontEnd API failed with OpConversionFailure: ")
    assert line.endswith("No conversion rule found for operations: my.domain.Foo")
    pytest.importorskip("openvino")
    node = helper.make_node("Foo", ["x"], ["y"], domain="my.domain")
    graph = helper.make_graph(
        [node],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[*OPSET, helper.make_opsetid("my.domain", 1)])
    onnx.save(model, str(tmp_path / "custom.onnx"))
    with pytest.raises(EdgeAttnError, match=r"No conversion rule found for operations: my\.domain\.Foo"):
        open_runner(tmp_path / "custom.onnx", "openvino")


@pytest.mark.parametrize("extra", [[], ["--runtime", "onnxruntime"], ["--runtime", "openvino"]])
def test_checkpoint_is_refused_with_the_export_command(tmp_path, capsys, extra):
    (tmp_path / "user_model.pt").write_bytes(b"PK\x03\x04 not a model")
    rc = main(["profile", str(tmp_path / "user_model.pt"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and "export it first: edgeattn export" in err and "--target onnx" in err
    assert len(err.strip().splitlines()) == 1


def test_model_name_is_refused_with_the_export_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["profile", "vit_tiny"]) == 2
    # the hint runs as printed: export needs a profile (it read '--target onnx -o DIR', which export refuses)
    hint = "export it first: edgeattn export vit_tiny --target onnx --profile host-cpu -o DIR"
    assert hint in capsys.readouterr().err
    assert main(["profile", "no_such_model"]) == 2
    assert "artifact not found: no_such_model" in capsys.readouterr().err


# ---------------------------------------------------------------- OpenVINO's counters on a tiny model


def test_openvino_breakdown_says_when_counters_cannot_tell_a_tiny_model(tmp_path):
    pytest.importorskip("openvino")
    _relu(tmp_path / "r.onnx", [1, 8])
    runner = open_runner(tmp_path / "r.onnx", "openvino", threads=1)
    try:
        b = runner.profile_layers(25, 0.01)
    finally:
        runner.close()
    covered = b.sum_over_interleaved_e2e or b.sum_over_end_to_end
    # a one-Relu model takes a few us: its counters (whole us) and the request's overhead leave the sum short
    assert b.interleaved_e2e_ms < 0.1 and covered < 0.5
    assert "(whole microseconds) read 0" in b.source
