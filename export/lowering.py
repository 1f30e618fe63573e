"""Lower a dynamo-exported (opset 18) graph to an older opset with onnx's version converter, where the converter
alone cannot.

onnx's converter has no way down for some ops torch's dynamo exporter writes:

* ``LayerNormalization`` exists only from opset 17 ("No Previous Version"). Below 17 it becomes the primitive
  chain torch's TorchScript exporter writes at those opsets: ``ReduceMean``, ``Sub``, ``Mul``, ``ReduceMean``,
  ``Add(eps)``, ``Sqrt``, ``Div``, then the scale and bias.
* ``BatchNormalization`` has no 15 -> 14 adapter. Below 15 an inference-mode BatchNorm (one output, constant
  statistics) becomes ``Mul`` and ``Add`` with per-channel constants folded in float64:
  ``y = x * s + t``, ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``.
* ``Shape`` with ``start``/``end`` (15; torch writes it for a dynamic batch) becomes ``Shape`` and ``Slice``.
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
from edgeattn.export.qdq import constant_values, drop_attr, node_attr
from onnx import helper, numpy_helper

from edgeattn.errors import EdgeAttnError

__all__ = ["SAME_MEANING_SINCE_13", "decompose_for_opset", "lower_opset"]

LAYERNORM_SINCE = 17
BATCHNORM_15_SINCE = 15
SHAPE_RANGE_SINCE = 15  # Shape's start/end attributes (torch writes them to read the batch of a dynamic input)
# ops whose versions from 13 to 18 differ only in the element types they accept (Reshape: see above); checked
# against onnx's schemas in tests/test_export_lowering.py
SAME_MEANING_SINCE_13 = frozenset(
    {"Add", "Sub", "Mul", "Div", "Pow", "Relu", "LeakyRelu", "PRelu", "Where", "Identity", "CumSum"}
    | {"LessOrEqual", "GreaterOrEqual", "Reshape"}
)
_HELD = "ai.edgeattn.held"  # the private domain held nodes wait in while the converter runs


def lower_opset(proto: onnx.ModelProto, opset: int) -> tuple[onnx.ModelProto, dict[str, int]]:
    """``proto`` (opset 18) lowered to ``opset``: the rewrites of :func:`decompose_for_opset`, then onnx's
    converter with the :data:`SAME_MEANING_SINCE_13` nodes (and ``Shape``/``Split`` nodes that use nothing newer
    than opset 13) held out of its way.

    Returns the lowered model and how many nodes of each kind were decomposed. ``proto`` is changed in place (its
    held nodes are put back if the converter fails). Raises :class:`~edgeattn.errors.EdgeAttnError` (exit code 5)
    when the converter still fails.
    """
    from onnx import version_converter

    info = _tensor_info(proto)  # the rewrites keep every name the rest of the graph reads: it stays true
    done = decompose_for_opset(proto, opset, info)
    constants = constant_values(proto.graph)
    held: list[onnx.NodeProto] = []
    for node in proto.graph.node:
        if node.domain in ("", "ai.onnx") and _holdable(node, constants, info, opset):
            node.domain = _HELD
            held.append(node)
    if held:
        proto.opset_import.append(helper.make_opsetid(_HELD, 1))
    try:
        lowered = version_converter.convert_version(proto, opset)
    except Exception as exc:
        for node in held:  # the caller's model stays a valid ONNX model
            node.domain = ""
        imports = [o for o in proto.opset_import if o.domain != _HELD]
        del proto.opset_import[:]
        proto.opset_import.extend(imports)
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


def _holdable(node: onnx.NodeProto, constants: dict[str, np.ndarray], info: dict, opset: int) -> bool:
    """Whether ``node`` means at ``opset`` what it means at 18, once the attributes that say nothing at 18 are
    dropped (changed in place); refuses in one line a Reshape that needs ``allowzero``."""
    op = node.op_type
    if op == "Reshape":
        # torch writes allowzero=1; it differs from Reshape 13 only where the target shape holds a 0
        shape = constants.get(node.input[1])
        if not int(node_attr(node, "allowzero", 0)) or (shape is not None and 0 not in shape):
            drop_attr(node, "allowzero")  # says nothing here
        elif opset < 14:
            raise EdgeAttnError(
                f"cannot lower {_label(node)} below opset 14: allowzero=1 with a target shape that is computed at "
                "run time or holds a 0, which Reshape 13 reads as 'copy that dimension'; use --opset 14 or higher",
                exit_code=5,
            )
        return True  # Reshape 14 keeps allowzero
    if op == "Shape":  # Shape 15 added start/end; without them it is Shape 13
        return not any(a.name in ("start", "end") for a in node.attribute)
    if op == "Split":
        return _split_as_13(node, info)
    return op in SAME_MEANING_SINCE_13


def _split_as_13(node: onnx.NodeProto, info: dict) -> bool:
    """Split 18 added ``num_outputs`` (the last part may be smaller); without it, or with parts that divide the
    axis evenly, Split 13 (equal parts, one per output) means the same."""
    parts = node_attr(node, "num_outputs", None)
    if parts is None:
        return True
    if len(node.input) > 1 and node.input[1]:
        return False  # both given: not a valid Split 18 anyway; the converter says so
    shape = info.get(node.input[0], (None, None))[0]
    axis = int(node_attr(node, "axis", 0))
    size = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
    if not isinstance(size, int) or size % int(parts):
        return False
    drop_attr(node, "num_outputs")
    return True


def decompose_for_opset(proto: onnx.ModelProto, opset: int, info: dict | None = None) -> dict[str, int]:
    """Rewrite, in place, the ops of an opset-18 ``proto`` that onnx's converter cannot take down to ``opset``.

    ``info`` is :func:`_tensor_info` of ``proto`` when the caller has it. Returns how many nodes of each kind were
    rewritten (empty when nothing needed it).
    """
    done: dict[str, int] = {}
    if opset >= LAYERNORM_SINCE:
        return done
    info = _tensor_info(proto) if info is None else info
    names = _NameSource(proto)
    out: list[onnx.NodeProto] = []
    for node in proto.graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type == "LayerNormalization":
            out.extend(_layernorm_nodes(proto, node, info, names))
            done["LayerNormalization"] = done.get("LayerNormalization", 0) + 1
        elif node.domain in ("", "ai.onnx") and node.op_type == "BatchNormalization" and opset < BATCHNORM_15_SINCE:
            out.extend(_batchnorm_nodes(proto, node, info, names))
            done["BatchNormalization"] = done.get("BatchNormalization", 0) + 1
        elif node.domain in ("", "ai.onnx") and node.op_type == "Shape" and opset < SHAPE_RANGE_SINCE and any(
            a.name in ("start", "end") for a in node.attribute
        ):
            out.extend(_shape_nodes(proto, node, names))
            done["Shape"] = done.get("Shape", 0) + 1
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


def _tensor_info(proto: onnx.ModelProto) -> dict[str, tuple[list | None, np.dtype | None]]:
    """Shape (dims: ints, or None where unknown) and numpy dtype of every tensor shape inference can tell."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    g = inferred.graph
    info: dict[str, tuple[list | None, np.dtype | None]] = {}
    for v in (*g.input, *g.output, *g.value_info):
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t.HasField("shape") else None
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type else None
        info[v.name] = (shape, dtype)
    for init in g.initializer:
        info[init.name] = (list(init.dims), helper.tensor_dtype_to_np_dtype(init.data_type))
    return info


