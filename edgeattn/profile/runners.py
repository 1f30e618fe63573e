"""One runner per runtime: load an artifact, feed it fixed random inputs, run one inference at a time.

Runners share one small interface (:class:`Runner`) used by the timing loop in
:mod:`edgeattn.profile.measure`: ``run()`` does exactly one synchronous inference with inputs bound once at
load time, so the loop times the runtime and not input preparation. ``profile_layers()`` runs the
runtime's own per-layer profiler on a separate session/compiled model, so the timed runs are never slowed
by profiling instrumentation.

Runtimes: ONNX Runtime (``.onnx``), OpenVINO (``.xml`` IR, or ``.onnx`` with ``--runtime openvino``),
TensorRT (``.engine``/``.plan``, when ``tensorrt`` and a CUDA torch import), Core ML
(``.mlpackage``/``.mlmodel``, predictions on macOS only).
"""

from __future__ import annotations

import functools
import importlib.util
import platform
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError, MissingBackendError
from edgeattn.hostinfo import MAX_THREADS
from edgeattn.openvino_core import openvino_core
from edgeattn.profile import layers as L
from edgeattn.profile.schema import LayerBreakdown

RUNTIMES = ("onnxruntime", "openvino", "tensorrt", "coreml")
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


_EXTENSIONS = {
    ".onnx": "onnxruntime",
    ".xml": "openvino",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
    ".trt": "tensorrt",
    ".mlpackage": "coreml",
    ".mlmodel": "coreml",
}
_PACKAGES = {
    "onnxruntime": ("onnxruntime", "pip install onnxruntime"),
    "openvino": ("openvino", "pip install openvino"),
    "tensorrt": ("tensorrt", "install TensorRT for this GPU (pip install tensorrt, or JetPack on Jetson)"),
    "coreml": ("coremltools", "pip install coremltools (predictions need macOS)"),
}
# ONNX Runtime devices (as the user names them) -> execution provider.
_ORT_DEVICES = {
    "CPU": "CPUExecutionProvider",
    "GPU": "CUDAExecutionProvider",
    "CUDA": "CUDAExecutionProvider",
    "TENSORRT": "TensorrtExecutionProvider",
    "DML": "DmlExecutionProvider",
    "OPENVINO": "OpenVINOExecutionProvider",
    "COREML": "CoreMLExecutionProvider",
    "ANE": "CoreMLExecutionProvider",
    "ROCM": "ROCMExecutionProvider",
    "NPU": "QNNExecutionProvider",
}
_COREML_UNITS = {
    "ALL": "ALL",
    "CPU": "CPU_ONLY",
    "GPU": "CPU_AND_GPU",
    "NPU": "CPU_AND_NE",
    "ANE": "CPU_AND_NE",
}


def runtime_for(path: str | Path, runtime: str = "auto") -> str:
    """The runtime that runs ``path``: ``runtime`` itself, or picked by the file extension for ``auto``."""
    if runtime != "auto":
        if runtime not in RUNTIMES:
            raise EdgeAttnError(
                f"--runtime {runtime!r} is not known; choose one of auto, {', '.join(RUNTIMES)}"
            )
        return runtime
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise EdgeAttnError(
            f"cannot tell the runtime of '{path}' from its extension; expected one of "
            f"{', '.join(sorted(_EXTENSIONS))} or pass --runtime"
        )
    return _EXTENSIONS[suffix]


def require_runtime(runtime: str) -> None:
    """Raise :class:`MissingBackendError` (naming what to install) if ``runtime`` cannot be imported."""
    module, how = _PACKAGES[runtime]
    if importlib.util.find_spec(module) is None:
        raise MissingBackendError(f"runtime '{runtime}' is not installed: {how}")


