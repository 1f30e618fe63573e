"""Count an artifact's multiply-accumulates from its graph, and read the precision the graph is stored in.

ONNX: the graph's inputs are fixed to the shapes actually run, shapes are inferred with ONNX's own shape
inference, then Conv/ConvInteger/QLinearConv/ConvTranspose, Gemm and MatMul/MatMulInteger/QLinearMatMul are
counted. OpenVINO: the (reshaped) ``ov.Model``'s Convolution/GroupConvolution/ConvolutionBackpropData/MatMul/
ScaledDotProductAttention ops (OpenVINO fuses attention into SDPA) with their static shapes.
Element-wise ops, softmax and normalisation are not counted (they are not MACs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

_ONNX_CONV_WEIGHT_INDEX = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
_ONNX_MATMUL_INPUTS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}
_ONNX_INT8_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "QGemm",
    "QLinearAdd",
}


def onnx_macs(model: Any, input_shapes: Mapping[str, Sequence[int]] | None = None) -> tuple[int, int]:
    """MACs of one inference of an ``onnx.ModelProto`` at ``input_shapes`` (name -> concrete shape).

    Returns ``(macs, unresolved)`` where ``unresolved`` counts MAC-carrying nodes whose shapes could not be
    inferred (their MACs are missing from the total).
    """
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())  # never edit the caller's graph
    init_names = {t.name for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init_names or not input_shapes or inp.name not in input_shapes:
            continue
        dims = inp.type.tensor_type.shape.dim
        for dim, value in zip(dims, input_shapes[inp.name], strict=False):
            dim.ClearField("dim_param")
            dim.dim_value = int(value)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    total, unresolved = _count_macs(inferred.graph)
    if unresolved:
        # ONNX's inference leaves Slices with computed bounds symbolic (RoPE's cos[:T] in tiny_llama), and at batch
        # 1 the broadcast after them loses the batch dim too; ONNX Runtime's symbolic inference resolves them
        try:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            again = _count_macs(SymbolicShapeInference.infer_shapes(model, auto_merge=True).graph)
        except Exception:  # not installed, or an op it does not know: keep ONNX's (honest) partial count
            again = (total, unresolved)
        total, unresolved = min((total, unresolved), again, key=lambda c: c[1])
    return total, unresolved


def _count_macs(g: Any) -> tuple[int, int]:
    """(MACs, unresolved MAC-carrying nodes) of a shape-inferred ``onnx.GraphProto``."""
    per_node, unresolved = node_macs(g)
    return sum(macs for _, macs in per_node), unresolved


def node_macs(g: Any) -> tuple[list[tuple[Any, int]], int]:
    """``([(node, MACs), ...], unresolved)``: every MAC-carrying node (Conv, ConvTranspose, MatMul, Gemm and their
    integer forms) of a shape-inferred ``onnx.GraphProto`` whose shapes are known, and how many are not."""
    shapes: dict[str, list[int] | None] = {}

    def _record(name: str, ttype: Any) -> None:
        if not ttype.HasField("tensor_type") or not ttype.tensor_type.HasField("shape"):
            shapes[name] = None
            return
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in ttype.tensor_type.shape.dim]
        shapes[name] = None if any(d <= 0 for d in dims) else dims

    for vi in list(g.input) + list(g.value_info) + list(g.output):
        _record(vi.name, vi.type)
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    for node in g.node:  # Constant nodes carry their tensor's shape in the attribute
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(attr.t.dims)

    found: list[tuple[Any, int]] = []
    unresolved = 0
    for node in g.node:
        op = node.op_type
        try:
            if op in _ONNX_CONV_WEIGHT_INDEX:
                out, w = shapes.get(node.output[0]), shapes.get(node.input[_ONNX_CONV_WEIGHT_INDEX[op]])
                found.append((node, math.prod(out) * math.prod(w[1:])))
            elif op == "ConvTranspose":
                x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
                found.append((node, math.prod(x) * math.prod(w[1:])))
            elif op in _ONNX_MATMUL_INPUTS:
                a = shapes.get(node.input[_ONNX_MATMUL_INPUTS[op][0]])
                out = shapes.get(node.output[0])
                found.append((node, math.prod(out) * a[-1]))
            elif op == "Gemm":
                a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
                trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
                found.append((node, math.prod(out) * (a[0] if trans_a else a[1])))
        except (TypeError, IndexError):  # a shape was None: shape inference could not resolve it
            unresolved += 1
    return [(node, int(macs)) for node, macs in found], unresolved


def onnx_precision(model: Any) -> str:
    """``int8`` with Q/DQ or integer ops, ``fp16`` if the float weights are float16, else ``fp32``."""
    import onnx

    ops = {n.op_type for n in model.graph.node}
    if ops & _ONNX_INT8_OPS:
        return "int8"
    float_types = {t.data_type for t in model.graph.initializer}
    if onnx.TensorProto.FLOAT16 in float_types and onnx.TensorProto.FLOAT not in float_types:
        return "fp16"
    return "fp32"


def openvino_macs(model: Any) -> tuple[int, int]:
    """MACs of one inference of an ``openvino.Model`` with static shapes; returns ``(macs, unresolved)``."""
    total, unresolved = 0, 0
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in (
            "Convolution",
            "GroupConvolution",
            "ConvolutionBackpropData",
            "GroupConvolutionBackpropData",
            "MatMul",
            "ScaledDotProductAttention",
        ):
            continue
        shapes = [op.get_input_partial_shape(i) for i in range(op.get_input_size())]
        out = op.get_output_partial_shape(0)
        if not out.is_static or not all(s.is_static for s in shapes[:2]):
            unresolved += 1
            continue
        out_dims = list(out.to_shape())
        a, w = list(shapes[0].to_shape()), list(shapes[1].to_shape())
        if kind == "ScaledDotProductAttention":  # q [..., L, E] k [..., S, E] v [..., S, Ev]: QK^T then AV
            v = list(op.get_input_partial_shape(2).to_shape())
            seq_k = w[-2]
            total += math.prod(a[:-1]) * seq_k * (a[-1] + v[-1])
        elif kind == "Convolution":
            total += math.prod(out_dims) * math.prod(w[1:])
        elif kind == "GroupConvolution":  # weights [G, Cout/G, Cin/G, k...]
            total += math.prod(out_dims) * math.prod(w[2:])
        elif kind == "ConvolutionBackpropData":  # weights [Cin, Cout, k...]
            total += math.prod(a) * math.prod(w[1:])
        elif kind == "GroupConvolutionBackpropData":  # weights [G, Cin/G, Cout/G, k...]
            total += math.prod(a) * math.prod(w[2:])
        else:
            attrs = op.get_attributes()
            k = a[0] if len(a) == 1 else a[-2] if attrs.get("transpose_a") else a[-1]
            total += math.prod(out_dims) * k
    return int(total), unresolved


def openvino_precision(model: Any) -> str:
    """``int8`` if the IR has FakeQuantize or int8/uint8 weights, ``fp16`` if weights are stored as f16."""
    int8 = fp16 = False
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            int8 = True
        elif kind == "Constant":
            et = op.get_output_element_type(0).get_type_name()
            int8 |= et in ("i8", "u8", "i4", "u4")
            fp16 |= et == "f16"
    return "int8" if int8 else "fp16" if fp16 else "fp32"
