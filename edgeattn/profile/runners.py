"""One runner per runtime: load an artifact, feed it fixed random inputs, run one inference at a time.

Runners share one small interface (:class:`Runner`) used by the timing loop in
:mod:`edgeattn.profile.measure`: ``run()`` does exactly one synchronous inference with inputs bound once at
load time, so the loop times the runtime and not input preparation. ``profile_layers()`` runs the
runtime's own per-layer profiler on a separate session/compiled model, so the timed runs are never slowed
by profiling instrumentation.

This module holds that interface, the helpers the runtimes share (runtime by extension, input shapes and
inputs, artifact and argument checks), :func:`open_runner`, :func:`list_devices` and :func:`time_call`. Each
runtime's runner is in its own module (and importable from here too):
ONNX Runtime (``.onnx``) in :mod:`edgeattn.profile.ort_runner`; OpenVINO (``.xml`` IR, or ``.onnx`` with
``--runtime openvino``) in :mod:`edgeattn.profile.openvino_runner`; TensorRT (``.engine``/``.plan``, when
``tensorrt`` and a CUDA torch import) in :mod:`edgeattn.profile.tensorrt_runner`; Core ML
(``.mlpackage``/``.mlmodel``, predictions on macOS only) in :mod:`edgeattn.profile.coreml_runner`.
"""

from __future__ import annotations

import importlib.util
import platform
import time
from collections.abc import Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError, MissingBackendError
from edgeattn.hostinfo import MAX_THREADS
from edgeattn.openvino_core import openvino_core
from edgeattn.profile.schema import LayerBreakdown

RUNTIMES = ("onnxruntime", "openvino", "tensorrt", "coreml")

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
    dynamic = [name for name, dims in inputs.items() if dims and dims[0] is None]
    if batch is not None:  # throughput and MACs are per --batch: a --shape that runs another batch would skew both
        for name in dynamic:
            if shapes.get(name) and int(shapes[name][0]) != batch:
                raise EdgeAttnError(
                    f"--batch {batch} and --shape {name}={'x'.join(map(str, shapes[name]))} give '{artifact}' two "
                    "batches; drop one, or make them agree"
                )
    if batch is None:
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
    return f"export it first: edgeattn export {path} --target onnx --profile host-cpu -o DIR"


def _is_model_name(name: str) -> bool:
    """Whether ``name`` is a registered model (imports the model registry, and torch: only on the error path)."""
    try:
        from edgeattn.models import list_models

        return name in list_models()
    except Exception:  # noqa: BLE001 - a broken torch install must not hide the "not found"
        return False


def check_batch_and_threads(batch: int | None, threads: int | None) -> None:
    """Raise :class:`EdgeAttnError` if ``batch`` is given and not an integer >= 1, or ``threads`` not an integer in
    1..``MAX_THREADS``."""
    for flag, value in (("--batch", batch), ("--threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, Integral)):
            raise EdgeAttnError(f"{flag} must be an integer, got {value!r}")
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


# The runtime modules import the interface above from this module, so they are imported last: by now every name
# they take from here is bound. Re-exported for open_runner and for `from edgeattn.profile.runners import ...`.
from edgeattn.profile.coreml_runner import CoreMLRunner as CoreMLRunner  # noqa: E402
from edgeattn.profile.openvino_runner import INFER_PRECISIONS as INFER_PRECISIONS  # noqa: E402
from edgeattn.profile.openvino_runner import OPENVINO_HINTS as OPENVINO_HINTS  # noqa: E402
from edgeattn.profile.openvino_runner import OpenVINORunner as OpenVINORunner  # noqa: E402
from edgeattn.profile.openvino_runner import _ov_precision_name as _ov_precision_name  # noqa: E402
from edgeattn.profile.openvino_runner import check_openvino_options as check_openvino_options  # noqa: E402
from edgeattn.profile.ort_runner import _FUSABLE_ACTIVATIONS as _FUSABLE_ACTIVATIONS  # noqa: E402
from edgeattn.profile.ort_runner import _ORT_TYPES as _ORT_TYPES  # noqa: E402
from edgeattn.profile.ort_runner import OrtRunner as OrtRunner  # noqa: E402
from edgeattn.profile.ort_runner import onnx_node_macs as onnx_node_macs  # noqa: E402
from edgeattn.profile.ort_runner import ort_profiler_inside_share as ort_profiler_inside_share  # noqa: E402
from edgeattn.profile.tensorrt_runner import TensorRTRunner as TensorRTRunner  # noqa: E402
