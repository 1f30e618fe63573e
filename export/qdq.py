"""Q/DQ graph clean-up for ONNX models exported by brevitas.

brevitas writes every quantized weight as ``float W -> QuantizeLinear -> Clip -> DequantizeLinear``
(QCDQ). Runtimes read that differently from the canonical QDQ form:

* OpenVINO CPU keeps the float weight and runs the layer in an f32 kernel (measured on an AVX2 host: the
  brevitas QCDQ export ran entirely in ``brgconv_avx2_f32``);
* TensorRT wants a constant int8 tensor feeding ``DequantizeLinear`` directly.

:func:`fold_weight_qcdq` computes the integer weights once (round half to even, the same rounding
``QuantizeLinear`` specifies, then the Clip bounds) and stores them as int8 initializers feeding the
DequantizeLinear, so every runtime sees ``int8 W -> DequantizeLinear -> Conv/Gemm/MatMul``.
:func:`fold_dq_transpose` moves a constant Transpose that sits between a weight DQ and its MatMul
into the int8 tensor itself (the per-channel axis follows the permutation). :func:`move_activation_clips` moves the
integer Clip of a sub-8-bit activation in front of its QuantizeLinear as a float Clip (OpenVINO drops the first).
:func:`split_concat_conv` and :func:`pool_to_depthwise_conv` work around two OpenVINO CPU defects (see
:func:`edgeattn.export.openvino_target.for_openvino`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = [
    "QDQSummary",
    "add_conv_bias",
    "clean_qdq",
    "constant_values",
    "drop_attr",
    "fold_dq_transpose",
    "fold_weight_qcdq",
    "move_activation_clips",
    "node_attr",
    "pool_to_depthwise_conv",
    "remove_unused",
    "topological_sort",
    "summarize_qdq",
]

_INT_RANGES = {
    onnx.TensorProto.INT8: (-128, 127, np.int8),
    onnx.TensorProto.UINT8: (0, 255, np.uint8),
    onnx.TensorProto.INT32: (-(2**31), 2**31 - 1, np.int32),
}


def constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Every tensor of ``graph`` whose value is known statically: initializers and Constant nodes."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            attr = node.attribute[0]
            if attr.name == "value":
                values[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_int") or attr.name in ("value_floats", "value_ints"):
                values[node.output[0]] = np.asarray(helper.get_attribute_value(attr))
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def node_attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of ``node``'s attribute ``name``, or ``default`` when the node does not set it."""
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def drop_attr(node: onnx.NodeProto, name: str) -> None:
    """Remove ``node``'s attribute ``name`` if it is set."""
    keep = [a for a in node.attribute if a.name != name]
    if len(keep) != len(node.attribute):
        del node.attribute[:]
        node.attribute.extend(keep)


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    drop_attr(node, name)
    node.attribute.append(helper.make_attribute(name, value))


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                users[name].append(node)
    return users