def _first_line(exc: BaseException) -> str:
    """The first informative line of ``exc``'s message (at most 300 characters).

    OpenVINO's messages open with where they were raised (``Exception from src/...cpp:84:``, ``Check '...'
    failed at src/...``); those lines are skipped for the first one that says what is wrong. A line ending in
    ``:`` announces what follows (``FrontEnd API failed with OpConversionFailure:``, then ``-- No conversion rule
    found for operations: my.domain.Foo``): the lines after it are joined to it.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    told = [line for line in lines if not line.startswith("Exception from ") and " failed at " not in line]
    text = told or lines
    if not text:
        return type(exc).__name__
    if text[0].endswith(":") and len(text) > 1:
        return " ".join(line.removeprefix("-- ") for line in text)[:300]
    return text[0][:300]


def resolve_shape(
    name: str,
    dims: Sequence[int | None] | None,
    batch: int | None,
    override: Sequence[int] | None,
    artifact: str,
) -> list[int]:
    """Concrete input shape: ``override`` if given, else ``dims`` with the batch (first) dim set to ``batch``.

    A static dimension that differs from what is asked is an error naming the artifact and the input.
    Dynamic (None) dims other than the batch must be given with ``--shape``. ``dims=None`` is an input of
    unknown rank: it takes an ``override`` of any rank and has no shape without one.
    """
    if dims is None:
        if override is None:
            raise EdgeAttnError(
                f"input '{name}' of '{artifact}' has no shape; give it with --shape {name}=D0xD1x..."
            )
        return [int(d) for d in override]
    if override is not None:
        override = [int(d) for d in override]
        if len(override) != len(dims) or any(
            d is not None and d != o for d, o in zip(dims, override, strict=True)
        ):
            raise EdgeAttnError(
                f"'{artifact}' cannot take input '{name}' of shape {override}: it takes {_fmt_dims(dims)}"
            )
        return override
    shape: list[int] = []
    for i, d in enumerate(dims):
        if i == 0 and batch is not None:
            if d is not None and d != batch:
                raise EdgeAttnError(
                    f"'{artifact}' cannot take --batch {batch}: input '{name}' has a fixed batch of {d} "
                    f"(shape {_fmt_dims(dims)}); export it with a dynamic batch"
                )
            shape.append(batch)
        elif d is None:
            if i == 0:
                shape.append(1)
            else:
                raise EdgeAttnError(
                    f"input '{name}' of '{artifact}' has a dynamic dimension {i} ({_fmt_dims(dims)}); "
                    f"give its shape with --shape {name}=D0xD1x..."
                )
        else:
            shape.append(int(d))
    return shape


def resolve_shapes(
    inputs: Mapping[str, Sequence[int | None] | None],
    batch: int | None,
    shapes: Mapping[str, Sequence[int]] | None,
    artifact: str,
) -> dict[str, list[int]]:
    """:func:`resolve_shape` of every input (name -> dims, None for an unknown rank).

    One inference has one batch: without ``batch``, the leading dimension a ``--shape`` gives a dynamic-batch input
    is the batch of the other dynamic-batch inputs too. ``--shape`` giving different batches is refused unless every
    dynamic-batch input has its own ``--shape``.
    """
    shapes = shapes or {}
    if batch is None:
        dynamic = [name for name, dims in inputs.items() if dims and dims[0] is None]
        given = {name: int(shapes[name][0]) for name in dynamic if shapes.get(name)}
        if len(set(given.values())) == 1:
            batch = next(iter(given.values()))
        elif given and len(given) < len(dynamic):
            told = ", ".join(f"{name} {b}" for name, b in given.items())
            raise EdgeAttnError(
                f"--shape gives '{artifact}' different batches ({told}) and its other dynamic-batch inputs need one; "
                "give --batch N, or every input's shape with --shape"
            )
    return {name: resolve_shape(name, dims, batch, shapes.get(name), artifact) for name, dims in inputs.items()}


def _fmt_dims(dims: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def make_input(shape: Sequence[int], dtype: np.dtype, seed: int) -> np.ndarray:
    """Fixed random input: standard normal for floats, 0/1 for integers (valid token ids and indices)."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return np.ones(shape, dtype=dtype)
    return rng.integers(0, 2, size=shape).astype(dtype)


