"""Core ML target: an ``.mlpackage`` mlprogram converted by coremltools from the traced torch model.

* Deployment target and compute precision come from the profile's ``coreml`` section.
* A brevitas-quantized model is first turned into its float deploy twin (:func:`float_twin`): each
  QuantConv/QuantLinear becomes a plain layer holding its *fake-quantized* weights, and activation quantizers
  become explicit round/clip arithmetic with brevitas' calibrated scales (Core ML has no activation
  quantization for torch-converted mlprograms; without it a W8A8 model's Core ML twin would differ from its
  fake-quant reference by the whole activation-quantization error). Core ML then stores the weights
  linearly quantized (``coremltools.optimize.coreml.linear_quantize_weights``, symmetric, per output
  channel, ``quant.weight_bits`` <= 4 -> int4 else int8);
  activations run in the profile's compute precision (FP16).
* Attention is already decomposed (matmul / softmax / matmul) by the project's blocks, which Core ML
  converts reliably; no fused ``scaled_dot_product_attention`` reaches the converter.
* Prediction needs macOS. :func:`validate_spec` checks the saved package on any OS (inputs, outputs,
  specification version, every op allowed for the deployment target) and
  :mod:`edgeattn.export.mil_eval` evaluates the saved program in numpy so parity can be measured on
  Linux too; the report says which of the two happened.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.atomic import replaceable_dir, staging_dir
from edgeattn.errors import EdgeAttnError, MissingBackendError

__all__ = ["convert_coreml", "coreml_prediction_available", "float_twin", "validate_spec"]

# Core ML specification version of each deployment target (coremltools' AvailableTarget values).
SPEC_VERSION = {
    "iOS15": 6,
    "macOS12": 6,
    "iOS16": 7,
    "macOS13": 7,
    "iOS17": 8,
    "macOS14": 8,
    "iOS18": 9,
    "macOS15": 9,
}


def require_coremltools():
    """Import coremltools (quietly) or raise MissingBackendError naming the pip extra."""
    try:
        with _quiet():
            import coremltools as ct
    except ImportError as exc:
        raise MissingBackendError(
            "the Core ML target needs the 'coremltools' package, edgeattn's 'coreml' extra: "
            "pip install coremltools"
        ) from exc
    return ct


@contextlib.contextmanager
def _quiet():
    """coremltools prints progress bars and version warnings to stderr and the logging tree."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


_INT_PATCHED = False


def _register_int_cast() -> None:
    """Override coremltools' ``aten::Int`` conversion so a constant one-element *array* folds to a Python int.

    coremltools 9's converter calls ``int(x.val)`` on it, which numpy 2 refuses for arrays of shape (1,)
    (traced shape arithmetic such as ``int(n ** 0.5)`` in the registry's ViTs produces them).
    Registered through coremltools' own ``register_torch_op(override=True)`` hook; non-constant inputs keep
    the stock behaviour.
    """
    global _INT_PATCHED
    if _INT_PATCHED:
        return
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops as torch_ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op

    def _int(context, node):
        x = torch_ops._get_inputs(context, node, expected=1)[0]
        if x.can_be_folded_to_const() and np.asarray(x.val).size == 1:
            context.add(mb.const(val=int(np.asarray(x.val).reshape(-1)[0]), name=node.name), node.name)
        else:
            torch_ops._cast(context, node, int, "int32")

    _int.__name__ = "int"
    register_torch_op(_int, override=True)
    _INT_PATCHED = True


def coreml_prediction_available() -> bool:
    """True only where coremltools can run predictions (macOS with the compiled framework)."""
    import platform

    if platform.system() != "Darwin":
        return False
    try:
        with _quiet():
            from coremltools import libcoremlpython  # noqa: F401
    except ImportError:
        return False
    return True


def _fake_quant_module(proxy: Any):
    """A plain-torch quantize-dequantize with the scale, zero point and range of a brevitas activation proxy.

    Core ML has no activation quantization for mlprograms converted from torch, so activations quantized
    by QAT/PTQ are kept as explicit ``round``/``clip`` arithmetic (MIL ``round``, ``clip``, ``mul``) with
    brevitas' own calibrated parameters: the converted program computes what the fake-quant reference does.
    """
    import torch
    from torch import nn

    bits = int(proxy.bit_width().item())
    signed = bool(proxy.is_signed)
    narrow = bool(proxy.is_narrow_range)
    qmin = -(2 ** (bits - 1)) + int(narrow) if signed else 0
    qmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1 - int(narrow)

    class FakeQuant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("scale", proxy.scale().detach().reshape(-1)[:1].clone().float())
            self.register_buffer("zero_point", proxy.zero_point().detach().reshape(-1)[:1].clone().float())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = torch.clamp(torch.round(x / self.scale) + self.zero_point, qmin, qmax)
            return (q - self.zero_point) * self.scale

    return FakeQuant()


