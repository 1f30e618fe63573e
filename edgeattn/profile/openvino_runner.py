"""OpenVINO runner (``.xml`` IR, or ``.onnx`` with ``--runtime openvino``): :class:`OpenVINORunner` and the
checks of its options (:func:`check_openvino_options`, ``--hint`` and ``--infer-precision``).

The shared interface and helpers are in :mod:`edgeattn.profile.runners`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError
from edgeattn.native_stderr import native_stderr_discarded
from edgeattn.openvino_core import openvino_core
from edgeattn.profile import layers as L
from edgeattn.profile.runners import Runner, _first_line, make_input, resolve_shapes
from edgeattn.profile.schema import LayerBreakdown

OPENVINO_HINTS = ("latency", "throughput", "none")  # performance hints (--hint)
INFER_PRECISIONS = ("f32", "bf16", "f16")  # OpenVINO inference precisions (--infer-precision)


def check_openvino_options(hint: str, infer_precision: str | None) -> None:
    """Raise :class:`EdgeAttnError` unless ``hint`` is one of :data:`OPENVINO_HINTS` (any case) and
    ``infer_precision`` is ``None`` or one of :data:`INFER_PRECISIONS`."""
    if not isinstance(hint, str) or hint.lower() not in OPENVINO_HINTS:
        raise EdgeAttnError(f"--hint {hint!r} is not known; choose {', '.join(OPENVINO_HINTS)}")
    if infer_precision is not None and infer_precision not in INFER_PRECISIONS:
        raise EdgeAttnError(
            f"--infer-precision {infer_precision!r} is not known; choose {', '.join(INFER_PRECISIONS)}"
        )


class OpenVINORunner(Runner):
    """OpenVINO compiled model, one infer request; ``hint`` latency/throughput/none as in benchmark_app."""

    runtime = "openvino"

    def __init__(
        self,
        path: Path,
        device: str,
        threads: int | None,
        batch: int | None,
        shapes: Mapping[str, Sequence[int]] | None,
        hint: str = "latency",
        infer_precision: str | None = None,
    ) -> None:
        super().__init__(path)
        import openvino as ov

        self._ov = ov
        self.version = ov.__version__.split("-")[0]
        self.core = openvino_core()
        self.device = device.upper()
        available = self.core.available_devices
        virtual = self.device.split(":")[0] in (
            "AUTO",
            "HETERO",
            "MULTI",
            "BATCH",
        )  # plugins over real devices
        if not virtual and self.device.split(".")[0] not in {d.split(".")[0] for d in available}:
            raise EdgeAttnError(
                f"--device {device} is not available in openvino here; it has: {', '.join(available)}"
            )
        if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").exists():
            raise EdgeAttnError(
                f"OpenVINO IR '{path}' has no weights file beside it ({path.with_suffix('.bin').name})"
            )
        try:
            # an IR is read with its weights named, so OpenVINO tries no other frontend on a broken .xml; on a
            # broken .onnx it probes them all, and its TensorFlow frontend logs parse errors on fd 2 (abseil)
            weights = [str(path.with_suffix(".bin"))] if path.suffix.lower() == ".xml" else []
            with native_stderr_discarded():
                model = self.core.read_model(str(path), *weights)
        except Exception as exc:
            raise EdgeAttnError(f"cannot load '{path}' with openvino: {_first_line(exc)}") from exc
        declared: dict[str, list[int | None] | None] = {}
        for inp in model.inputs:
            pshape = inp.get_partial_shape()
            ranked = pshape.rank.is_static  # an unknown rank would iterate as a scalar
            declared[inp.get_any_name()] = [d.get_length() if d.is_static else None for d in pshape] if ranked else None
        new_shapes = resolve_shapes(declared, batch, shapes, str(path))
        if any(not inp.get_partial_shape().is_static for inp in model.inputs):
            try:
                model.reshape({name: ov.PartialShape(s) for name, s in new_shapes.items()})
            except Exception as exc:
                raise EdgeAttnError(
                    f"'{path}' cannot take input shapes {new_shapes}: {_first_line(exc)}"
                ) from exc
        self.model = model
        from edgeattn.profile.macs import openvino_precision

        self.precision = openvino_precision(model)
        self.input_shapes = new_shapes
        self._config = self._make_config(hint, threads, infer_precision)
        self._hint = hint
        try:
            self.compiled = self.core.compile_model(model, self.device, self._config)
        except Exception as exc:
            raise EdgeAttnError(
                f"openvino cannot compile '{path}' for {self.device}: {_first_line(exc)}"
            ) from exc
        self.request, self._inputs = self._bind(self.compiled)
        self.input_dtypes = {
            inp.get_any_name(): arr.dtype.name for inp, arr in zip(self.compiled.inputs, self._inputs, strict=True)
        }
        infer_prec = self._prop("INFERENCE_PRECISION_HINT")
        self.compute_precision = "int8" if self.precision == "int8" else _ov_precision_name(infer_prec)
        self.settings = {
            "hint": hint,
            "config": {k: str(v) for k, v in self._config.items()},
            "PERFORMANCE_HINT": str(self._prop("PERFORMANCE_HINT")),
            "NUM_STREAMS": str(self._prop("NUM_STREAMS")),
            "INFERENCE_NUM_THREADS": str(self._prop("INFERENCE_NUM_THREADS")),
            "INFERENCE_PRECISION_HINT": _ov_precision_name(infer_prec),
            "api": "sync, one infer request",
        }

    def _prop(self, name: str) -> Any:
        try:
            return self.compiled.get_property(name)
        except Exception:  # not every device reports every property
            return None

    @staticmethod
    def _make_config(hint: str, threads: int | None, infer_precision: str | None = None) -> dict[str, Any]:
        check_openvino_options(hint, infer_precision)
        hint = hint.lower()
        config: dict[str, Any] = {}
        if hint == "none":
            config["NUM_STREAMS"] = "1"  # benchmark_app's -hint none -nstreams 1
        else:
            config["PERFORMANCE_HINT"] = hint.upper()
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if infer_precision:
            # precision of the non-quantized ops; the CPU plugin's default is bf16 where the CPU has it
            config["INFERENCE_PRECISION_HINT"] = infer_precision
        return config

    def _bind(self, compiled: Any) -> tuple[Any, list[Any]]:
        request = compiled.create_infer_request()
        arrays = []
        for i, inp in enumerate(compiled.inputs):
            dtype = inp.get_element_type().to_dtype()
            arr = make_input(list(inp.get_shape()), dtype, seed=i)
            request.set_input_tensor(i, self._ov.Tensor(arr))
            arrays.append(arr)  # keep the buffers alive
        return request, arrays

    def run(self) -> None:
        self.request.infer()

    def macs(self) -> tuple[int | None, str]:
        from edgeattn.profile.macs import openvino_macs

        macs, unresolved = openvino_macs(self.model)
        note = f" ({unresolved} ops with unresolved shapes not counted)" if unresolved else ""
        return macs, "OpenVINO model ops: Convolution/GroupConvolution/MatMul with static shapes" + note

    def profile_layers(self, runs: int, end_to_end_p50_ms: float) -> LayerBreakdown:
        compiled = self.core.compile_model(self.model, self.device, {**self._config, "PERF_COUNT": True})
        request, _keep = self._bind(compiled)
        warmup = 2
        for _ in range(warmup):
            request.infer()
        # The counters are running means since compile, so they are read between chunks of runs and each
        # chunk's mean is recovered from two reads; the breakdown takes the median over chunks, so a stall
        # (which lands in one chunk) does not move it.
        chunk = max(1, runs // 5)
        acc = L.LayerAccumulator()
        done = warmup
        before = L.openvino_counter_totals(request.profiling_info)
        while done < warmup + runs:
            n = min(chunk, warmup + runs - done)
            timer = L.LayerAccumulator()
            for _ in range(n):
                timer.timed_pair(self.run, request.infer)
            after = L.openvino_counter_totals(request.profiling_info)
            L.add_openvino_counter_means(before, done, after, done + n, acc, self.device)
            acc.wall_ms.append(float(np.mean(timer.wall_ms)))
            acc.plain_ms.append(float(np.mean(timer.plain_ms)))
            before, done = after, done + n
        breakdown = acc.breakdown(
            f"openvino per-node performance counters (PERF_COUNT, exec_type = kernel); median over "
            f"{acc.runs} chunks of {chunk} runs",
            end_to_end_p50_ms,
        )
        covered = breakdown.sum_over_interleaved_e2e or breakdown.sum_over_end_to_end
        e2e_ms = breakdown.interleaved_e2e_ms or end_to_end_p50_ms
        source = breakdown.source
        if covered < 0.5 and e2e_ms < 0.1:
            source += (
                f"; the layers sum to only {covered:.2f} of the run: under 0.1 ms, most of OpenVINO's counters "
                "(whole microseconds) read 0"
            )
        return breakdown.model_copy(update={"runs": runs, "source": source})

    def close(self) -> None:
        self.request = None
        self.compiled = None


def _ov_precision_name(value: Any) -> str:
    """OpenVINO element type (``<Type: 'bfloat16'>``, ``f32`` ...) as bf16/fp16/fp32."""
    text = str(value).lower()
    if "bf16" in text or "bfloat16" in text:
        return "bf16"
    if "f16" in text or "float16" in text:
        return "fp16"
    return "fp32"