def _broadcast(param: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Reshape a per-channel scale/zero point so it broadcasts along ``axis`` of an ``ndim`` tensor."""
    if param.ndim == 0 or param.size == 1:
        return param.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = param.size
    return param.reshape(shape)


def _unique_name(graph: onnx.GraphProto, base: str) -> str:
    taken = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _const_int_weight(
    graph_consts: dict[str, np.ndarray], producers: dict[str, onnx.NodeProto], tensor: str
) -> np.ndarray | None:
    """Ints of ``tensor`` if it is a constant chain ``[float W -> Q | int W] -> [Clip]``; else None."""
    clip_bounds = []
    node = producers.get(tensor)
    while node is not None and node.op_type in ("Clip", "Identity"):
        if node.op_type == "Clip":
            bounds = []
            for idx in (1, 2):
                name = node.input[idx] if len(node.input) > idx else ""
                if name and name not in graph_consts:
                    return None
                bounds.append(graph_consts.get(name) if name else None)
            clip_bounds.append(bounds)
        tensor = node.input[0]
        node = producers.get(tensor)
    if node is not None and node.op_type == "QuantizeLinear":
        q = node
        if q.input[0] not in graph_consts or q.input[1] not in graph_consts:
            return None
        if len(q.input) > 2 and q.input[2] and q.input[2] not in graph_consts:
            return None
        weight = graph_consts[q.input[0]].astype(np.float64)
        scale = graph_consts[q.input[1]].astype(np.float64)
        zp = graph_consts[q.input[2]] if len(q.input) > 2 and q.input[2] else np.zeros((), np.uint8)
        dtype_enum = helper.np_dtype_to_tensor_dtype(zp.dtype)
        if dtype_enum not in _INT_RANGES:
            return None
        lo_t, hi_t, np_t = _INT_RANGES[dtype_enum]
        axis = node_attr(q, "axis", 1)
        # QuantizeLinear rounds half to even (np.rint) and saturates to the zero point's type
        ints = np.rint(weight / _broadcast(scale, weight.ndim, axis)) + _broadcast(
            zp.astype(np.float64), weight.ndim, axis
        )
        ints = np.clip(ints, lo_t, hi_t).astype(np_t)
    elif (
        tensor in graph_consts
        and graph_consts[tensor].dtype in (np.int8, np.uint8)
        and node is None
        or tensor in graph_consts
        and graph_consts[tensor].dtype in (np.int8, np.uint8)
        and node.op_type == "Constant"
    ):
        ints = graph_consts[tensor]
    else:
        return None
    for lo, hi in reversed(clip_bounds):
        ints = np.clip(
            ints, lo if lo is not None else ints.min(), hi if hi is not None else ints.max()
        ).astype(ints.dtype)
    return ints


def fold_weight_qcdq(model: onnx.ModelProto) -> int:
    """Give every DequantizeLinear whose input is a constant chain (``float W -> Q -> [Clip]``, or an integer
    constant behind a Clip/Identity) a plain int8 initializer instead, in place; returns how many changed."""
    graph = model.graph
    consts = constant_values(graph)
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}
    new_inits: list[onnx.TensorProto] = []
    folded = 0
    for dq in graph.node:
        if dq.op_type != "DequantizeLinear":
            continue
        src = dq.input[0]
        if src in inits and producers.get(src) is None:
            continue  # already an initializer
        ints = _const_int_weight(consts, producers, src)
        if ints is None:
            continue
        name = _unique_name(graph, f"{src.strip('/').replace('/', '.')}_quantized")
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(ints), name))
        graph.initializer.append(new_inits[-1])
        dq.input[0] = name
        folded += 1
    if folded:
        remove_unused(model)
    return folded


def fold_dq_transpose(model: onnx.ModelProto) -> int:
    """Fold ``int8 W -> DQ -> Transpose`` into ``int8 W^T -> DQ`` (axis permuted), in place."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consts = constant_values(graph)
    users = _consumers(graph)
    drop: set[int] = set()
    folded = 0
    for dq in graph.node:
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        nxt = users.get(dq.output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != "Transpose":
            continue
        if len(users.get(dq.input[0], [])) != 1:
            continue  # the int8 tensor is shared: leave it
        tr = nxt[0]
        w = numpy_helper.to_array(inits[dq.input[0]])
        perm = list(node_attr(tr, "perm", list(range(w.ndim))[::-1]))
        axis = node_attr(dq, "axis", 1) % w.ndim
        new = numpy_helper.from_array(np.ascontiguousarray(np.transpose(w, perm)), dq.input[0])
        inits[dq.input[0]].CopyFrom(new)
        scale = consts.get(dq.input[1])
        if scale is not None and scale.size > 1:
            _set_attr(dq, "axis", perm.index(axis))
        dq.output[0] = tr.output[0]
        drop.add(id(tr))
        folded += 1
    if folded:
        keep = [n for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(keep)
    return folded


# The float Clip stops CLIP_MARGIN of a step outside the integer bounds: QuantizeLinear still rounds every clipped
# value to the bound, and OpenVINO's CPU plugin, which moves a Clip fed by a DequantizeLinear into that DQ's integer
# domain and rounds the bound there, no longer lands a step short (measured: a Clip at exactly 7 steps of a 4-bit
# quantizer fed by another 4-bit DQ came out one step low, 0.61 on values up to 4.3).
CLIP_MARGIN = 0.49


def move_activation_clips(model: onnx.ModelProto) -> int:
    """Rewrite each activation ``x -> Q -> Clip(lo, hi) -> DQ`` as ``x -> Clip(lo', hi') -> Q -> DQ``, in place;
    returns how many moved.

    brevitas narrows a sub-8-bit activation (4 bits, or the 7-bit K/V of CPUs without VNNI) with an integer Clip
    between QuantizeLinear and DequantizeLinear. OpenVINO's CPU plugin drops that Clip when it fuses the pair
    (2026.4: measured on a Conv fed by a 4-bit activation, an error of 0.09 on outputs of range 5.7; ONNX Runtime
    honours it), and TensorRT cannot fuse a Q/DQ pair with a node between them. The float Clip with bounds
    ``lo' = (lo - m - zp) * scale``, ``hi' = (hi + m - zp) * scale`` (``m`` = :data:`CLIP_MARGIN`, under half a
    step) gives the same integers: a value past ``hi'`` becomes ``hi'``, which rounds to ``hi``, as every value
    between ``hi`` and ``hi'`` already did. Only per-tensor (scalar) scales and a Q read by nothing but the Clip are
    rewritten; weights were folded to int8 constants before this pass.
    """
    graph = model.graph
    consts = constant_values(graph)
    producers = {o: n for n in graph.node for o in n.output}
    users = _consumers(graph)
    outputs = {o.name for o in graph.output}
    mine: set[str] = set()  # names made here, not in the graph yet (one tensor can feed several quantizers)

    def fresh(base: str) -> str:
        name, k = _unique_name(graph, base), 1
        while name in mine:
            name, k = _unique_name(graph, f"{base}_{k}"), k + 1
        mine.add(name)
        return name

    moved = 0
    before: dict[str, onnx.NodeProto] = {}  # Q output -> the float Clip to insert in front of that Q
    for clip in list(graph.node):
        if clip.op_type != "Clip" or len(clip.input) < 3:
            continue
        q = producers.get(clip.input[0])
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in consts or len(users[q.output[0]]) != 1:
            continue
        if clip.output[0] in outputs or q.output[0] in outputs:
            continue
        scale = consts.get(q.input[1])
        zero = consts.get(q.input[2]) if len(q.input) > 2 and q.input[2] else np.zeros((), np.int8)
        lo, hi = consts.get(clip.input[1]), consts.get(clip.input[2])
        if scale is None or zero is None or lo is None or hi is None or scale.size != 1 or zero.size != 1:
            continue
        dtype = scale.dtype
        bounds = []
        for which, value in (("min", lo), ("max", hi)):
            name = fresh(f"{clip.output[0].strip('/').replace('/', '.')}_{which}")
            edge = np.float64(value.reshape(())) + (CLIP_MARGIN if which == "max" else -CLIP_MARGIN)
            real = (edge - np.float64(zero.reshape(()))) * np.float64(scale.reshape(()))
            graph.initializer.append(numpy_helper.from_array(np.asarray(real, dtype=dtype), name))
            bounds.append(name)
        clipped = fresh(f"{q.input[0]}_clipped")
        before[q.output[0]] = helper.make_node("Clip", [q.input[0], *bounds], [clipped], name=f"{clip.name}_float")
        q.input[0] = clipped
        for user in users[clip.output[0]]:  # the DQ (and anything else) now reads Q directly
            for i, name in enumerate(user.input):
                if name == clip.output[0]:
                    user.input[i] = q.output[0]
        moved += 1
    if moved:
        nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            if node.op_type == "QuantizeLinear" and node.output[0] in before:
                nodes.append(before[node.output[0]])
            nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        remove_unused(model)  # the old integer Clips and their bounds
    return moved


def remove_unused(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nobody reads and initializers nobody uses, in place."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
    inits = [i for i in graph.initializer if i.name in needed]
    if len(inits) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(inits)


def topological_sort(model: onnx.ModelProto) -> None:
    """Reorder nodes so each follows the producers of its inputs (some converters append nodes), in place."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # a cycle or a dangling input: leave the remainder as it was
            ordered.extend(rest)
            break
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def remove_initializer_inputs(model: onnx.ModelProto) -> int:
    """Remove graph inputs that are initializers (older exporters list weights as inputs)."""
    names = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in names]
    removed = len(model.graph.input) - len(keep)
    if removed:
        del model.graph.input[:]
        model.graph.input.extend(keep)
    return removed


def clean_qdq(model: onnx.ModelProto) -> dict[str, int]:
    """All Q/DQ clean-ups, in place; returns what each pass changed."""
    return {
        "initializer_inputs_removed": remove_initializer_inputs(model),
        "weight_qcdq_folded": fold_weight_qcdq(model),
        "dq_transpose_folded": fold_dq_transpose(model),
        "activation_clips_moved": move_activation_clips(model),
    }


@dataclass
class QDQSummary:
    """Counts of the Q/DQ structure of a graph."""

    quantize: int = 0
    dequantize: int = 0
    weight_dq_int8: int = 0
    weight_qcdq_left: int = 0
    clip_between_q_dq: int = 0
    int32_dq: int = 0
    nonzero_zero_points: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)


def summarize_qdq(model: onnx.ModelProto) -> QDQSummary:
    """Count Q/DQ nodes, int8 weight DQs, leftover QCDQ weight chains and other oddities."""
    graph = model.graph
    consts = constant_values(graph)
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    summary = QDQSummary()
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            summary.quantize += 1
            if node.input[0] in consts:
                summary.weight_qcdq_left += 1
        elif node.op_type == "DequantizeLinear":
            summary.dequantize += 1
            src = node.input[0]
            if src in inits:
                dt = onnx.TensorProto.DataType.Name(inits[src].data_type)
                summary.dtypes[dt] = summary.dtypes.get(dt, 0) + 1
                if inits[src].data_type == onnx.TensorProto.INT8:
                    summary.weight_dq_int8 += 1
                if inits[src].data_type == onnx.TensorProto.INT32:
                    summary.int32_dq += 1
            prod = producers.get(src)
            if prod is not None and prod.op_type == "Clip":
                up = producers.get(prod.input[0])
                if up is not None and up.op_type == "QuantizeLinear":
                    summary.clip_between_q_dq += 1
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
            zp = consts.get(node.input[2])
            if zp is not None and np.any(zp != 0):
                summary.nonzero_zero_points += 1
    return summary


def _inferred_shapes(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """Tensor name -> dims (0 where unknown) from the graph's inputs, outputs and inferred value_info."""
    return {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in list(graph.value_info) + list(graph.input) + list(graph.output)
    }


def split_concat_conv(model: onnx.ModelProto) -> int:
    """Rewrite ``Concat(a_1..a_k) -> Q -> DQ -> Conv(group 1)`` as ``sum_i Conv(DQ(Q(a_i)), W[:, c_i])``.

    In place. The two graphs compute the same integers: quantizing a concatenation with one scale is
    quantizing each part with that scale, and a convolution over concatenated channels is the sum of
    convolutions over each part's channels (the bias is added once). It exists for OpenVINO: its CPU
    plugin (2026.4) computes an int8 Conv whose quantized input comes from a Concat wrongly (20% of the output
    range on a 3-layer test net, where the same net with Add instead of Concat matches to 1e-7), and FMViT's
    CFB fuses its two paths exactly so. A float Clip between the Concat and the Q (a sub-8-bit quantizer, see
    :func:`move_activation_clips`) is applied to each part: clipping is element by element.
    Needs inferred shapes for the Concat inputs; returns how many were rewritten.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users = _consumers(graph)
    shapes = _inferred_shapes(graph)
    replace: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    rewritten = 0
    for cat in graph.node:
        if cat.op_type != "Concat" or node_attr(cat, "axis", 0) != 1:
            continue
        nxt = users.get(cat.output[0], [])
        clip = None  # the float Clip of a sub-8-bit quantizer (move_activation_clips), clipped per part below
        if len(nxt) == 1 and nxt[0].op_type == "Clip":
            clip, nxt = nxt[0], users.get(nxt[0].output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != "QuantizeLinear":
            continue
        q = nxt[0]
        dqs = users.get(q.output[0], [])
        if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear":
            continue
        dq = dqs[0]
        convs = users.get(dq.output[0], [])
        if len(convs) != 1 or convs[0].op_type != "Conv" or node_attr(convs[0], "group", 1) != 1:
            continue
        conv = convs[0]
        wdq = next((n for n in graph.node if n.output[0] == conv.input[1]), None)
        if wdq is None or wdq.op_type != "DequantizeLinear" or wdq.input[0] not in inits:
            continue
        if node_attr(wdq, "axis", 1) != 0 or len(users.get(wdq.input[0], [])) != 1:
            continue
        chans = [shapes.get(a, [0, 0])[1] if len(shapes.get(a, [])) > 1 else 0 for a in cat.input]
        w = numpy_helper.to_array(inits[wdq.input[0]])
        if any(c <= 0 for c in chans) or sum(chans) != w.shape[1]:
            continue
        new_nodes: list[onnx.NodeProto] = []
        partial: list[str] = []
        start = 0
        base = conv.name or conv.output[0]
        for i, (src, c) in enumerate(zip(cat.input, chans, strict=True)):
            tag = f"{base}_part{i}"
            w_name = _unique_name(graph, f"{wdq.input[0]}_part{i}")
            graph.initializer.append(
                numpy_helper.from_array(np.ascontiguousarray(w[:, start : start + c]), w_name)
            )
            start += c
            if clip is not None:
                new_nodes.append(
                    helper.make_node("Clip", [src, *clip.input[1:]], [f"{tag}_clipped"], name=f"{tag}_Clip")
                )
                src = f"{tag}_clipped"
            qi = helper.make_node("QuantizeLinear", [src, *q.input[1:]], [f"{tag}_q"], name=f"{tag}_Q")
            qi.attribute.extend(q.attribute)
            di = helper.make_node(
                "DequantizeLinear", [f"{tag}_q", *dq.input[1:]], [f"{tag}_dq"], name=f"{tag}_DQ"
            )
            di.attribute.extend(dq.attribute)
            wi = helper.make_node(
                "DequantizeLinear", [w_name, *wdq.input[1:]], [f"{tag}_w"], name=f"{tag}_WDQ"
            )
            wi.attribute.extend(wdq.attribute)
            conv_inputs = [f"{tag}_dq", f"{tag}_w"] + (
                [conv.input[2]] if i == 0 and len(conv.input) > 2 else []
            )
            ci = helper.make_node("Conv", conv_inputs, [f"{tag}_y"], name=tag)
            ci.attribute.extend(conv.attribute)
            new_nodes += [qi, di, wi, ci]
            partial.append(f"{tag}_y")
        acc = partial[0]
        for i, name in enumerate(partial[1:], start=1):
            out = conv.output[0] if i == len(partial) - 1 else f"{base}_sum{i}"
            new_nodes.append(helper.make_node("Add", [acc, name], [out], name=f"{base}_Add{i}"))
            acc = out
        replace[id(conv)] = new_nodes
        drop.update({id(cat), id(q), id(dq), id(wdq)} | ({id(clip)} if clip is not None else set()))
        rewritten += 1
    if rewritten:
        out_nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            if id(node) in replace:
                out_nodes.extend(replace[id(node)])
            elif id(node) not in drop:
                out_nodes.append(node)
        del graph.node[:]
        graph.node.extend(out_nodes)
        topological_sort(model)
        remove_unused(model)
    return rewritten


# Ops that only move or reshape values: a Clip behind them still clips the pool's output element by element.
_SHAPE_OPS = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


def _feeds_clip(start: str, users: dict[str, list[onnx.NodeProto]]) -> bool:
    """Whether tensor ``start`` reaches a Clip through shape-only ops."""
    todo, seen = [start], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for user in users.get(name, []):
            if user.op_type == "Clip":
                return True
            if user.op_type in _SHAPE_OPS:
                todo.append(user.output[0])
    return False


def pool_to_depthwise_conv(model: onnx.ModelProto) -> int:
    """Rewrite ``DQ -> AveragePool -> (shape ops) -> Clip -> Q`` pooling as a depthwise Conv with weights
    ``1 / (kh * kw)``, in place; returns how many were rewritten.

    It exists for OpenVINO: its CPU plugin (2026.4) computes an average pool of a quantized input wrongly when a
    Clip follows the pool, the float Clip :func:`move_activation_clips` writes for a sub-8-bit quantizer
    (measured: DQ(4 bit) -> AveragePool -> Reshape -> Transpose -> Clip -> Q/DQ differs from ONNX Runtime by up to
    three output steps in 63% of the values; the same graph with the Conv matches exactly). FMViT's RLMHSA pools
    its quantized input for K/V exactly so. The Conv computes the same mean (for the usual 2x2 window ``0.25`` is
    exact; other windows can differ in the last float bit). Only 2-D pools without padding and with
    ``ceil_mode = 0`` are rewritten (a Conv divides a partial window by the full count); needs the pool input's
    channel count from shape inference.
    """
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    users = _consumers(graph)
    shapes = _inferred_shapes(graph)
    rewritten = 0
    for node in graph.node:
        if node.op_type != "AveragePool":
            continue
        src = producers.get(node.input[0])
        if src is None or src.op_type != "DequantizeLinear" or not _feeds_clip(node.output[0], users):
            continue
        kernel = list(node_attr(node, "kernel_shape", []))
        shape = shapes.get(node.input[0], [])
        pads = list(node_attr(node, "pads", [0] * 2 * len(kernel)))
        if (
            len(kernel) != 2
            or len(shape) != 4
            or shape[1] <= 0
            or any(pads)
            or node_attr(node, "ceil_mode", 0)
            or node_attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")
            or any(d != 1 for d in node_attr(node, "dilations", [1, 1]))
        ):
            continue
        channels = shape[1]
        weight = np.full((channels, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), np.float32)
        w_name = _unique_name(graph, f"{node.name or node.output[0]}_mean_weight")
        graph.initializer.append(numpy_helper.from_array(weight, w_name))
        strides = list(node_attr(node, "strides", [1, 1]))
        conv = helper.make_node(
            "Conv",
            [node.input[0], w_name],
            list(node.output),
            name=f"{node.name}_as_conv",
            group=channels,
            kernel_shape=kernel,
            strides=strides,
        )
        node.CopyFrom(conv)
        rewritten += 1
    return rewritten


# the bias :func:`add_conv_bias` writes: not zero (OpenVINO drops a zero bias, and with it the workaround) and below
# float32's resolution of any value an int8 activation takes (its ulp at 1e-7 is 1e-14), so no output moves
TINY_BIAS = 1e-30


def add_conv_bias(model: onnx.ModelProto) -> int:
    """Give every Conv of a float32 quantized input (``DequantizeLinear`` on input 0) that has no bias a bias of
    :data:`TINY_BIAS`, in place; returns how many.

    It exists for OpenVINO: its CPU plugin (2026.4) loses a residual branch when the int8 Conv that made the
    skip input has no bias: in ``Q/DQ -> Conv_a -> {Q/DQ -> 1x1 -> dw 3x3 -> 1x1 -> Conv_c, skip} -> Add`` the
    output was the skip alone (least squares: 1.0 x skip + 0.0 x branch; 33% of the output range off ONNX Runtime,
    cosine 0.70). A bias on Conv_a avoids it, but only a non-zero one: OpenVINO removes a zero bias. MobileNet-V2
    models whose folded BatchNorms have zero shift (fresh from ``create_model``) export bias-free convolutions
    exactly so; trained ones have biases.
    """
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    values = constant_values(graph)
    added = 0
    for node in graph.node:
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if node.op_type != "Conv" or has_bias:
            continue
        src = producers.get(node.input[0])
        if src is None or src.op_type != "DequantizeLinear":
            continue
        scale = values.get(src.input[1])
        if scale is None or scale.dtype != np.float32:  # TINY_BIAS would round to 0 in float16
            continue
        w = values.get(node.input[1])
        if w is None:
            w_src = producers.get(node.input[1])
            w = values.get(w_src.input[0]) if w_src is not None and w_src.op_type == "DequantizeLinear" else None
        if w is None or w.ndim < 1:
            continue
        name = _unique_name(graph, f"{node.name or node.output[0]}_bias")
        graph.initializer.append(numpy_helper.from_array(np.full(w.shape[0], TINY_BIAS, np.float32), name))
        del node.input[2:]
        node.input.append(name)
        added += 1
    return added