def _rank(info: dict, name: str) -> int | None:
    shape = info.get(name, (None, None))[0]
    return None if shape is None else len(shape)


def _label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name or node.output[0]!r}"


def _constant(proto: onnx.ModelProto, names: _NameSource, base: str, value: np.ndarray) -> str:
    name = names(base)
    proto.graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _layernorm_nodes(proto, node, info, names) -> list[onnx.NodeProto]:
    cannot = f"cannot lower {_label(node)} below opset {LAYERNORM_SINCE}"
    stop = f"use --opset {LAYERNORM_SINCE} or higher"
    read = {name for n in proto.graph.node for name in n.input} | {o.name for o in proto.graph.output}
    if any(out and out in read for out in node.output[1:]):
        raise EdgeAttnError(f"{cannot}: its Mean/InvStdDev outputs are read; {stop}")
    x = node.input[0]
    axis = int(node_attr(node, "axis", -1))
    rank = _rank(info, x)
    if axis < 0:
        axes = list(range(axis, 0))
    elif rank is not None:
        axes = list(range(axis - rank, 0))
    else:
        raise EdgeAttnError(f"{cannot}: the rank of its input is unknown; {stop}")
    dtype = info.get(x, (None, None))[1]
    if dtype is not None and dtype != np.float32 and int(node_attr(node, "stash_type", 1)) == 1:
        # LayerNorm computes a float16/bfloat16/float64 input in float32 (stash_type 1); the chain would not
        raise EdgeAttnError(f"{cannot}: its {dtype} input is normalised in float32 (stash_type); {stop}")
    eps = float(node_attr(node, "epsilon", 1e-5))
    base = node.name or node.output[0]
    axes_c = _constant(proto, names, f"{base}_axes", np.asarray(axes, dtype=np.int64))
    eps_c = _constant(proto, names, f"{base}_eps", np.asarray(eps, dtype=dtype or np.float32))
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