class Runner:
    """One loaded artifact ready to run. Subclasses set the attributes below in ``__init__``."""

    runtime: str = ""
    version: str = ""
    device: str = "CPU"
    precision: str = "fp32"
    compute_precision: str = "fp32"
    peak_trace: str = ""  # which trace executed_macs() read: "per-layer" (reused), "probe", or "" (none)
    input_shapes: dict[str, list[int]]
    input_dtypes: dict[str, str]  # numpy dtype names of the bound inputs (e.g. int64 token ids, float32 images)
    settings: dict[str, Any]

    def __init__(self, path: Path) -> None:
        self.path = path
        self.input_shapes = {}
        self.input_dtypes = {}
        self.settings = {}

    def run(self) -> None:
        """One synchronous inference on the bound inputs."""
        raise NotImplementedError

    def macs(self) -> tuple[int | None, str]:
        """MACs of one inference (None if they cannot be counted) and how they were counted."""
        return None, "not countable for this artifact"

    def profile_layers(self, runs: int, end_to_end_p50_ms: float) -> LayerBreakdown:
        """Run the runtime's per-layer profiler for ``runs`` inferences and return the breakdown."""
        raise EdgeAttnError(f"per-layer profiling is not available for runtime '{self.runtime}'")

    def executed_macs(self, graph_macs: int | None = None) -> tuple[dict[str, int], str] | None:
        """MACs of one inference per precision the runtime's kernels actually ran in, and a note on how they were
        counted (``graph_macs``: the graph's count); None where the runtime does not tell (the peak then uses
        ``compute_precision``)."""
        return None

    def close(self) -> None:
        """Release the runtime objects."""


def _sibling_onnx_macs(path: Path, shapes: Mapping[str, Sequence[int]]) -> tuple[int | None, str]:
    onnx_path = path.with_suffix(".onnx")
    if not onnx_path.exists():
        return None, f"no ONNX beside {path.name} to count MACs from"
    import onnx

    from edgeattn.profile.macs import onnx_macs

    macs, unresolved = onnx_macs(onnx.load(str(onnx_path), load_external_data=False), shapes)
    note = f" ({unresolved} ops with unresolved shapes not counted)" if unresolved else ""
    return macs, f"ONNX graph beside the artifact ({onnx_path.name}){note}"


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
            # an IR is read with its weights named: OpenVINO then tries no other frontend on a broken .xml
            # (its TensorFlow frontend would print parse errors on stderr before the one-line error)
            weights = [str(path.with_suffix(".bin"))] if path.suffix.lower() == ".xml" else []
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


def check_artifact(path: str | Path, runtime: str = "auto") -> str:
    """The runtime that will load ``path``; an :class:`EdgeAttnError` if the file is missing, is a folder (other
    than a Core ML package), has an extension no runtime claims, or needs a runtime that is not installed."""
    path = Path(path)
    if not path.exists():
        if not path.suffix and len(path.parts) == 1 and _is_model_name(str(path)):
            raise EdgeAttnError(f"'{path}' is a model name, not an artifact; {_export_first(path)}")
        raise EdgeAttnError(f"artifact not found: {path}")
    if path.suffix.lower() in _CHECKPOINTS:
        # no runtime reads these: ORT fails on the protobuf, OpenVINO's frontends print pages trying
        raise EdgeAttnError(f"'{path}' is a PyTorch checkpoint, not an exported artifact; {_export_first(path)}")
    if path.is_dir() and path.suffix.lower() != ".mlpackage":
        raise EdgeAttnError(f"artifact '{path}' is a directory, not a model file")
    rt = runtime_for(path, runtime)
    require_runtime(rt)
    return rt


_CHECKPOINTS = (".pt", ".pth")


def _export_first(path: Path) -> str:
    return f"export it first: edgeattn export {path} --target onnx -o DIR"