def float_twin(model: Any, keep_act_quant: bool = True) -> Any:
    """A float copy of a brevitas model for converters that cannot read brevitas modules.

    Layers hold their fake-quantized weights; activation quantizers (quant points and layer input quantizers)
    become explicit quantize-dequantize arithmetic with brevitas' calibrated parameters when
    ``keep_act_quant`` (else identities). Float models are returned as a deep copy unchanged.
    """
    import torch
    from torch import nn

    twin = copy.deepcopy(model).eval()
    try:
        from brevitas import nn as qnn
    except ImportError:  # pragma: no cover
        return twin

    def act(proxy: Any) -> nn.Module | None:
        if keep_act_quant and proxy is not None and proxy.is_quant_enabled:
            return _fake_quant_module(proxy)
        return None

    replaced: dict[str, nn.Module] = {}
    with torch.no_grad():
        for name, mod in twin.named_modules():
            new: nn.Module | None = None
            if isinstance(mod, (qnn.QuantConv2d, qnn.QuantConv1d)):
                conv_cls = nn.Conv2d if isinstance(mod, qnn.QuantConv2d) else nn.Conv1d
                new = conv_cls(
                    mod.in_channels,
                    mod.out_channels,
                    mod.kernel_size,
                    mod.stride,
                    mod.padding,
                    mod.dilation,
                    mod.groups,
                    bias=mod.bias is not None,
                    padding_mode=mod.padding_mode,
                )
            elif isinstance(mod, qnn.QuantLinear):
                new = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
            elif isinstance(mod, qnn.QuantIdentity):
                new = act(mod.act_quant) or nn.Identity()
            if new is None:
                continue
            if hasattr(new, "weight"):
                new.weight.copy_(mod.quant_weight().value.detach())
                if mod.bias is not None:
                    new.bias.copy_(mod.bias.detach())
                pre = act(getattr(mod, "input_quant", None))
                if pre is not None:
                    new = nn.Sequential(pre, new)
            replaced[name] = new
    for name, new in replaced.items():
        parent, _, leaf = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, leaf, new)
    return twin.eval()


def convert_coreml(
    model: Any, example: Any, profile: Any, precision: str, out_path: str | Path
) -> dict[str, Any]:
    """Trace, convert and save ``out_path`` (an ``.mlpackage``) atomically; returns conversion facts.

    ``precision`` ``fp32``/``fp16`` is the compute precision; ``int8`` stores the weights linearly quantized
    and computes in the profile's ``coreml.compute_precision`` (activations are not quantized here: a
    brevitas model brings its activation quantizers as round/clip arithmetic, see :func:`float_twin`).
    A tracing or conversion failure raises :class:`EdgeAttnError` with exit code 5 and writes nothing.
    """
    import torch
    from edgeattn.export.report import backend_error

    out_path = replaceable_dir(out_path)  # the package is a folder replaced as a whole
    ct = require_coremltools()
    spec_cfg = profile.coreml
    target_name = spec_cfg.deployment_target if spec_cfg else "iOS17"
    target = getattr(ct.target, target_name)
    profile_fp16 = spec_cfg is None or spec_cfg.compute_precision == "fp16"
    if precision == "fp32" or (precision == "int8" and not profile_fp16):
        compute = ct.precision.FLOAT32
    else:
        compute = ct.precision.FLOAT16
    _register_int_cast()
    twin = float_twin(model)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings on static shape arithmetic
            # check_trace=False: torch's check re-runs the model and compares; the parity gate that follows
            # compares the converted program itself with the eager model on every parity input
            traced = torch.jit.trace(twin, example, check_trace=False)
        mlmodel, weight_dtype = _convert(ct, traced, example, profile, precision, target, target_name, compute)
    except EdgeAttnError:
        raise
    except Exception as exc:  # coremltools raises many types (NotImplementedError for an op it cannot map)
        raise backend_error("coreml", exc) from exc
    with staging_dir(out_path, suffix=".mlpackage") as staged:  # coremltools' save() wants the extension
        mlmodel.save(str(staged))
    return {
        "deployment_target": target_name,
        "compute_precision": "fp16" if compute == ct.precision.FLOAT16 else "fp32",
        "weight_quantization": weight_dtype,
        "coremltools": ct.__version__,
    }


