"""`--exporter dynamo` below opset 18 (`edgeattn.export.lowering`): LayerNormalization and BatchNormalization are
rewritten so that onnx's version converter can lower the graph (it has no adapter below 17 / 15 for them), and ops
whose newer versions only widened their types (Add, Reshape, Pow, ...; no downgrade adapter) are carried across.

References: float64 numpy LayerNorm / BatchNorm for the hand-built graphs, torch for the exported model; ONNX
Runtime runs the lowered graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from edgeattn.export.lowering import SAME_MEANING_SINCE_13, decompose_for_opset, lower_opset
from edgeattn.export.onnx_export import export_onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from edgeattn.errors import EdgeAttnError

ort = pytest.importorskip("onnxruntime")


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _lower(proto: onnx.ModelProto, opset: int) -> tuple[onnx.ModelProto, dict[str, int]]:
    lowered, done = lower_opset(proto, opset)
    onnx.checker.check_model(lowered, full_check=True)  # against the schemas of the lowered opset
    assert [(o.domain, o.version) for o in lowered.opset_import] == [("", opset)]
    return lowered, done


def _layernorm_graph(shape, axis, bias: bool, used_mean: bool = False) -> tuple[onnx.ModelProto, dict]:
    rng = np.random.default_rng(0)
    norm_shape = shape[axis:]
    scale = rng.normal(1, 0.3, norm_shape).astype(np.float32)
    b = rng.normal(0, 0.3, norm_shape).astype(np.float32)
    inits = [numpy_helper.from_array(scale, "scale")] + ([numpy_helper.from_array(b, "bias")] if bias else [])
    outputs = ["y", "mean"] if used_mean else ["y"]
    node = helper.make_node(
        "LayerNormalization", ["x", "scale", *(["bias"] if bias else [])], outputs, name="ln", axis=axis, epsilon=1e-3
    )
    graph_outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    graph_outputs[0] = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))], graph_outputs, inits
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return proto, {"scale": scale, "bias": b if bias else None}


def _layernorm_reference(x: np.ndarray, axis: int, scale, bias) -> np.ndarray:
    x = x.astype(np.float64)
    axes = tuple(range(axis if axis >= 0 else x.ndim + axis, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + 1e-3) * scale
    return y + bias if bias is not None else y


@pytest.mark.parametrize(
    ("shape", "axis", "bias"), [((2, 5, 8), -1, True), ((2, 5, 8), 1, False), ((3, 4, 6), -2, True)]
)
@pytest.mark.parametrize("opset", [13, 16])
def test_layernorm_lowers_to_primitives_that_match_float64(shape, axis, bias, opset):
    proto, params = _layernorm_graph(shape, axis, bias)
    with pytest.raises(Exception, match="No Previous Version of LayerNormalization"):
        version_converter.convert_version(proto, opset)  # why the rewrite exists
    lowered, done = _lower(proto, opset)
    assert done == {"LayerNormalization": 1}
    assert "LayerNormalization" not in {n.op_type for n in lowered.graph.node}
    x = (np.random.default_rng(1).normal(0.5, 2.0, shape)).astype(np.float32)
    ref = _layernorm_reference(x, axis, params["scale"], params["bias"])
    np.testing.assert_allclose(_run(lowered, x), ref, atol=2e-5)


def _batchnorm_graph(stats_as_inputs: bool = False) -> tuple[onnx.ModelProto, dict]:
    rng = np.random.default_rng(2)
    c = 6
    p = {
        "gamma": rng.normal(1, 0.5, c),
        "beta": rng.normal(0, 0.5, c),
        "mean": rng.normal(0, 1, c),
        "var": rng.uniform(0.1, 3.0, c),
    }
    p = {k: v.astype(np.float32) for k, v in p.items()}
    names = list(p)
    inits = [] if stats_as_inputs else [numpy_helper.from_array(v, k) for k, v in p.items()]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c, 5, 7])]
    if stats_as_inputs:
        inputs += [helper.make_tensor_value_info(k, TensorProto.FLOAT, [c]) for k in names]
    node = helper.make_node("BatchNormalization", ["x", *names], ["y"], name="bn", epsilon=1e-2)
    graph = helper.make_graph(
        [node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, c, 5, 7])], inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), p


def test_batchnorm_below_15_becomes_a_per_channel_affine_that_matches_float64():
    proto, p = _batchnorm_graph()
    with pytest.raises(Exception, match="No Adapter From Version \\$15 for BatchNormalization"):
        version_converter.convert_version(proto, 14)
    lowered, done = _lower(proto, 14)
    assert done == {"BatchNormalization": 1}
    assert [n.op_type for n in lowered.graph.node] == ["Mul", "Add"]
    x = np.random.default_rng(3).normal(0, 2, (2, 6, 5, 7)).astype(np.float32)
    q = {k: v.astype(np.float64).reshape(1, -1, 1, 1) for k, v in p.items()}
    ref = (x - q["mean"]) / np.sqrt(q["var"] + 1e-2) * q["gamma"] + q["beta"]
    np.testing.assert_allclose(_run(lowered, x), ref, atol=1e-5)


def test_nothing_is_rewritten_where_the_converter_has_a_way_down():
    ln, _ = _layernorm_graph((2, 5, 8), -1, True)
    assert decompose_for_opset(ln, 17) == {}
    bn, _ = _batchnorm_graph()
    assert decompose_for_opset(bn, 15) == {}  # BatchNormalization 15 is the converter's to lower
    assert [n.op_type for n in bn.graph.node] == ["BatchNormalization"]


def test_what_cannot_be_rewritten_is_named():
    ln, _ = _layernorm_graph((2, 5, 8), -1, True, used_mean=True)
    with pytest.raises(EdgeAttnError) as err:
        decompose_for_opset(ln, 16)
    assert str(err.value) == (
        "cannot lower LayerNormalization node 'ln' below opset 17: its Mean/InvStdDev outputs are read; "
        "use --opset 17 or higher"
    )
    bn, _ = _batchnorm_graph(stats_as_inputs=True)
    with pytest.raises(EdgeAttnError) as err:
        decompose_for_opset(bn, 14)
    assert str(err.value) == (
        "cannot lower BatchNormalization node 'bn' below opset 15: its statistics are not constants "
        "(gamma, beta, mean, var); use --opset 15 or higher"
    )


class _NormNet(torch.nn.Module):
    """BatchNorm -> Conv -> tokens -> LayerNorm -> Linear: both ops the converter cannot lower (a BatchNorm after
    the Conv would be folded into it by the exporter's optimizer)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)
        self.ln = torch.nn.LayerNorm(8)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.conv(self.bn(x)).flatten(2).transpose(1, 2)
        return self.head(self.ln(t)).mean(1)


@pytest.mark.parametrize("dynamic_batch", [False, True])
@pytest.mark.parametrize("opset", [13, 16])
def test_dynamo_export_reaches_opsets_below_17_and_matches_torch(opset, dynamic_batch):
    torch.manual_seed(0)
    model = _NormNet().eval()
    with torch.no_grad():  # statistics away from the identity, so that folding them is measurable
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 6, 6)
    exported = export_onnx(model, x[:1], opset=opset, exporter="dynamo", dynamic_batch=dynamic_batch)
    assert [(o.domain, o.version) for o in exported.model.opset_import] == [("", opset)]
    ops = {n.op_type for n in exported.model.graph.node}
    assert "LayerNormalization" not in ops
    assert ("BatchNormalization" in ops) == (opset >= 15)
    assert exported.cleanup["LayerNormalization_decomposed"] == 1
    with torch.no_grad():
        ref = model(x[:1]).numpy()
    np.testing.assert_allclose(_run_named(exported.model, x[:1].numpy()), ref, atol=1e-5)
    if dynamic_batch:  # old code: 'No Adapter From Version $15 for Shape' at 13 (the batch is read at run time)
        with torch.no_grad():
            np.testing.assert_allclose(_run_named(exported.model, x.numpy()), model(x).numpy(), atol=1e-5)


