"""Lower a dynamo-exported (opset 18) graph to an older opset with onnx's version converter, where the converter
alone cannot.

onnx's converter has no way down for some ops torch's dynamo exporter writes:

* ``LayerNormalization`` exists only from opset 17 ("No Previous Version"). Below 17 it becomes the primitive
  chain torch's TorchScript exporter writes at those opsets: ``ReduceMean``, ``Sub``, ``Mul``, ``ReduceMean``,
  ``Add(eps)``, ``Sqrt``, ``Div``, then the scale and bias.
* ``BatchNormalization`` has no 15 -> 14 adapter. Below 15 an inference-mode BatchNorm (one output, constant
  statistics) becomes ``Mul`` and ``Add`` with per-channel constants folded in float64:
  ``y = x * s + t``, ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``.
* ``Add``, ``Mul``, ``Reshape`` (14 -> 13), ``Pow`` (15 -> 14) and a few more have no downgrade adapter although
  their newer versions only accept more element types (``Reshape`` 14 adds ``allowzero``, which changes nothing
  when it is 0 or the constant target shape holds no 0): the same node is valid at the older version. These are
  held out of the converter's way (in a private domain) and put back unchanged; the checker then validates them
  against the older schema.

The rewrites keep every tensor name the rest of the graph reads. A node they cannot rewrite (a LayerNorm whose
Mean/InvStdDev outputs are read, a BatchNorm in training mode or with non-constant statistics) raises
:class:`~edgeattn.errors.EdgeAttnError` naming it.
"""

from __future__ import annotations

import numpy as np
import onnx
from edgeattn.export.qdq import drop_attr, node_attr
from onnx import helper, numpy_helper

from edgeattn.errors import EdgeAttnError

__all__ = ["SAME_MEANING_SINCE_13", "decompose_for_opset", "lower_opset"]

LAYERNORM_SINCE = 17
BATCHNORM_15_SINCE = 15
# ops whose versions from 13 to 18 differ only in the element types they accept (Reshape: see above); checked
# against onnx's schemas in tests/test_export_lowering.py
SAME_MEANING_SINCE_13 = frozenset(
    {"Add", "Sub", "Mul", "Div", "Pow", "Relu", "LeakyRelu", "PRelu", "Where", "Identity", "CumSum"}
    | {"LessOrEqual", "GreaterOrEqual", "Reshape"}
)
_HELD = "ai.edgeattn.held"  # the private domain held nodes wait in while the converter runs


def lower_opset(proto: onnx.ModelProto, opset: int) -> tuple[onnx.ModelProto, dict[str, int]]:
    """``proto`` (opset 18) lowered to ``opset``: the rewrites of :func:`decompose_for_opset`, then onnx's
    converter with the :data:`SAME_MEANING_SINCE_13` nodes held out of its way.

    Returns the lowered model and how many nodes of each kind were decomposed. ``proto`` is changed in place.
    Raises :class:`~edgeattn.errors.EdgeAttnError` (exit code 5) when the converter still fails.
    """
    from onnx import version_converter

    done = decompose_for_opset(proto, opset)
    constants = {t.name: t for t in proto.graph.initializer}
    held = 0
    for node in proto.graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type in SAME_MEANING_SINCE_13:
            if node.op_type == "Reshape":
                # torch writes allowzero=1; it differs from Reshape 13 only where the target shape holds a 0
                shape = constants.get(node.input[1])
                if int(node_attr(node, "allowzero", 0)) and (shape is None or 0 in numpy_helper.to_array(shape)):
                    continue  # Reshape 13 cannot say it: left to the converter, which says so
                drop_attr(node, "allowzero")
            node.domain = _HELD
            held += 1
    if held:
        proto.opset_import.append(helper.make_opsetid(_HELD, 1))
    try:
        lowered = version_converter.convert_version(proto, opset)
    except Exception as exc:
        raise EdgeAttnError(f"cannot lower the ONNX graph to opset {opset}: {exc}", exit_code=5) from exc
    for node in lowered.graph.node:
        if node.domain == _HELD:
            node.domain = ""
        elif node.op_type.startswith("Reduce") and node.op_type != "ReduceSum":
            # the 18 -> 17 adapter moves axes to the attribute but leaves noop_with_empty_axes (an opset-18
            # attribute) behind; with axes present its value does not matter
            drop_attr(node, "noop_with_empty_axes")
    imports = [o for o in lowered.opset_import if o.domain != _HELD]
    del lowered.opset_import[:]
    lowered.opset_import.extend(imports)
    return lowered, done


def decompose_for_opset(proto: onnx.ModelProto, opset: int) -> dict[str, int]:
    """Rewrite, in place, the ops of an opset-18 ``proto`` that onnx's converter cannot take down to ``opset``.

    Returns how many nodes of each kind were rewritten (empty when nothing needed it).
    """
    done: dict[str, int] = {}
    if opset >= LAYERNORM_SINCE:
        return done
    ranks = _ranks(proto)
    names = _NameSource(proto)
    out: list[onnx.NodeProto] = []
    for node in proto.graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type == "LayerNormalization":
            out.extend(_layernorm_nodes(proto, node, ranks, names))
            done["LayerNormalization"] = done.get("LayerNormalization", 0) + 1
        elif node.domain in ("", "ai.onnx") and node.op_type == "BatchNormalization" and opset < BATCHNORM_15_SINCE:
            out.extend(_batchnorm_nodes(proto, node, ranks, names))
            done["BatchNormalization"] = done.get("BatchNormalization", 0) + 1
        else:
            out.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(out)
    return done