def _convert(
    ct: Any,
    traced: Any,
    example: Any,
    profile: Any,
    precision: str,
    target: Any,
    target_name: str,
    compute: Any,
) -> tuple[Any, str | None]:
    """coremltools' conversion of ``traced`` (+ linear weight quantization for int8): (mlmodel, weight dtype)."""
    # token ids (an integer example) go in as int32: Core ML has no int64 inputs
    in_dtype = np.int32 if not example.dtype.is_floating_point else np.float32
    with _quiet():
        mlmodel = ct.convert(
            traced,
            inputs=[ct.TensorType(name="input", shape=tuple(example.shape), dtype=in_dtype)],
            outputs=[ct.TensorType(name="output", dtype=np.float32)],
            convert_to="mlprogram",
            minimum_deployment_target=target,
            compute_precision=compute,
        )
        weight_dtype = None
        if precision == "int8":
            from coremltools.optimize.coreml import (
                OpLinearQuantizerConfig,
                OptimizationConfig,
                linear_quantize_weights,
            )

            bits = profile.quant.weight_bits
            weight_dtype = "int4" if bits <= 4 else "int8"
            if weight_dtype == "int4" and SPEC_VERSION.get(target_name, 0) < 9:
                raise EdgeAttnError(
                    f"{bits}-bit weights need Core ML deployment target iOS18/macOS15; profile "
                    f"'{profile.name}' targets {target_name}"
                )
            cfg = OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype=weight_dtype, granularity="per_channel", weight_threshold=0
            )
            mlmodel = linear_quantize_weights(mlmodel, OptimizationConfig(global_config=cfg))
    return mlmodel, weight_dtype


def _allowed_ops(spec_version: int) -> set[str]:
    """MIL op types registered for the opsets up to ``spec_version`` (from coremltools' own registry)."""
    with _quiet():
        from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry
    allowed: set[str] = set()
    for op_type, by_version in SSAOpRegistry.core_ops.items():
        if any(int(v) <= spec_version for v in by_version):
            allowed.add(op_type)
    return allowed


def validate_spec(
    path: str | Path, *, deployment_target: str, input_shape: tuple[int, ...], input_dtype: str = "float32"
) -> dict[str, Any]:
    """Check a saved ``.mlpackage`` without running it: program type, spec version, I/O (shape and element
    type: ``float32``, or ``int32`` for token ids), op set.

    Returns ``{"passed", "problems", "op_counts", "spec_version", "inputs", "input_dtype", "outputs"}``.
    """
    ct = require_coremltools()
    with _quiet():
        mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    problems: list[str] = []
    if spec.WhichOneof("Type") != "mlProgram":
        problems.append(f"model type is {spec.WhichOneof('Type')}, expected mlProgram")
    want = SPEC_VERSION.get(deployment_target)
    if want is not None and spec.specificationVersion > want:
        problems.append(
            f"specification version {spec.specificationVersion} is newer than {deployment_target} ({want})"
        )
    inputs = {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input}
    outputs = [o.name for o in spec.description.output]
    if list(inputs) != ["input"] or inputs["input"] != list(input_shape):
        problems.append(f"inputs {inputs} differ from {{'input': {list(input_shape)}}}")
    array_types = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType
    dtypes = [array_types.Name(i.type.multiArrayType.dataType).lower() for i in spec.description.input]
    if dtypes[:1] != [input_dtype]:
        problems.append(f"input element type {', '.join(dtypes)} differs from {input_dtype}")
    if outputs != ["output"]:
        problems.append(f"outputs {outputs} differ from ['output']")
    op_counts: dict[str, int] = {}
    if spec.WhichOneof("Type") == "mlProgram":
        allowed = _allowed_ops(want or spec.specificationVersion)
        for fn in spec.mlProgram.functions.values():
            block = fn.block_specializations[fn.opset]
            for op in block.operations:
                op_counts[op.type] = op_counts.get(op.type, 0) + 1
        bad = sorted(t for t in op_counts if t not in allowed)
        if bad:
            problems.append(f"ops not available on {deployment_target}: {', '.join(bad)}")
    return {
        "passed": not problems,
        "problems": problems,
        "spec_version": int(spec.specificationVersion),
        "inputs": inputs,
        "input_dtype": dtypes[0] if dtypes else None,
        "outputs": outputs,
        "op_counts": dict(sorted(op_counts.items())),
    }


def predict_macos(path: str | Path, x: np.ndarray, compute_units: str = "ALL") -> np.ndarray:
    """Run the saved model with Core ML itself (macOS only), one sample at a time."""
    ct = require_coremltools()
    with _quiet():
        mlmodel = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
    outs = [mlmodel.predict({"input": x[i : i + 1]})["output"] for i in range(len(x))]
    return np.concatenate(outs, axis=0)