def _batchnorm_nodes(proto, node, info, names) -> list[onnx.NodeProto]:
    cannot = f"cannot lower {_label(node)} below opset {BATCHNORM_15_SINCE}"
    stop = f"use --opset {BATCHNORM_15_SINCE} or higher"
    if int(node_attr(node, "training_mode", 0)) or len([o for o in node.output if o]) > 1:
        raise EdgeAttnError(f"{cannot}: it is in training mode; {stop}")
    inits = {t.name: t for t in proto.graph.initializer}
    missing = [name for name in node.input[1:5] if name not in inits]
    if missing:
        raise EdgeAttnError(f"{cannot}: its statistics are not constants ({', '.join(missing)}); {stop}")
    x = node.input[0]
    rank = _rank(info, x)
    if rank is None:
        raise EdgeAttnError(f"{cannot}: the rank of its input is unknown; {stop}")
    gamma, beta, mean, var = (numpy_helper.to_array(inits[name]).astype(np.float64) for name in node.input[1:5])
    # the Mul/Add take the input's type (BatchNormalization 15 allows statistics of another float type)
    dtype = info.get(x, (None, None))[1] or numpy_helper.to_array(inits[node.input[1]]).dtype
    scale = gamma / np.sqrt(var + float(node_attr(node, "epsilon", 1e-5)))
    shift = beta - mean * scale
    # (C,) -> (C, 1, ..., 1): channels are axis 1 of an input of rank r
    per_channel = (-1,) + (1,) * (rank - 2)
    base = node.name or node.output[0]
    scale_c = _constant(proto, names, f"{base}_scale", scale.reshape(per_channel).astype(dtype))
    shift_c = _constant(proto, names, f"{base}_shift", shift.reshape(per_channel).astype(dtype))
    scaled = names(f"{base}_scaled")
    return [
        helper.make_node("Mul", [x, scale_c], [scaled], name=names(f"{base}_mul")),
        helper.make_node("Add", [scaled, shift_c], [node.output[0]], name=names(f"{base}_add")),
    ]


def _shape_nodes(proto, node, names) -> list[onnx.NodeProto]:
    """``Shape(x, start, end)`` (15) as ``Slice(Shape(x), start, end)``: Slice clamps and counts negative indices
    from the end as Shape's range does."""
    start = int(node_attr(node, "start", 0))
    end = node_attr(node, "end", None)
    base = node.name or node.output[0]
    whole = names(f"{base}_whole")
    starts = _constant(proto, names, f"{base}_start", np.asarray([start], dtype=np.int64))
    ends = _constant(proto, names, f"{base}_end", np.asarray([np.iinfo(np.int64).max if end is None else int(end)]))
    axes = _constant(proto, names, f"{base}_axis", np.asarray([0], dtype=np.int64))
    return [
        helper.make_node("Shape", [node.input[0]], [whole], name=names(f"{base}_shape")),
        helper.make_node("Slice", [whole, starts, ends, axes], [node.output[0]], name=names(f"{base}_slice")),
    ]
