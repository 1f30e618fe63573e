"""ONNX Runtime runner (``.onnx``): :class:`OrtRunner`, its profiler's calibration
(:func:`ort_profiler_inside_share`) and the per-node MACs its kernel probe reads (:func:`onnx_node_macs`).

The shared interface and helpers are in :mod:`edgeattn.profile.runners`.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError
from edgeattn.profile import layers as L
from edgeattn.profile.runners import _ORT_DEVICES, Runner, _first_line, make_input, resolve_shapes, time_call
from edgeattn.profile.schema import LayerBreakdown

# one-input ops ONNX Runtime fuses into the convolution or GEMM before them (it then names the fused kernel after
# their output tensor, e.g. "/1/Relu_output_0_nchwc")
_FUSABLE_ACTIVATIONS = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "LeakyRelu", "Tanh", "HardSwish", "Gelu"}


def onnx_node_macs(model: Any, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """The graph's MACs per MAC-carrying node of an ONNX model at ``input_shapes``, keyed by node name and by output
    tensor name, and by the output of a one-input activation applied to such a node's output. Nodes whose shapes
    ONNX's inference leaves unknown are left out."""
    import onnx

    from edgeattn.profile.macs import node_macs

    model = onnx.ModelProto.FromString(model.SerializeToString())  # never edit the caller's graph
    for inp in model.graph.input:
        if inp.name in input_shapes:
            for dim, value in zip(inp.type.tensor_type.shape.dim, input_shapes[inp.name], strict=False):
                dim.ClearField("dim_param")
                dim.dim_value = int(value)
    g = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True).graph
    table: dict[str, int] = {}
    for node, macs in node_macs(g)[0]:
        for key in (node.name, *node.output):
            if key:
                table[key] = macs
    for node in g.node:  # in graph order: an activation after a fused one after a counted node
        if node.op_type in _FUSABLE_ACTIVATIONS and node.input and node.input[0] in table:
            table[node.output[0]] = table[node.input[0]]
    return table