class _NameSource:
    """Fresh tensor and node names that no existing name collides with."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        g = proto.graph
        self.taken = {n.name for n in g.node} | {t.name for t in g.initializer}
        self.taken |= {v.name for v in (*g.input, *g.output, *g.value_info)}
        self.taken |= {name for n in g.node for name in (*n.input, *n.output)}

    def __call__(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


def _ranks(proto: onnx.ModelProto) -> dict[str, int]:
    """The rank of every tensor shape inference can tell."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    g = inferred.graph
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in (*g.input, *g.output, *g.value_info)
        if v.type.tensor_type.HasField("shape")
    }
    ranks.update({t.name: len(t.dims) for t in g.initializer})
    return ranks


def _label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name or node.output[0]!r}"


def _constant(proto: onnx.ModelProto, names: _NameSource, base: str, value: np.ndarray) -> str:
    name = names(base)
    proto.graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _layernorm_nodes(proto, node, ranks, names) -> list[onnx.NodeProto]:
    cannot = f"cannot lower {_label(node)} below opset {LAYERNORM_SINCE}"
    stop = f"use --opset {LAYERNORM_SINCE} or higher"
    if any(out for out in node.output[1:]):
        raise EdgeAttnError(f"{cannot}: its Mean/InvStdDev outputs are used; {stop}")
    x = node.input[0]
    axis = int(node_attr(node, "axis", -1))
    if axis < 0:
        axes = list(range(axis, 0))
    elif x in ranks:
        axes = list(range(axis - ranks[x], 0))
    else:
        raise EdgeAttnError(f"{cannot}: the rank of its input is unknown; {stop}")
    eps = float(node_attr(node, "epsilon", 1e-5))
    base = node.name or node.output[0]
    axes_c = _constant(proto, names, f"{base}_axes", np.asarray(axes, dtype=np.int64))
    eps_c = _constant(proto, names, f"{base}_eps", np.asarray(eps, dtype=np.float32))
    t = {k: names(f"{base}_{k}") for k in ("mean", "centred", "square", "var", "var_eps", "std", "normed")}
    nodes = [
        helper.make_node("ReduceMean", [x, axes_c], [t["mean"]], name=names(f"{base}_mean"), keepdims=1),
        helper.make_node("Sub", [x, t["mean"]], [t["centred"]], name=names(f"{base}_sub")),
        helper.make_node("Mul", [t["centred"], t["centred"]], [t["square"]], name=names(f"{base}_square")),
        helper.make_node("ReduceMean", [t["square"], axes_c], [t["var"]], name=names(f"{base}_var"), keepdims=1),
        helper.make_node("Add", [t["var"], eps_c], [t["var_eps"]], name=names(f"{base}_add_eps")),
        helper.make_node("Sqrt", [t["var_eps"]], [t["std"]], name=names(f"{base}_sqrt")),
    ]
    has_bias = len(node.input) > 2 and node.input[2]
    scaled = names(f"{base}_scaled") if has_bias else node.output[0]
    nodes += [
        helper.make_node("Div", [t["centred"], t["std"]], [t["normed"]], name=names(f"{base}_div")),
        helper.make_node("Mul", [t["normed"], node.input[1]], [scaled], name=names(f"{base}_scale")),
    ]
    if has_bias:
        nodes.append(helper.make_node("Add", [scaled, node.input[2]], [node.output[0]], name=names(f"{base}_bias")))
    return nodes


def _batchnorm_nodes(proto, node, ranks, names) -> list[onnx.NodeProto]:
    cannot = f"cannot lower {_label(node)} below opset {BATCHNORM_15_SINCE}"
    stop = f"use --opset {BATCHNORM_15_SINCE} or higher"
    if int(node_attr(node, "training_mode", 0)) or len([o for o in node.output if o]) > 1:
        raise EdgeAttnError(f"{cannot}: it is in training mode; {stop}")
    inits = {t.name: t for t in proto.graph.initializer}
    missing = [name for name in node.input[1:5] if name not in inits]
    if missing:
        raise EdgeAttnError(f"{cannot}: its statistics are not constants ({', '.join(missing)}); {stop}")
    x = node.input[0]
    if x not in ranks:
        raise EdgeAttnError(f"{cannot}: the rank of its input is unknown; {stop}")
    gamma, beta, mean, var = (numpy_helper.to_array(inits[name]).astype(np.float64) for name in node.input[1:5])
    dtype = numpy_helper.to_array(inits[node.input[1]]).dtype
    scale = gamma / np.sqrt(var + float(node_attr(node, "epsilon", 1e-5)))
    shift = beta - mean * scale
    # (C,) -> (C, 1, ..., 1): channels are axis 1 of an input of rank r
    per_channel = (-1,) + (1,) * (ranks[x] - 2)
    base = node.name or node.output[0]
    scale_c = _constant(proto, names, f"{base}_scale", scale.reshape(per_channel).astype(dtype))
    shift_c = _constant(proto, names, f"{base}_shift", shift.reshape(per_channel).astype(dtype))
    scaled = names(f"{base}_scaled")
    return [
        helper.make_node("Mul", [x, scale_c], [scaled], name=names(f"{base}_mul")),
        helper.make_node("Add", [scaled, shift_c], [node.output[0]], name=names(f"{base}_add")),
    ]
