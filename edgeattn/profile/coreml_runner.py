"""Core ML runner (``.mlpackage``/``.mlmodel``, predictions on macOS only): :class:`CoreMLRunner`.

The shared interface and helpers are in :mod:`edgeattn.profile.runners`.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edgeattn.errors import EdgeAttnError, MissingBackendError
from edgeattn.profile import layers as L
from edgeattn.profile.runners import _COREML_UNITS, Runner, _first_line, _sibling_onnx_macs, make_input, resolve_shapes
from edgeattn.profile.schema import LayerBreakdown


class CoreMLRunner(Runner):
    """A Core ML model loaded with coremltools; ``device`` picks compute units (ALL, CPU, GPU, NPU/ANE)."""

    runtime = "coreml"

    def __init__(
        self, path: Path, device: str, batch: int | None, shapes: Mapping[str, Sequence[int]] | None
    ) -> None:
        super().__init__(path)
        if platform.system() != "Darwin":
            raise MissingBackendError(
                f"Core ML predictions need macOS; this is {platform.system()} (coremltools converts only)"
            )
        import coremltools as ct

        self._ct = ct
        self.version = ct.__version__
        self.device = device.upper()
        if self.device not in _COREML_UNITS:
            raise EdgeAttnError(
                f"--device {device} is not a Core ML compute unit; it has: {', '.join(_COREML_UNITS)}"
            )
        self._units = ct.ComputeUnit[_COREML_UNITS[self.device]]
        try:
            self.model = ct.models.MLModel(str(path), compute_units=self._units)
        except Exception as exc:
            raise EdgeAttnError(f"cannot load '{path}' with coremltools: {_first_line(exc)}") from exc
        self.feeds: dict[str, np.ndarray] = {}
        spec_inputs = list(self.model.get_spec().description.input)
        for inp in spec_inputs:
            if not inp.type.multiArrayType.shape:
                raise EdgeAttnError(
                    f"input '{inp.name}' of '{path}' is not a multi-array; the profiler cannot feed it"
                )
        declared = {inp.name: [int(d) for d in inp.type.multiArrayType.shape] for inp in spec_inputs}
        run_shapes = resolve_shapes(declared, batch, shapes, str(path))
        for i, inp in enumerate(spec_inputs):
            arr = inp.type.multiArrayType
            shape = run_shapes[inp.name]
            dtype = {65568: np.float32, 65552: np.float16, 131104: np.int32}.get(arr.dataType, np.float32)
            self.feeds[inp.name] = make_input(shape, dtype, seed=i)
            self.input_shapes[inp.name] = shape
            self.input_dtypes[inp.name] = np.dtype(dtype).name
        self.precision = "fp16"  # mlprograms compute in fp16 unless converted with compute_precision fp32
        self.compute_precision = "fp16"
        self.settings = {"compute_units": _COREML_UNITS[self.device]}

    def run(self) -> None:
        self.model.predict(self.feeds)

    def macs(self) -> tuple[int | None, str]:
        return _sibling_onnx_macs(self.path, self.input_shapes)

    def profile_layers(self, runs: int, end_to_end_p50_ms: float) -> LayerBreakdown:
        from coremltools.models.compute_plan import MLComputePlan

        plan = MLComputePlan.load_from_path(
            path=self.model.get_compiled_model_path(), compute_units=self._units
        )
        program = plan.model_structure.program
        if program is None:
            raise EdgeAttnError("Core ML compute plans are only available for mlprogram models")
        acc = L.LayerAccumulator()
        for function in program.functions.values():
            for op in function.block.operations:
                cost = plan.get_estimated_cost_for_mlprogram_operation(op)
                usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
                if cost is None:
                    continue
                dev = type(usage.preferred_compute_device).__name__ if usage else ""
                name = ",".join(o.name for o in op.outputs) or op.operator_name
                acc.add(
                    name, op.operator_name, dev, "fp16", dev, cost.weight * end_to_end_p50_ms, estimated=True
                )
        acc.runs = 1
        return acc.breakdown(
            "Core ML compute plan (estimated cost share x measured median)", end_to_end_p50_ms
        )
