"""ONNX lowering of the approximations: the float torch version exported to standard ONNX ops only.

The float functions in :mod:`edgeattn.approx.float_ops` are written with ops every target runtime has
(Floor, Ceil, Pow with base 2, Abs, Sign, Clip/Min/Max, Where, Gather on a constant table, Exp, Reciprocal,
ReduceMax/ReduceSum), so lowering is just ``torch.onnx.export`` of a one-op module. :func:`check_ops` verifies
the graph holds nothing outside :data:`STANDARD_OPS` (no custom domain), and :func:`run_onnxruntime` /
:func:`run_openvino` execute it for the parity tests and the report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgeattn.approx.float_ops import GELU_METHODS, SOFTMAX_METHODS, ApproxGELU, ApproxSoftmax
from edgeattn.atomic import atomic_path
from edgeattn.openvino_core import openvino_core

# ONNX default-domain ops the lowerings may use (all in TensorRT's, OpenVINO's and Core ML's ONNX op sets).
STANDARD_OPS: frozenset[str] = frozenset(
    {
        "Abs",
        "Add",
        "Cast",
        "Ceil",
        "Clip",
        "Constant",
        "ConstantOfShape",
        "Div",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "Floor",
        "Gather",
        "Greater",
        "GreaterOrEqual",
        "Identity",
        "Less",
        "LessOrEqual",
        "Max",
        "Min",
        "Mul",
        "Neg",
        "Pow",
        "Reciprocal",
        "ReduceMax",
        "ReduceSum",
        "Relu",
        "Reshape",
        "Shape",
        "Sigmoid",
        "Sign",
        "Softmax",
        "Sqrt",
        "Sub",
        "Tanh",
        "Transpose",
        "Unsqueeze",
        "Where",
        "Gelu",
    }
)


def approx_module(op: str, method: str, dim: int = -1) -> torch.nn.Module:
    """``ApproxSoftmax(method, dim)`` for ``op == "softmax"``, ``ApproxGELU(method)`` for ``op == "gelu"``."""
    if op == "softmax":
        return ApproxSoftmax(method, dim)
    if op == "gelu":
        return ApproxGELU(method)
    raise ValueError(f"unknown op {op!r}; allowed: softmax, gelu")


def export_onnx(
    op: str, method: str, path: str | Path, shape: tuple[int, ...] = (2, 4, 16, 16), opset: int = 18
) -> Path:
    """Export one approximation as a standalone ONNX model (input ``x`` float32 of ``shape``), atomically.

    Uses torch's default (dynamo) exporter. Raises ``ValueError`` if the graph uses a non-standard op or cannot be
    written at ``opset``.
    """
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise ValueError(f"export_onnx: opset must be an integer, got {opset!r}")
    path = Path(path)
    model = approx_module(op, method).eval()
    x = torch.randn(*shape)
    with atomic_path(path, suffix=".tmp.onnx") as tmp:
        try:
            torch.onnx.export(
                model,
                (x,),
                tmp,
                input_names=["x"],
                output_names=["y"],
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            check_ops(tmp)
            _check_opset_written(tmp, opset)
        finally:
            Path(f"{tmp}.data").unlink(missing_ok=True)
    return path


def _check_opset_written(path: str | Path, opset: int) -> None:
    """torch's exporter converts its opset-18 graph to ``opset`` where onnx's converter can, and otherwise logs the
    failure and writes opset 18 anyway: a file of another opset than asked for is refused here."""
    import onnx

    written = {o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")}
    if written != {opset}:
        raise ValueError(
            f"export_onnx: torch's exporter could not write opset {opset} (the graph came out at opset "
            f"{', '.join(map(str, sorted(written)))}); use a newer opset"
        )


def graph_ops(path: str | Path) -> set[tuple[str, str]]:
    """The ``(domain, op_type)`` pairs of every node in the ONNX graph (functions inlined first)."""
    import onnx
    import onnx.inliner

    model = onnx.inliner.inline_local_functions(onnx.load(str(path)))
    ops: set[tuple[str, str]] = set()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            ops.add((node.domain or "", node.op_type))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)

    walk(model.graph)
    return ops


def check_ops(path: str | Path) -> None:
    """Raise ``ValueError`` if the ONNX file uses an op outside the default domain or :data:`STANDARD_OPS`."""
    bad = sorted(
        f"{d}::{o}" if d else o
        for d, o in graph_ops(path)
        if d not in ("", "ai.onnx") or o not in STANDARD_OPS
    )
    if bad:
        raise ValueError(f"ONNX lowering of {path} uses non-standard ops: {', '.join(bad)}")


def run_onnxruntime(path: str | Path, x: np.ndarray) -> np.ndarray:
    """Run the exported model in ONNX Runtime (CPU) on float32 ``x``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def run_openvino(path: str | Path, x: np.ndarray, device: str = "CPU") -> np.ndarray:
    """Run the exported model in OpenVINO (its own ONNX frontend), f32 inference precision."""

    core = openvino_core()
    model = core.read_model(str(path))
    compiled = core.compile_model(
        model, device, {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    )
    return np.asarray(compiled(x.astype(np.float32))[0])


def all_methods() -> list[tuple[str, str]]:
    """Every ``(op, method)`` pair that has a lowering."""
    return [("softmax", m) for m in SOFTMAX_METHODS] + [("gelu", m) for m in GELU_METHODS]
