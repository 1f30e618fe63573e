"""TensorRT runner (``.engine``/``.plan``/``.trt``, with ``tensorrt`` and a CUDA build of torch):
:class:`TensorRTRunner`.

The shared interface and helpers are in :mod:`edgeattn.profile.runners`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError, MissingBackendError
from edgeattn.profile import layers as L
from edgeattn.profile.runners import Runner, _sibling_onnx_macs, make_input, resolve_shapes
from edgeattn.profile.schema import LayerBreakdown


class TensorRTRunner(Runner):
    """A serialized TensorRT engine run with ``execute_async_v3`` on a CUDA stream (buffers from torch)."""

    runtime = "tensorrt"

    def __init__(
        self, path: Path, device: str, batch: int | None, shapes: Mapping[str, Sequence[int]] | None
    ) -> None:
        super().__init__(path)
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available():
            raise MissingBackendError(
                "TensorRT engines need a CUDA GPU and a CUDA build of torch; none found here"
            )
        self._trt, self._torch = trt, torch
        self.version = trt.__version__
        self.device = device.upper()
        index = int(self.device.split(":")[1]) if ":" in self.device else 0
        if not self.device.startswith("GPU") or index >= torch.cuda.device_count():
            have = [f"GPU:{i}" for i in range(torch.cuda.device_count())]
            raise EdgeAttnError(
                f"--device {device} is not available for tensorrt here; it has: {', '.join(have)}"
            )
        torch.cuda.set_device(index)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        try:
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        except Exception:  # some TensorRT versions raise instead of returning None
            engine = None
        if engine is None:
            raise EdgeAttnError(
                f"cannot load '{path}' as a TensorRT {self.version} engine (corrupt, or built by "
                "another TensorRT version or for another GPU)"
            )
        self.engine = engine
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.buffers: dict[str, Any] = {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        declared = {name: [d if d >= 0 else None for d in engine.get_tensor_shape(name)] for name in inputs}
        run_shapes = resolve_shapes(declared, batch, shapes, str(path))
        for i, name in enumerate(inputs):
            shape = run_shapes[name]
            if not self.context.set_input_shape(name, shape):
                raise EdgeAttnError(
                    f"'{path}' cannot take input '{name}' of shape {shape} (engine profile range)"
                )
            dtype = trt.nptype(engine.get_tensor_dtype(name))
            self.buffers[name] = torch.from_numpy(make_input(shape, dtype, seed=i)).cuda()
            self.input_shapes[name] = shape
            self.input_dtypes[name] = np.dtype(dtype).name
        for name in names:
            if name not in self.buffers:
                shape = list(self.context.get_tensor_shape(name))
                dtype = trt.nptype(engine.get_tensor_dtype(name))
                self.buffers[name] = torch.empty(
                    shape, dtype=torch.from_numpy(np.zeros(1, dtype)).dtype, device="cuda"
                )
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
        self.precision = self._engine_precision()
        self.compute_precision = self.precision
        self.settings = {
            "stream": "execute_async_v3 + synchronize",
            "cuda_device": torch.cuda.get_device_name(index),
        }

    def _layer_info(self) -> dict[str, dict[str, Any]]:
        """Layer name -> engine inspector JSON (type, tactic, precision) if the engine kept details."""
        import json

        info: dict[str, dict[str, Any]] = {}
        try:
            inspector = self.engine.create_engine_inspector()
            for i in range(self.engine.num_layers):
                data = json.loads(inspector.get_layer_information(i, self._trt.LayerInformationFormat.JSON))
                if isinstance(data, dict) and "Name" in data:
                    info[data["Name"]] = data
        except Exception:  # engines built without detailed profiling verbosity carry names only
            return {}
        return info

    def _engine_precision(self) -> str:
        text = " ".join(
            str(v.get("Outputs", "")) + str(v.get("Precision", "")) for v in self._layer_info().values()
        )
        return (
            "int8"
            if "Int8" in text or "INT8" in text
            else "fp16"
            if "Half" in text or "FP16" in text
            else "fp32"
        )

    def run(self) -> None:
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()

    def macs(self) -> tuple[int | None, str]:
        return _sibling_onnx_macs(self.path, self.input_shapes)

    def profile_layers(self, runs: int, end_to_end_p50_ms: float) -> LayerBreakdown:
        trt = self._trt

        class _Profiler(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)
                self.rows: list[tuple[str, float]] = []

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                self.rows.append((layer_name, ms))

        profiler = _Profiler()
        self.context.profiler = profiler
        info = self._layer_info()
        acc = L.LayerAccumulator()
        try:
            for i in range(2 + runs):
                profiler.rows.clear()
                if i < 2:  # warm-up inside the profiled context
                    self.run()
                    continue
                acc.timed(self.run)
                for name, ms in profiler.rows:
                    meta = info.get(name, {})
                    kernel = str(meta.get("TacticName", "tensorrt"))
                    precision = L.precision_from_kernel(str(meta.get("Outputs", "")) + " " + kernel)
                    acc.add(name, str(meta.get("LayerType", "layer")), kernel, precision, self.device, ms)
                acc.runs += 1
        finally:
            self.context.profiler = None
        return acc.breakdown(
            "tensorrt IProfiler layer times (+ engine inspector when available)", end_to_end_p50_ms
        )

    def close(self) -> None:
        self.context = None
        self.engine = None
