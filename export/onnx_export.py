"""PyTorch -> clean ONNX: float models through torch's exporter, quantized ones through brevitas' QCDQ export.

Two exporters (``exporter=``):

* ``"torchscript"`` (default): ``torch.onnx.export(dynamo=False)`` / brevitas' TorchScript QCDQ manager at
  the profile's opset directly. On 2 shared cores it exports a quantized ``fmvit_t`` in ~10 s where the
  dynamo path takes ~45-85 s (torch.export traces and decomposes brevitas' Python quantizers).
* ``"dynamo"``: torch's default exporter in torch >= 2.9 (brevitas' dynamo manager for quantized
  models); it writes opset 18, lower opsets come from onnx's version converter, helped by
  :mod:`edgeattn.export.lowering` where it has no adapter (LayerNorm below 17, BatchNorm below 15, Add/Reshape...).

"Clean" means: no initializers listed as graph inputs; brevitas' weight chains (``W -> Q -> Clip -> DQ``,
or an int8 constant behind a Clip after torch's constant folding) rewritten to int8 initializers feeding
DequantizeLinear (:mod:`edgeattn.export.qdq`) *before* any optimizer runs, so no constant folder can
turn a quantized weight back into a float constant; then onnxscript's optimizer (constant folding, shape
sub-graphs, Identity removal), shape inference and the checker. LayerNorm is the single opset-17
``LayerNormalization`` op.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from edgeattn.export.lowering import lower_opset
from edgeattn.export.qdq import clean_qdq, remove_initializer_inputs, remove_unused, topological_sort

from edgeattn.atomic import atomic_path
from edgeattn.errors import EdgeAttnError
from edgeattn.native_stderr import native_stderr_discarded

__all__ = ["ExportedONNX", "export_onnx", "is_quantized", "node_counts", "save_onnx"]

INPUT_NAME = "input"
OUTPUT_NAME = "output"
# torch's dynamo exporter implements opset 18 and up; lower opsets come from onnx's version converter.
_TORCH_MIN_OPSET = 18


@dataclass
class ExportedONNX:
    """An exported, cleaned ONNX model and what the clean-up did."""

    model: onnx.ModelProto
    quantized: bool
    precision: str
    opset: int
    cleanup: dict[str, int] = field(default_factory=dict)


def is_quantized(model: Any) -> bool:
    """True when ``model`` holds brevitas quantized layers or quantizers."""
    try:
        from brevitas.nn.mixin.base import QuantLayerMixin
    except ImportError:  # pragma: no cover - brevitas is a dependency
        return False
    return any(isinstance(m, QuantLayerMixin) for m in model.modules())


def node_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Number of nodes of each op type, sorted by name."""
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints and warnings (they go to stdout and the logging tree)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


@contextlib.contextmanager
def _quiet_stderr_fd():
    """Discard what torch's C++ ONNX log writes during the block.

    torch's TorchScript exporter turns its C++ ONNX log on for every export (``setup_onnx_logging`` tests the
    function object, not its result) and, when an op has no symbolic, logs the whole "Torch IR graph at
    exception": tens of lines before our one-line error. That log is sent to std::cerr here, whose descriptor
    is discarded; standard output is left alone, so the CLI's progress display keeps drawing there."""
    import torch

    set_stream = getattr(torch._C, "_jit_set_onnx_log_output_stream", None)
    try:
        if set_stream is not None:
            set_stream("stderr")
        with native_stderr_discarded():
            yield
    finally:
        if set_stream is not None:
            with contextlib.suppress(Exception):
                set_stream("stdout")  # torch's default


@contextlib.contextmanager
def _no_mha_fastpath():
    """Trace ``nn.MultiheadAttention`` (and the ``nn.Transformer*`` layers) through their plain ops: in eval mode
    without grad torch takes a fused fast path (``aten::_native_multi_head_attention``) that no ONNX exporter
    converts."""
    import torch

    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _export_kwargs(opset: int, dynamic_batch: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "dynamo": True,
        "opset_version": max(opset, _TORCH_MIN_OPSET),
        "optimize": True,
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
        "external_data": False,
    }
    if dynamic_batch:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    return kwargs


def _torch_export(
    model: Any, example: Any, opset: int, dynamic_batch: bool, quantized: bool, exporter: str
) -> onnx.ModelProto:
    import torch

    kwargs = _export_kwargs(opset, dynamic_batch)
    if exporter == "torchscript":
        kwargs.update(dynamo=False, opset_version=opset, do_constant_folding=True)
        kwargs.pop("optimize")
        kwargs.pop("external_data")
    with tempfile.TemporaryDirectory(prefix="edgeattn-onnx-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        with _quiet(), _quiet_stderr_fd(), torch.no_grad(), _no_mha_fastpath():
            if quantized:
                from brevitas.export import export_onnx_qcdq

                # brevitas lists initializers as inputs unless told otherwise
                export_onnx_qcdq(
                    model, args=(example,), export_path=path, keep_initializers_as_inputs=False, **kwargs
                )
            else:
                torch.onnx.export(model, (example,), path, **kwargs)
        return onnx.load(path)


def export_onnx(
    model: Any,
    example_input: Any,
    *,
    opset: int = 17,
    precision: str = "fp32",
    dynamic_batch: bool = False,
    exporter: str = "torchscript",
) -> ExportedONNX:
    """Export ``model`` (eval mode; float or brevitas-quantized) to a clean ONNX model.

    The model is exported from a deep copy: a brevitas export that fails half-way can leave the
    module in export mode, and the caller's model must stay usable. ``precision="fp16"`` converts the
    float graph's weights and compute to FP16 with FP32 inputs/outputs; ``"int8"`` requires a
    quantized model (explicit Q/DQ).
    """
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    quantized = is_quantized(model)
    if precision == "int8" and not quantized:
        raise EdgeAttnError(
            "precision int8 needs a quantized model (edgeattn.quant.quantize_model or a QAT checkpoint)"
        )
    if precision == "fp16" and quantized:
        raise EdgeAttnError("precision fp16 is for float models; a quantized model exports as int8")
    work = copy.deepcopy(model).eval()
    try:
        proto = _torch_export(work, example_input, opset, dynamic_batch, quantized, exporter)
    except EdgeAttnError:
        raise
    except Exception as exc:  # the exporters raise many types; name the model and the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgeAttnError(f"ONNX export of {type(model).__name__} failed: {first}", exit_code=5) from exc
    cleanup = (
        clean_qdq(proto) if quantized else {"initializer_inputs_removed": remove_initializer_inputs(proto)}
    )
    if exporter == "torchscript":
        from onnxscript import optimizer

        with _quiet():
            proto = optimizer.optimize(proto)
    elif opset < _TORCH_MIN_OPSET:
        proto, decomposed = lower_opset(proto, opset)
        cleanup.update({f"{op}_decomposed": n for op, n in decomposed.items()})
    if precision == "fp16":
        proto = _to_fp16(proto)
        topological_sort(proto)
    remove_unused(proto)
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    onnx.checker.check_model(proto, full_check=True)
    return ExportedONNX(model=proto, quantized=quantized, precision=precision, opset=opset, cleanup=cleanup)


def _to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and compute, FP32 graph inputs/outputs (Cast at the edges)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet():
        # LayerNormalization/Softmax stay in FP16 too: TensorRT and OpenVINO accumulate them in FP32 anyway
        return convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=False)


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` atomically (temp file + rename)."""
    with atomic_path(path, suffix=".tmp") as tmp:
        onnx.save(model, tmp)
    return Path(path)
