"""Static checks of an ONNX graph for TensorRT: op support, Q/DQ placement, attention fusion.

Findings name the node, its op and the rule. Severity:

* ``error``: TensorRT's parser or builder rejects the graph (an op it has no importer for, an int32
  DequantizeLinear on a bias, unsigned int8 inside the graph, a non-zero zero point);
* ``warning``: the engine builds, but a layer will not run in INT8 or an attention block will not be
  fused (an unquantized Conv/Gemm/MatMul input, float weights behind Q->Clip->DQ, a weight scale on
  the wrong axis, a Clip between Q and DQ).

Placement rules (TensorRT's Q/DQ placement guidance): Q/DQ on every input of Conv/Gemm/MatMul and on the softmax output,
zero point 0, signed int8, per-channel weight scales on the output-channel axis, float bias. INT8
attention fuses only when Q/DQ sit before both batched matmuls and on the softmax output, with the
1/sqrt(d) scale applied before the first matmul.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from edgeattn.export.qdq import constant_values, node_attr

__all__ = ["AttentionFusion", "LintFinding", "attention_fusion", "lint_tensorrt", "unsupported_ops"]

# ONNX ops TensorRT's ONNX parser imports (onnx-tensorrt operator support list, 10.x); 11.x keeps them.
TENSORRT_OPS = frozenset(
    [
        "Abs",
        "Acos",
        "Acosh",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "AveragePool",
        "BatchNormalization",
        "Bernoulli",
        "BitShift",
        "BlackmanWindow",
        "Cast",
        "Ceil",
        "Celu",
        "Clip",
        "Compress",
        "Concat",
        "ConstantOfShape",
        "Constant",
        "Conv",
        "ConvTranspose",
        "Cos",
        "Cosh",
        "CumSum",
        "DeformConv",
        "DepthToSpace",
        "DequantizeLinear",
        "Div",
        "Dropout",
        "DynamicQuantizeLinear",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "EyeLike",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gelu",
        "Gemm",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "GridSample",
        "GroupNormalization",
        "GRU",
        "HammingWindow",
        "HannWindow",
        "HardSigmoid",
        "HardSwish",
        "Hardmax",
        "Identity",
        "If",
        "InstanceNormalization",
        "IsInf",
        "IsNaN",
        "LayerNormalization",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "Loop",
        "LpNormalization",
        "LpPool",
        "LRN",
        "LSTM",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "MeanVarianceNormalization",
        "Min",
        "Mish",
        "Mod",
        "Mul",
        "Multinomial",
        "Neg",
        "NonMaxSuppression",
        "NonZero",
        "Not",
        "OneHot",
        "Or",
        "Pad",
        "ParametricSoftplus",
        "Pow",
        "PRelu",
        "QuantizeLinear",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Range",
        "Reciprocal",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Resize",
        "ReverseSequence",
        "RNN",
        "RoiAlign",
        "Round",
        "ScaledTanh",
        "Scan",
        "Scatter",
        "ScatterElements",
        "ScatterND",
        "Selu",
        "Shape",
        "Shrink",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "Sqrt",
        "Squeeze",
        "STFT",
        "Sub",
        "Sum",
        "Tan",
        "Tanh",
        "ThresholdedRelu",
        "Tile",
        "TopK",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Upsample",
        "Where",
        "Xor",
    ]
)
# Ops that only move data: a DequantizeLinear may reach a compute op through them.
_SHAPE_OPS = frozenset(
    {
        "Reshape",
        "Transpose",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Gather",
        "Slice",
        "Split",
        "Identity",
        "Expand",
    }
)
_COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


@dataclass
class LintFinding:
    """One rule violation, naming the node."""

    rule: str
    severity: str
    node: str
    op_type: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def line(self, profile_name: str, rule: bool = True) -> str:
        """The finding as one line naming the node, its op and the profile (each once), and its rule as
        ``[rule]`` unless ``rule`` is False."""
        node = "" if f"node {self.node}" in self.message else f" at node {self.node} ({self.op_type})"
        prof = "" if f"profile '{profile_name}'" in self.message else f", profile '{profile_name}'"
        return f"{self.message}{f' [{self.rule}]' if rule else ''}{node}{prof}"


@dataclass
class AttentionFusion:
    """Whether one attention block (found from its Softmax) is placed so TensorRT fuses it in INT8."""

    softmax: str
    qk_matmul: str | None
    av_matmul: str | None
    fusable: bool
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.nodes = list(model.graph.node)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.users: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                self.users.setdefault(i, []).append(n)
        self.inits = {i.name: i for i in model.graph.initializer}
        self.consts = constant_values(model.graph)

    def source(self, tensor: str) -> onnx.NodeProto | None:
        """The first non-shape producer upstream of ``tensor`` (walking data inputs of shape ops)."""
        node = self.producer.get(tensor)
        while node is not None and node.op_type in _SHAPE_OPS:
            node = self.producer.get(node.input[0])
        return node

    def sink(self, tensor: str) -> list[onnx.NodeProto]:
        """The first non-shape consumers downstream of ``tensor``."""
        out, stack = [], list(self.users.get(tensor, []))
        while stack:
            node = stack.pop()
            if node.op_type in _SHAPE_OPS:
                stack.extend(self.users.get(node.output[0], []))
            else:
                out.append(node)
        return out

    def is_const(self, tensor: str) -> bool:
        if tensor in self.consts:
            return True
        node = self.producer.get(tensor)
        return node is not None and node.op_type in _SHAPE_OPS and self.is_const(node.input[0])


def _name(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({node.output[0]})"


def unsupported_ops(model: onnx.ModelProto, supported: frozenset[str] = TENSORRT_OPS) -> list[onnx.NodeProto]:
    """Nodes of the default ONNX domain whose op the runtime cannot import (custom domains included)."""
    return [n for n in model.graph.node if n.domain not in ("", "ai.onnx") or n.op_type not in supported]


def lint_tensorrt(
    model: onnx.ModelProto, *, major: int = 10, precision: str = "int8", profile_name: str = ""
) -> list[LintFinding]:
    """All TensorRT findings for ``model`` (see the module docstring for the rules)."""
    g = _Graph(model)
    findings: list[LintFinding] = []
    where = f" (profile '{profile_name}', TensorRT {major}.x)" if profile_name else f" (TensorRT {major}.x)"
    for node in unsupported_ops(model):
        findings.append(
            LintFinding(
                "op-support",
                "error",
                _name(node),
                node.op_type,
                f"op {node.op_type} (node {_name(node)}) is not supported by TensorRT's ONNX parser{where}",
            )
        )
    if precision == "int8":
        findings.extend(_qdq_rules(g))
    if precision == "fp16" and major == 11:
        floats = [i for i in g.inits.values() if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2]
        if floats:
            findings.append(
                LintFinding(
                    "typed-graph",
                    "warning",
                    floats[0].name,
                    "initializer",
                    "TensorRT 11 has no --fp16 flag: an FP16 engine needs FP16 weights in the "
                    f"graph, but {len(floats)} weight tensors are FP32",
                )
            )
    return findings


def _qdq_rules(g: _Graph) -> list[LintFinding]:
    out: list[LintFinding] = []
    for node in g.nodes:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp_name = node.input[2] if len(node.input) > 2 else ""
            zp = g.consts.get(zp_name) if zp_name else None
            if zp is not None and np.any(zp != 0):
                out.append(
                    LintFinding(
                        "zero-point",
                        "error",
                        _name(node),
                        node.op_type,
                        "zero point must be 0 (TensorRT supports symmetric quantization only)",
                    )
                )
            dtype = _qdq_int_dtype(g, node, zp)
            src = g.inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
            if src is not None and src.data_type == onnx.TensorProto.INT32:
                out.append(
                    LintFinding(
                        "int32-bias",
                        "error",
                        _name(node),
                        node.op_type,
                        "DequantizeLinear on an int32 tensor (quantized bias): TensorRT's parser "
                        "rejects it; keep the bias float (quant.bias: float)",
                    )
                )
            elif dtype == np.uint8 and (src is None or src.data_type != onnx.TensorProto.INT32):
                out.append(
                    LintFinding(
                        "unsigned",
                        "error",
                        _name(node),
                        node.op_type,
                        "unsigned int8 (uint8 zero point) is not allowed inside a TensorRT graph; "
                        "use signed int8 (quant.act_signed / quant.softmax_signed)",
                    )
                )
        if node.op_type == "DequantizeLinear":
            prod = g.producer.get(node.input[0])
            if prod is not None and prod.op_type == "Clip":
                up = g.producer.get(prod.input[0])
                if up is not None and up.op_type == "QuantizeLinear":
                    weight = up.input[0] in g.consts
                    out.append(
                        LintFinding(
                            "clip-between-qdq",
                            "warning",
                            _name(prod),
                            "Clip",
                            (
                                "float weight behind Q->Clip->DQ: fold it to an int8 initializer"
                                if weight
                                else "Clip between QuantizeLinear and DequantizeLinear "
                                "breaks the Q/DQ pair TensorRT fuses"
                            ),
                        )
                    )
    for node in g.nodes:
        if node.op_type not in _COMPUTE_OPS:
            continue
        for idx in (0, 1):
            tensor = node.input[idx]
            src = g.source(tensor)
            if src is None or src.op_type != "DequantizeLinear":
                what = "weight" if g.is_const(tensor) else "input"
                out.append(
                    LintFinding(
                        "qdq-input",
                        "warning",
                        _name(node),
                        node.op_type,
                        f"{what} {idx} ('{tensor}') has no DequantizeLinear before it: this "
                        f"{node.op_type} will not run in INT8",
                    )
                )
                continue
            if idx == 1 and (g.is_const(tensor) or g.is_const(src.input[0])):  # a weight: DQ of a constant
                out.extend(_weight_axis_rule(g, node, src))
    return out


_ONNX_INT_DTYPES = {onnx.TensorProto.INT8: np.dtype(np.int8), onnx.TensorProto.UINT8: np.dtype(np.uint8)}


def _qdq_int_dtype(g: _Graph, node: onnx.NodeProto, zp: np.ndarray | None) -> np.dtype | None:
    """The integer type of a QuantizeLinear's output or a DequantizeLinear's input, as ONNX defines it.

    The zero point's type when there is one; otherwise a DequantizeLinear takes its input's type (an
    initializer's, or that of the QuantizeLinear feeding it), and a QuantizeLinear writes ``output_dtype``
    (opset 21) or uint8. None when it cannot be told statically (the rule then stays quiet).
    """
    if zp is not None:
        return zp.dtype
    if node.op_type == "QuantizeLinear":
        return _ONNX_INT_DTYPES.get(node_attr(node, "output_dtype", onnx.TensorProto.UINT8))
    init = g.inits.get(node.input[0])
    if init is not None:
        return _ONNX_INT_DTYPES.get(init.data_type)
    prod = g.producer.get(node.input[0])
    if prod is not None and prod.op_type == "Clip":  # brevitas' Q -> Clip -> DQ
        prod = g.producer.get(prod.input[0])
    if prod is not None and prod.op_type == "QuantizeLinear":
        q_zp = g.consts.get(prod.input[2]) if len(prod.input) > 2 and prod.input[2] else None
        return _qdq_int_dtype(g, prod, q_zp)
    return None


def _weight_axis_rule(g: _Graph, node: onnx.NodeProto, dq: onnx.NodeProto) -> list[LintFinding]:
    scale = g.consts.get(dq.input[1])
    src = g.inits.get(dq.input[0])
    if src is None:
        return [
            LintFinding(
                "int8-weight",
                "warning",
                _name(dq),
                "DequantizeLinear",
                f"weight of {_name(node)} is not an int8 initializer feeding DequantizeLinear",
            )
        ]
    if src.data_type != onnx.TensorProto.INT8:
        return []  # reported by the dtype rules
    if scale is None or scale.size <= 1:
        return []
    ndim = len(src.dims)
    axis = node_attr(dq, "axis", 1) % ndim
    if node.op_type in ("Conv", "ConvTranspose"):
        want = 0 if node.op_type == "Conv" else 1
    elif node.op_type == "Gemm":
        want = 0 if node_attr(node, "transB", 0) else 1
    else:
        want = ndim - 1
    # a weight reshaped/transposed on its way makes the axis ambiguous: only check direct feeds
    if g.producer.get(node.input[1]) is dq and axis != want:
        return [
            LintFinding(
                "weight-axis",
                "warning",
                _name(dq),
                "DequantizeLinear",
                f"per-channel weight scale of {_name(node)} on axis {axis}; TensorRT wants the "
                f"output-channel axis {want}",
            )
        ]
    return []


def attention_fusion(model: onnx.ModelProto) -> list[AttentionFusion]:
    """For each Softmax: is the block around it placed for TensorRT's INT8 attention fusion?"""
    g = _Graph(model)
    blocks = []
    for sm in (n for n in g.nodes if n.op_type == "Softmax"):
        reasons: list[str] = []
        # walk up from the softmax to the first matmul, noting what sits between
        node = g.producer.get(sm.input[0])
        between = []
        while node is not None and node.op_type != "MatMul":
            between.append(node)
            data_inputs = [i for i in node.input if i and not g.is_const(i)]
            node = g.producer.get(data_inputs[0]) if data_inputs else None
        qk = node
        if qk is None:
            blocks.append(AttentionFusion(_name(sm), None, None, False, ["no MatMul feeds this Softmax"]))
            continue
        for mid in between:
            if mid.op_type in ("Mul", "Div") and any(g.is_const(i) for i in mid.input):
                reasons.append(
                    f"the score scale ({_name(mid)}) is applied after the first MatMul; "
                    "apply 1/sqrt(d) to q before it"
                )
            elif mid.op_type not in _SHAPE_OPS and mid.op_type not in ("Add", "Where", "Cast"):
                reasons.append(f"{mid.op_type} node {_name(mid)} sits between Q@K^T and the Softmax")
        for idx, label in ((0, "Q"), (1, "K")):
            src = g.source(qk.input[idx])
            if src is None or src.op_type != "DequantizeLinear":
                reasons.append(f"{label} input of {_name(qk)} has no Q/DQ")
            else:
                reasons += _clip_reason(g, src, f"{label} input of {_name(qk)}")
        # the softmax output must be quantized, then feed the second matmul
        av = None
        users = g.sink(sm.output[0])
        qnode = next((u for u in users if u.op_type == "QuantizeLinear"), None)
        if qnode is None:
            reasons.append("the Softmax output has no QuantizeLinear")
            av = next((u for u in users if u.op_type == "MatMul"), None)
        else:
            zp = g.consts.get(qnode.input[2]) if len(qnode.input) > 2 and qnode.input[2] else None
            if zp is None or zp.dtype != np.int8:
                reasons.append("the Softmax output is quantized unsigned; TensorRT needs signed int8")
            for dq in _pair_dqs(g, qnode):
                reasons += _clip_reason(g, dq, "the Softmax output")
                av = av or next((u for u in g.sink(dq.output[0]) if u.op_type == "MatMul"), None)
        if av is None:
            reasons.append("no MatMul consumes the (dequantized) Softmax output")
        else:
            src = g.source(av.input[1])
            if src is None or src.op_type != "DequantizeLinear":
                reasons.append(f"V input of {_name(av)} has no Q/DQ")
            else:
                reasons += _clip_reason(g, src, f"V input of {_name(av)}")
        blocks.append(AttentionFusion(_name(sm), _name(qk), _name(av) if av else None, not reasons, reasons))
    return blocks


def _pair_clip(g: _Graph, dq: onnx.NodeProto) -> onnx.NodeProto | None:
    """The Clip between ``dq`` and its QuantizeLinear (Q -> Clip -> DQ, brevitas' form of < 8-bit values)."""
    prod = g.producer.get(dq.input[0])
    if prod is None or prod.op_type != "Clip":
        return None
    up = g.producer.get(prod.input[0])
    return prod if up is not None and up.op_type == "QuantizeLinear" else None


def _pair_dqs(g: _Graph, q: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The DequantizeLinear nodes that take ``q``'s output, directly or behind one Clip."""
    out = []
    for user in g.sink(q.output[0]):
        if user.op_type == "Clip":
            out += [d for d in g.sink(user.output[0]) if d.op_type == "DequantizeLinear"]
        elif user.op_type == "DequantizeLinear":
            out.append(user)
    return out


def _clip_reason(g: _Graph, dq: onnx.NodeProto, what: str) -> list[str]:
    """A reason when a Clip sits between ``dq`` and its QuantizeLinear (the lint's clip-between-qdq)."""
    clip = _pair_clip(g, dq)
    if clip is None:
        return []
    return [
        f"{what}: Clip {_name(clip)} between QuantizeLinear and DequantizeLinear breaks the Q/DQ pair TensorRT fuses"
    ]