def _is_model_name(name: str) -> bool:
    """Whether ``name`` is a registered model (imports the model registry, and torch: only on the error path)."""
    try:
        from edgeattn.models import list_models

        return name in list_models()
    except Exception:  # noqa: BLE001 - a broken torch install must not hide the "not found"
        return False


def check_batch_and_threads(batch: int | None, threads: int | None) -> None:
    """Raise :class:`EdgeAttnError` if ``batch`` is given and below 1, or ``threads`` outside 1..``MAX_THREADS``."""
    if batch is not None and batch < 1:
        raise EdgeAttnError(f"--batch must be >= 1, got {batch}")
    if threads is not None and threads < 1:
        raise EdgeAttnError(f"--threads must be >= 1, got {threads}")
    if threads is not None and threads > MAX_THREADS:
        raise EdgeAttnError(f"--threads must be <= {MAX_THREADS}, got {threads}")


def open_runner(
    path: str | Path,
    runtime: str = "auto",
    device: str | None = None,
    threads: int | None = None,
    batch: int | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    hint: str = "latency",
    ort_spinning: bool = True,
    infer_precision: str | None = None,
) -> Runner:
    """Load ``path`` in its runtime; every user-caused problem becomes one :class:`EdgeAttnError`.

    ``ort_spinning=False`` stops ONNX Runtime's idle threads from spin-waiting (used when several
    artifacts are interleaved, where spinning threads would steal cores from the others).
    """
    path = Path(path)
    rt = check_artifact(path, runtime)
    check_batch_and_threads(batch, threads)
    if rt == "onnxruntime":
        return OrtRunner(path, device or "CPU", threads, batch, shapes, spin=ort_spinning)
    if rt == "openvino":
        return OpenVINORunner(path, device or "CPU", threads, batch, shapes, hint, infer_precision)
    if rt == "tensorrt":
        return TensorRTRunner(path, device or "GPU", batch, shapes)
    return CoreMLRunner(path, device or "ALL", batch, shapes)


def list_devices() -> list[dict[str, Any]]:
    """Runtimes and their devices on this machine: ``[{runtime, version, installed, devices, note}]``."""
    rows: list[dict[str, Any]] = []
    for rt in RUNTIMES:
        module, how = _PACKAGES[rt]
        row: dict[str, Any] = {"runtime": rt, "version": None, "installed": False, "devices": [], "note": ""}
        if importlib.util.find_spec(module) is None:
            row["note"] = how
            rows.append(row)
            continue
        row["installed"] = True
        try:
            if rt == "onnxruntime":
                import onnxruntime as ort

                row["version"] = ort.__version__
                providers = ort.get_available_providers()
                row["devices"] = sorted({d for d, p in _ORT_DEVICES.items() if p in providers})
                row["note"] = "providers: " + ", ".join(providers)
            elif rt == "openvino":
                import openvino as ov

                core = openvino_core()
                row["version"] = ov.__version__.split("-")[0]
                row["devices"] = list(core.available_devices)
                row["note"] = "; ".join(
                    f"{d}: {core.get_property(d, 'FULL_DEVICE_NAME')}" for d in core.available_devices
                )
            elif rt == "tensorrt":
                import tensorrt as trt
                import torch

                row["version"] = trt.__version__
                row["devices"] = [f"GPU:{i}" for i in range(torch.cuda.device_count())]
                row["note"] = "" if row["devices"] else "no CUDA GPU visible"
            else:
                from importlib import metadata

                # not imported: on Linux coremltools prints a page of warnings about its missing native parts
                row["version"] = metadata.version("coremltools")
                if platform.system() == "Darwin":
                    row["devices"] = list(_COREML_UNITS)
                else:
                    row["note"] = "converts only; predictions need macOS"
        except Exception as exc:  # a broken install must not hide the other runtimes
            row["note"] = f"import failed: {_first_line(exc)}"
        rows.append(row)
    return rows


def time_call(fn: Any) -> float:
    """Wall time of one call of ``fn()`` in milliseconds."""
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e6