def _run_named(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _elementwise_graph(allowzero: int = 0, shape: tuple[int, ...] = (4, 6)) -> onnx.ModelProto:
    """x -> Pow(2) -> Add(1) -> Reshape(shape): at opset 18, Pow is version 15 and Add, Reshape are 14."""
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["p"], name="pow"),
        helper.make_node("Add", ["p", "one"], ["a"], name="add"),
        helper.make_node("Reshape", ["a", "shape"], ["y"], name="reshape", allowzero=allowzero),
    ]
    inits = [
        numpy_helper.from_array(np.asarray(2.0, np.float32), "two"),
        numpy_helper.from_array(np.asarray(1.0, np.float32), "one"),
        numpy_helper.from_array(np.asarray(shape, np.int64), "shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("allowzero", [0, 1])  # torch writes 1; with no 0 in the shape it is Reshape 13
def test_ops_that_only_gained_types_are_carried_down_unchanged(allowzero):
    proto = _elementwise_graph(allowzero)
    with pytest.raises(Exception, match=r"No Adapter From Version"):
        version_converter.convert_version(proto, 13)  # why they are held out of the converter's way
    lowered, done = _lower(_elementwise_graph(allowzero), 13)
    assert done == {}
    assert [(n.op_type, n.domain) for n in lowered.graph.node] == [("Pow", ""), ("Add", ""), ("Reshape", "")]
    assert all(a.name != "allowzero" for n in lowered.graph.node for a in n.attribute)  # not in Reshape 13
    x = np.random.default_rng(4).normal(0, 1, (2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(lowered, x), (x.astype(np.float64) ** 2 + 1).reshape(4, 6), rtol=1e-6)


def test_a_reshape_that_needs_allowzero_is_not_passed_off_as_opset_13():
    # a 0 in the target shape means "size 0" with allowzero=1 and "copy that dimension" in Reshape 13
    with pytest.raises(EdgeAttnError) as err:
        lower_opset(_elementwise_graph(allowzero=1, shape=(4, 0)), 13)
    assert str(err.value) == (
        "cannot lower Reshape node 'reshape' below opset 14: allowzero=1 with a target shape that is computed at run "
        "time or holds a 0, which Reshape 13 reads as 'copy that dimension'; use --opset 14 or higher"
    )
    assert err.value.exit_code == 5
    lowered, _ = _lower(_elementwise_graph(allowzero=1, shape=(4, 0)), 14)  # Reshape 14 keeps it
    assert [a.i for a in lowered.graph.node[2].attribute if a.name == "allowzero"] == [1]


def test_named_but_unread_layernorm_statistics_do_not_block_it():
    proto, params = _layernorm_graph((2, 5, 8), -1, True, used_mean=True)
    del proto.graph.output[1]  # "mean" is named by the node, read by nobody
    lowered, _ = _lower(proto, 13)
    x = np.random.default_rng(5).normal(0, 1, (2, 5, 8)).astype(np.float32)
    ref = _layernorm_reference(x, -1, params["scale"], params["bias"])
    np.testing.assert_allclose(_run(lowered, x), ref, atol=2e-5)


def test_a_double_layernorm_keeps_its_type():
    proto, params = _layernorm_graph((2, 5, 8), -1, True)
    for v in (*proto.graph.input, *proto.graph.output):
        v.type.tensor_type.elem_type = TensorProto.DOUBLE
    for t in proto.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    proto.graph.node[0].attribute.append(helper.make_attribute("stash_type", 11))  # compute in double
    lowered, _ = _lower(proto, 13)  # old code: an eps of float32 beside a double Add failed the checker
    x = np.random.default_rng(6).normal(0, 1, (2, 5, 8))
    ref = _layernorm_reference(x, -1, params["scale"], params["bias"])
    np.testing.assert_allclose(_run(lowered, x), ref, atol=1e-6)


def _graph(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_shape_and_split_that_use_nothing_newer_than_13_are_carried_down():
    """A dynamic batch makes torch write Shape(start=0, end=1) (15); chunk() writes Split with num_outputs (18)."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    proto = _graph(
        [
            helper.make_node("Shape", ["x"], ["s"], name="shape"),
            helper.make_node("Shape", ["x"], ["batch"], name="batch", start=0, end=1),
            helper.make_node("Shape", ["x"], ["last"], name="last", start=-1),
            helper.make_node("Split", ["x"], ["a", "b"], name="split", axis=1, num_outputs=2),
            helper.make_node("Sub", ["a", "b"], ["d"], name="sub"),
        ],
        [helper.make_tensor_value_info("x", f, ["n", 6])],
        [
            helper.make_tensor_value_info("s", i64, [2]),
            helper.make_tensor_value_info("batch", i64, [1]),
            helper.make_tensor_value_info("last", i64, [1]),
            helper.make_tensor_value_info("d", f, ["n", 3]),
        ],
    )
    with pytest.raises(Exception, match=r"No Adapter From Version"):
        version_converter.convert_version(proto, 13)
    lowered, done = _lower(proto, 13)
    assert done == {"Shape": 2}
    sess = ort.InferenceSession(lowered.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.arange(30, dtype=np.float32).reshape(5, 6)
    s_out, batch, last, d_out = sess.run(None, {"x": x})
    assert (s_out.tolist(), batch.tolist(), last.tolist()) == ([5, 6], [5], [6])
    np.testing.assert_array_equal(d_out, x[:, :3] - x[:, 3:])


def test_a_failed_lowering_leaves_the_callers_model_valid():
    proto = _elementwise_graph()
    proto.graph.node.append(helper.make_node("Trilu", ["y"], ["t"], name="trilu"))  # no version before 14
    proto.graph.output.append(helper.make_tensor_value_info("t", TensorProto.FLOAT, [4, 6]))
    with pytest.raises(EdgeAttnError, match="cannot lower the ONNX graph to opset 13"):
        lower_opset(proto, 13)
    assert {n.domain for n in proto.graph.node} == {""}
    assert [o.domain for o in proto.opset_import] == [""]
    onnx.checker.check_model(proto, full_check=True)


@pytest.mark.parametrize("op", sorted(SAME_MEANING_SINCE_13))
def test_held_ops_keep_their_inputs_and_attributes_from_opset_13_to_18(op):
    """The rule the hold rests on, checked against onnx's own schemas: every version of the op from opset 13 to
    18 takes the same inputs, outputs and attributes (Reshape 14 adds allowzero, dropped only when it is 0)."""
    schemas = [onnx.defs.get_schema(op, v) for v in range(13, 19)]
    for s in schemas:
        attrs = set(s.attributes) - ({"allowzero"} if op == "Reshape" else set())
        assert attrs == set(schemas[0].attributes), (op, s.since_version)
        assert [i.name for i in s.inputs] == [i.name for i in schemas[0].inputs], (op, s.since_version)
        assert [o.name for o in s.outputs] == [o.name for o in schemas[0].outputs], (op, s.since_version)