class OrtRunner(Runner):
    """ONNX Runtime InferenceSession, sequential execution, ``threads`` intra-op threads."""

    runtime = "onnxruntime"

    def __init__(
        self,
        path: Path,
        device: str,
        threads: int | None,
        batch: int | None,
        shapes: Mapping[str, Sequence[int]] | None,
        spin: bool = True,
    ) -> None:
        super().__init__(path)
        import onnx
        import onnxruntime as ort

        self._ort = ort
        self.version = ort.__version__
        self.device = device.upper()
        available = ort.get_available_providers()
        provider = _ORT_DEVICES.get(self.device)
        if provider is None or provider not in available:
            have = sorted({d for d, p in _ORT_DEVICES.items() if p in available})
            raise EdgeAttnError(
                f"--device {device} is not available in onnxruntime here; it has: {', '.join(have)} "
                f"(providers: {', '.join(available)})"
            )
        self._provider = provider
        self._threads = threads
        self._spin = spin
        self._layer_trace: tuple[tuple[Any, ...], list[dict[str, Any]]] | None = None  # (key, events)
        try:
            self._model = onnx.load(str(path), load_external_data=False)
            self.session = ort.InferenceSession(str(path), self._options(), providers=[provider])
        except Exception as exc:  # onnx/ORT raise many types for corrupt files
            raise EdgeAttnError(f"cannot load '{path}' with onnxruntime: {_first_line(exc)}") from exc
        from edgeattn.profile.macs import onnx_precision

        self.precision = onnx_precision(self._model)
        self.compute_precision = self.precision
        self.feeds: dict[str, np.ndarray] = {}
        unranked = {  # ORT reports an input of unknown rank as a scalar (shape [])
            vi.name for vi in self._model.graph.input if not vi.type.tensor_type.HasField("shape")
        }
        declared = {
            inp.name: [d if isinstance(d, int) and d > 0 else None for d in inp.shape]
            for inp in self.session.get_inputs()
        }
        run_shapes = resolve_shapes(
            {name: None if name in unranked else dims for name, dims in declared.items()}, batch, shapes, str(path)
        )
        for i, inp in enumerate(self.session.get_inputs()):
            shape = run_shapes[inp.name]
            dtype = _ORT_TYPES.get(inp.type)
            if dtype is None:
                raise EdgeAttnError(
                    f"input '{inp.name}' of '{path}' has type {inp.type}, which the profiler cannot feed"
                )
            self.input_shapes[inp.name] = shape
            self.feeds[inp.name] = make_input(shape, dtype, seed=i)
            self.input_dtypes[inp.name] = self.feeds[inp.name].dtype.name
        self.settings = {
            "provider": provider,
            "intra_op_num_threads": threads or "default (physical cores)",
            "execution_mode": "sequential",
            "graph_optimization_level": "ORT_ENABLE_ALL",
            "allow_spinning": spin,
        }

    def _options(self, profile_prefix: str | None = None, spin: bool | None = None) -> Any:
        so = self._ort.SessionOptions()
        if self._threads:
            so.intra_op_num_threads = self._threads
        so.inter_op_num_threads = 1
        so.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 4  # a failed run is reported in one line (EdgeAttnError), not also by ORT's log
        if not (self._spin if spin is None else spin):
            # idle worker threads would otherwise spin and steal cores from the next artifact
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        return so

    def run(self) -> None:
        try:
            self.session.run(None, self.feeds)
        except self._ort.capi.onnxruntime_pybind11_state.Fail as exc:
            raise EdgeAttnError(
                f"'{self.path}' failed to run on inputs {self.input_shapes}: {_first_line(exc)}"
            ) from exc
        except self._ort.capi.onnxruntime_pybind11_state.InvalidArgument as exc:
            raise EdgeAttnError(
                f"'{self.path}' cannot take inputs {self.input_shapes}: {_first_line(exc)}"
            ) from exc

    def macs(self) -> tuple[int | None, str]:
        from edgeattn.profile.macs import onnx_macs

        macs, unresolved = onnx_macs(self._model, self.input_shapes)
        note = f" ({unresolved} ops with unresolved shapes not counted)" if unresolved else ""
        return macs, "ONNX graph: Conv/Gemm/MatMul (+integer/QLinear forms) after shape inference" + note

    def profile_layers(self, runs: int, end_to_end_p50_ms: float) -> LayerBreakdown:
        warm = 2
        # two sessions take turns below (plain, profiled): neither may spin-wait on the cores the other needs
        options = functools.partial(self._options, spin=False)
        inside_share = ort_profiler_inside_share(self._ort, options, self._provider)
        with tempfile.TemporaryDirectory(prefix="edgeattn-ortprof-") as tmp:
            providers = [self._provider]
            sess = self._ort.InferenceSession(str(self.path), options(str(Path(tmp) / "ort")), providers=providers)
            plain = self._ort.InferenceSession(str(self.path), options(), providers=providers)
            raw = L.LayerAccumulator()
            for i in range(warm + runs):
                if i < warm:
                    sess.run(None, self.feeds)
                    plain.run(None, self.feeds)
                else:
                    raw.timed_pair(lambda: plain.run(None, self.feeds), lambda: sess.run(None, self.feeds))
            trace = L.load_ort_trace(sess.end_profiling())  # parsed once, read three times below
            # the peak's kernel probe (executed_macs) reads this trace instead of tracing another session
            self._layer_trace = (self._trace_key(sess.get_session_options(), sess.get_providers()), trace)
            L.read_ort_trace(trace, raw, skip_runs=warm)
            # The profiler's cost on this model, measured side by side: profiled minus plain inference time.
            # The calibrated share of it recorded inside node events is taken off the events, evenly.
            events_per_run = len(L.node_event_durations_us(trace)) / (warm + runs)
            added_ms = max(0.0, float(np.median(raw.wall_ms)) - float(np.median(raw.plain_ms)))
            per_event_ms = inside_share * added_ms / events_per_run if events_per_run else 0.0
            acc = L.LayerAccumulator(wall_ms=list(raw.wall_ms), plain_ms=list(raw.plain_ms))
            L.read_ort_trace(trace, acc, skip_runs=warm, event_overhead_ms=per_event_ms)
        source = "onnxruntime profiler (node *_kernel_time events, less the profiler's measured in-event cost)"
        breakdown = acc.breakdown(source, end_to_end_p50_ms)
        return breakdown.model_copy(
            update={
                "instrumentation_ms_per_layer": per_event_ms,
                "uncorrected_total_ms": raw.breakdown(source, end_to_end_p50_ms).total_ms,
            }
        )

    def _trace_key(self, options: Any, providers: Sequence[str]) -> tuple[Any, ...]:
        """What decides which kernels a traced session runs: graph file, optimisation level, threads, providers,
        inputs. Sessions with equal keys run the same kernels in the same precisions."""
        feeds = tuple(sorted((name, a.shape, a.dtype.str) for name, a in self.feeds.items()))
        level = int(options.graph_optimization_level)
        return str(Path(self.path).resolve()), level, options.intra_op_num_threads, tuple(providers), feeds

    def executed_macs(self, graph_macs: int | None = None) -> tuple[dict[str, int], str] | None:
        """From ONNX Runtime's profiling trace: the ``--per-layer`` one when it ran the same graph with the same
        optimisation level, threads, providers and inputs, else a separate session's (one warm-up, one inference).

        ONNX Runtime fuses DequantizeLinear -> Conv/Gemm/MatMul -> QuantizeLinear into QLinear kernels only where
        its selectors match; elsewhere the MACs run in fp32 between the (de)quantize nodes, so a Q/DQ graph's
        precision does not say what ran. fp32 graphs are not probed (their MACs run in fp32). None when the
        trace could not be read. ``self.peak_trace`` says which trace was read.
        """
        self.peak_trace = ""
        if self.precision == "fp32":
            return None
        with tempfile.TemporaryDirectory(prefix="edgeattn-ortmacs-") as tmp:
            try:
                options = self._options(str(Path(tmp) / "macs"), spin=False)
                key = self._trace_key(options, self.session.get_providers())
                if self._layer_trace is not None and self._layer_trace[0] == key:
                    self.peak_trace = "per-layer"
                    return L.ort_macs_by_precision(self._layer_trace[1], graph_macs, self._node_macs())
                sess = self._ort.InferenceSession(str(self.path), options, providers=[self._provider])
                for _ in range(2):
                    sess.run(None, self.feeds)
                self.peak_trace = "probe"
                return L.ort_macs_by_precision(sess.end_profiling(), graph_macs, self._node_macs())
            except Exception:  # the probe is only for the peak: without it the peak keeps the graph's precision
                self.peak_trace = ""
                return None

    def _node_macs(self) -> dict[str, int]:
        """:func:`onnx_node_macs` of this graph at the bound input shapes ({} where ONNX cannot infer them)."""
        try:
            return onnx_node_macs(self._model, self.input_shapes)
        except Exception:  # noqa: BLE001 - without it the kernels' own shapes are counted, capped at the graph's
            return {}

    def close(self) -> None:
        self.session = None
        self._layer_trace = None


