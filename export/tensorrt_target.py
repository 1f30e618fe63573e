"""TensorRT target: the equivalent ``trtexec`` line, and an engine build + runner when ``tensorrt`` imports.

Version lines (TensorRT release notes): TensorRT 11 dropped the precision flags (``--fp16``, ``--int8``,
``--best``) and calibrators, so precision comes only from the typed graph and its Q/DQ nodes;
TensorRT 10.x (the Jetson line) opts into the same with ``--stronglyTyped``. A 10.x profile with
``strongly_typed: false`` gets the weakly-typed flags (``--int8`` for Q/DQ graphs, ``--fp16`` for the
FP16 fallback of unquantized layers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError, MissingBackendError

__all__ = [
    "DEFAULT_MAX_BATCH",
    "TensorRTRunner",
    "build_engine",
    "max_batch_for",
    "tensorrt_available",
    "trtexec_command",
    "unsupported_tensor_types",
]

# ONNX element types TensorRT has a DataType for (TensorRT 10/11: FLOAT, HALF, BF16, INT8, INT32, INT64, BOOL,
# UINT8, FP8, INT4). Any other type in the graph (DOUBLE, INT16, UINT16/32/64, STRING, ...) is refused: the
# parser rejects it, or (double weights) casts it down to float, so the engine would not compute what ONNX Runtime
# checked. Token ids may stay int64: TensorRT 10 added INT64 tensors, and its Gather takes int32 or int64 indices
# (int64 ones are cast to int32 when the data is not int64; TensorRT's Gather operator documentation).
TENSORRT_ELEM_TYPES = frozenset(
    ["FLOAT", "FLOAT16", "BFLOAT16", "INT8", "INT32", "INT64", "BOOL", "UINT8", "FLOAT8E4M3FN", "INT4"]
)

# the largest batch a dynamic-batch engine accepts, unless the export batch (the profile's opt shape) is larger
DEFAULT_MAX_BATCH = 32


def tensorrt_available() -> bool:
    """True when the ``tensorrt`` Python module imports (and so a GPU build can be tried)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def unsupported_tensor_types(model: Any) -> list[tuple[str, str]]:
    """``(tensor name, ONNX element type)`` of every graph input, output, initializer, constant and inferred
    intermediate whose type TensorRT has no DataType for (see :data:`TENSORRT_ELEM_TYPES`); [] when all fit."""
    import onnx
    from onnx import TensorProto

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    found: dict[str, int] = {}
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        found[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        found[init.name] = init.data_type
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                found[node.output[0]] = attr.t.data_type
            if node.op_type == "Cast" and attr.name == "to":
                found[node.output[0]] = attr.i
    names = {name: TensorProto.DataType.Name(t) for name, t in found.items() if t}
    return sorted((name, t) for name, t in names.items() if t not in TENSORRT_ELEM_TYPES)


def max_batch_for(input_shape: tuple[int, ...], max_batch: int | None = None) -> int:
    """The max batch of a dynamic-batch profile: ``max_batch`` or :data:`DEFAULT_MAX_BATCH`, at least the
    export batch ``input_shape[0]`` (TensorRT requires min <= opt <= max)."""
    return max(max_batch or DEFAULT_MAX_BATCH, int(input_shape[0]))


def _flags(spec: Any, precision: str) -> list[str]:
    if spec.major >= 11:
        return []  # precision only from the typed graph (FP16 from FP16 weights, INT8 from Q/DQ)
    if spec.strongly_typed:
        return ["--stronglyTyped"]
    flags = []
    if precision == "int8":
        flags.append("--int8")
    if precision == "fp16" or spec.fp16_fallback:
        flags.append("--fp16")
    return flags


def trtexec_command(
    onnx_file: str,
    engine_file: str,
    spec: Any,
    precision: str,
    input_name: str,
    input_shape: tuple[int, ...],
    dynamic_batch: bool,
    max_batch: int | None = None,
) -> str:
    """The ``trtexec`` line that builds the same engine as :func:`build_engine` (written into report.json).

    A dynamic batch gets min 1, opt ``input_shape[0]``, max :func:`max_batch_for`.
    """
    parts = [
        "trtexec",
        f"--onnx={onnx_file}",
        f"--saveEngine={engine_file}",
        *_flags(spec, precision),
        f"--memPoolSize=workspace:{spec.workspace_mib}M",
    ]
    dims = "x".join(str(d) for d in input_shape[1:])
    if dynamic_batch:
        parts += [
            f"--minShapes={input_name}:1x{dims}",
            f"--optShapes={input_name}:{input_shape[0]}x{dims}",
            f"--maxShapes={input_name}:{max_batch_for(input_shape, max_batch)}x{dims}",
        ]
    return " ".join(parts)


def build_engine(
    onnx_bytes: bytes,
    engine_path: str | Path,
    spec: Any,
    precision: str,
    input_name: str,
    input_shape: tuple[int, ...],
    dynamic_batch: bool,
    max_batch: int | None = None,
) -> Path:
    """Parse the ONNX with TensorRT, build with the profile's settings and serialize the engine.

    A parse or build failure raises :class:`EdgeAttnError` with exit code 5 (``tensorrt: <reason>``).
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise MissingBackendError(
            "building a TensorRT engine needs the 'tensorrt' package (NVIDIA's wheel, JetPack on Jetson): "
            "edgeattn's 'tensorrt' extra: pip install tensorrt"
        ) from exc
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if spec.strongly_typed and strongly is not None and spec.major < 11:
        flags |= 1 << int(strongly)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)).strip() for i in range(parser.num_errors))
        raise EdgeAttnError(f"tensorrt: could not parse the ONNX graph: {' '.join(errors.split())}", exit_code=5)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mib << 20)
    if spec.major < 11 and not spec.strongly_typed:
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        if precision == "fp16" or spec.fp16_fallback:
            config.set_flag(trt.BuilderFlag.FP16)
    if dynamic_batch:
        profile = builder.create_optimization_profile()
        rest = tuple(input_shape[1:])
        top = max_batch_for(input_shape, max_batch)
        profile.set_shape(input_name, (1, *rest), tuple(input_shape), (top, *rest))
        config.add_optimization_profile(profile)
    try:
        serialized = builder.build_serialized_network(network, config)
    except Exception as exc:
        from edgeattn.export.report import backend_error

        raise backend_error("tensorrt", exc) from exc
    if serialized is None:
        raise EdgeAttnError("tensorrt: engine build failed (see the TensorRT log above)", exit_code=5)
    path = Path(engine_path)
    path.write_bytes(bytes(serialized))
    return path


class TensorRTRunner:
    """Runs a serialized engine on the GPU with torch CUDA tensors as I/O buffers (one input, one output)."""

    def __init__(self, engine_path: str | Path) -> None:
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available():
            raise MissingBackendError("running a TensorRT engine needs a CUDA build of torch and a GPU")
        self._torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inp = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.out = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        xin = torch.from_numpy(np.ascontiguousarray(x)).cuda()
        self.context.set_input_shape(self.inp, tuple(xin.shape))
        shape = tuple(self.context.get_tensor_shape(self.out))
        y = torch.empty(shape, dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.inp, xin.data_ptr())
        self.context.set_tensor_address(self.out, y.data_ptr())
        stream = torch.cuda.current_stream()
        self.context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return y.cpu().numpy()