def ort_profiler_inside_share(ort: Any, options: Any, provider: str, nodes: int = 128, runs: int = 60) -> float:
    """The share of ONNX Runtime's profiler cost that lands inside its node events, measured here.

    The profiler makes every inference slower, and part of that cost is recorded inside the node events
    themselves: a one-element Add that takes 0.2-0.4 us without profiling is recorded as 1-3 us (events
    are whole microseconds). On a chain of ``nodes`` such Adds (compute ~0, so nearly all of the profiled
    time is the profiler) this measures, with the session's own settings:
    ``(mean event duration - Add time per node) / (profiled time per node - Add time per node)``,
    i.e. in-event cost over total added cost (about 0.4 here, at 1 and 2 threads).
    """
    from onnx import TensorProto, helper

    chain = [helper.make_node("Add", ["x" if i == 0 else f"t{i - 1}", "one"], [f"t{i}"]) for i in range(nodes)]
    graph = helper.make_graph(
        chain,
        "event_overhead",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info(f"t{nodes - 1}", TensorProto.FLOAT, [1])],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    feeds = {"x": np.zeros(1, np.float32)}

    def session(prefix: str | None) -> Any:
        so = options(prefix)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every Add
        return ort.InferenceSession(model, so, providers=[provider])

    def per_node_us(sess: Any) -> float:
        return float(np.median([time_call(lambda: sess.run(None, feeds)) for _ in range(runs)])) * 1e3 / nodes

    plain = session(None)
    for _ in range(10):
        plain.run(None, feeds)
    plain_us = per_node_us(plain)
    with tempfile.TemporaryDirectory(prefix="edgeattn-ortcal-") as tmp:
        profiled = session(str(Path(tmp) / "cal"))
        profiled_us = per_node_us(profiled)
        durations = L.node_event_durations_us(profiled.end_profiling())
    # events are whole microseconds: a median would snap to 1 or 2 us, so take a trimmed mean (stalls cut off)
    event_us = float(np.sort(np.asarray(durations))[: max(1, int(len(durations) * 0.9))].mean())
    added = profiled_us - plain_us
    return float(np.clip((event_us - plain_us) / added, 0.0, 1.0)) if added > 0 else 0.0


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
