"""OpenVINO target: IR (xml/bin) through OpenVINO's own converter, a CPU runner, and an int8-kernel check.

* FP32/FP16: OpenVINO's ONNX frontend (``Core.read_model``) on the clean ONNX, saved with
  ``compress_to_fp16`` as the
  profile says (note ``openvino.save_model`` compresses by default; we always pass it explicitly).
* INT8: the same converter on the Q/DQ ONNX whose weights are int8 initializers (see
  :mod:`edgeattn.export.qdq`); OpenVINO's low-precision transformations then run Conv/MatMul in I8
  kernels. :func:`kernel_report` reads the CPU plugin's per-node counters to prove it.
* ``isa``: the CPU plugin's oneDNN kernels honour ``ONEDNN_MAX_CPU_ISA`` read when the plugin loads,
  so a runner with ``isa="AVX2"`` works in a child process started with that variable. That lets a
  VNNI machine reproduce what an AVX2-without-VNNI CPU computes (16-bit pair accumulation that
  saturates with full 8-bit weights, as measured on an AVX2 host).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError, MissingBackendError
from edgeattn.openvino_core import openvino_core

__all__ = [
    "ONEDNN_ISAS",
    "OpenVINORunner",
    "convert_to_ir",
    "for_openvino",
    "kernel_report",
    "normalize_isa",
    "require_openvino",
]

# The values oneDNN's ONEDNN_MAX_CPU_ISA accepts (oneDNN's "CPU Dispatcher Control" guide; the AVX512_CORE_FP16/
# _AMX/_AMX_FP16 names are aliases of the AVX10_1_512 ones; AVX10_2_* are the preview ISAs that OpenVINO
# 2026.4's bundled oneDNN also knows). oneDNN ignores any other value without a word, which would make an
# ISA-capped parity check a silent run at the native ISA, so a name outside this set is refused.
ONEDNN_ISAS = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_FP16",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX512_CORE_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
    "DEFAULT",
)

# CPU-plugin node types that do the multiply-accumulate work.
_COMPUTE_TYPES = {
    "Convolution",
    "GroupConvolution",
    "Deconvolution",
    "MatMul",
    "FullyConnected",
    "FullyConnectedQuantized",
    "FullyConnectedQuantizedLegacy",
    "FullyConnectedCompressed",
}


def normalize_isa(isa: str) -> str:
    """``isa`` as oneDNN spells it (upper case; any case accepted), or EdgeAttnError (exit 2) if no such ISA."""
    name = str(isa).strip().upper()
    if name not in ONEDNN_ISAS:
        raise EdgeAttnError(f"--cpu-isa '{isa}' is not a oneDNN ISA; choose one of {', '.join(ONEDNN_ISAS)}")
    return name


def _openvino_error(exc: BaseException) -> EdgeAttnError:
    """An OpenVINO failure as one line with exit code 5 (OpenVINO's own text leads with source locations)."""
    from edgeattn.export.report import backend_error

    return backend_error("openvino", exc)


def require_openvino():
    """Import openvino or raise MissingBackendError naming the pip extra."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise MissingBackendError(
            "the OpenVINO target needs the 'openvino' package, edgeattn's 'openvino' extra: "
            "pip install openvino"
        ) from exc
    return ov


def for_openvino(onnx_model: Any) -> tuple[Any, dict[str, int]]:
    """A copy of ``onnx_model`` with three OpenVINO int8 defects worked around, and how many rewrites of each.

    OpenVINO 2026.4's CPU plugin computes an int8 Conv whose quantized input is a Concat wrongly
    (:func:`edgeattn.export.qdq.split_concat_conv`, ``"concat_split"``), an average pool of a quantized
    input wrongly when a Clip follows it (:func:`edgeattn.export.qdq.pool_to_depthwise_conv`, ``"pool_as_conv"``),
    and a residual Add wrongly when the int8 Conv that made its skip input has no bias
    (:func:`edgeattn.export.qdq.add_conv_bias`, ``"conv_bias"``, a 1e-30 bias). All three compute the same
    integers.
    """
    import onnx
    from edgeattn.export.qdq import add_conv_bias, pool_to_depthwise_conv, split_concat_conv

    copy = onnx.ModelProto()
    copy.CopyFrom(onnx_model)
    counts = {"concat_split": split_concat_conv(copy), "pool_as_conv": pool_to_depthwise_conv(copy)}
    counts["conv_bias"] = add_conv_bias(copy)  # after the rewrites that make Convs of their own
    return copy, counts


def convert_to_ir(onnx_path: str | Path, xml_path: str | Path, *, compress_to_fp16: bool = False) -> Path:
    """Convert an ONNX file to OpenVINO IR with OpenVINO's ONNX frontend; writes ``xml_path`` + ``.bin``.

    ``Core.read_model`` (the ONNX frontend) is used rather than ``openvino.convert_model``: on this
    openvino (2026.4) ``convert_model``'s offline passes rewrite some int8-weight DequantizeLinear chains
    (a ``Subtract`` of the zero point stays in), and the CPU plugin then runs those Conv/MatMul layers in
    f32 kernels (measured: the stem conv of a W8A8 test net ran ``brgconv_avx512_f32`` instead of
    ``brgconv_avx512_I8``). The frontend's graph keeps the canonical Convert->Multiply decompression that
    the low-precision transformations recognise.
    """
    ov = require_openvino()
    try:
        model = openvino_core().read_model(str(onnx_path))
        ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
    except Exception as exc:  # e.g. an ONNX op the frontend has no conversion rule for
        raise _openvino_error(exc) from exc
    return Path(xml_path)


def _config(threads: int, inference_precision: str, hint: str, profiling: bool) -> dict[str, Any]:
    cfg: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads}
    if inference_precision != "auto":
        cfg["INFERENCE_PRECISION_HINT"] = inference_precision
    if hint != "none":
        cfg["PERFORMANCE_HINT"] = hint.upper()
    if profiling:
        cfg["PERF_COUNT"] = True
    return cfg


class OpenVINORunner:
    """Runs an OpenVINO model (IR path, ONNX path or an in-memory ONNX proto) on the CPU plugin.

    With ``isa`` set (e.g. ``"AVX2"``), inference happens in a child process whose oneDNN kernels are
    capped at that ISA; the child stays alive across calls.
    """

    def __init__(
        self,
        model: str | Path | Any,
        *,
        threads: int = 2,
        inference_precision: str = "f32",
        hint: str = "latency",
        isa: str | None = None,
        profiling: bool = False,
    ) -> None:
        self.threads, self.isa = threads, normalize_isa(isa) if isa else None
        self.config = _config(threads, inference_precision, hint, profiling)
        self._tmp = tempfile.TemporaryDirectory(prefix="edgeattn-ov-")
        self.path = self._materialize(model, "model")
        self._compiled = None
        self._worker: subprocess.Popen | None = None

    def _materialize(self, model: Any, stem: str) -> str:
        if isinstance(model, (str, Path)):
            return str(model)
        path = os.path.join(self._tmp.name, f"{stem}.onnx")
        with open(path, "wb") as fh:
            fh.write(model.SerializeToString())
        return path

    # ----- in-process -----
    def compiled(self):
        """The compiled model (in-process runners only)."""
        if self._compiled is None:
            require_openvino()
            core = openvino_core()
            try:
                self._compiled = core.compile_model(core.read_model(self.path), "CPU", self.config)
            except Exception as exc:
                raise _openvino_error(exc) from exc
        return self._compiled

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.isa:
            return self._run_in_worker(self.path, x)
        compiled = self.compiled()
        try:
            return np.asarray(compiled({0: x})[0])
        except Exception as exc:
            raise _openvino_error(exc) from exc

    def run_model(self, model: Any, x: np.ndarray) -> np.ndarray:
        """Run another (e.g. bisected, one-output) ONNX model with this runner's settings."""
        path = self._materialize(model, "probe")
        if self.isa:
            return self._run_in_worker(path, x)
        require_openvino()
        core = openvino_core()
        try:
            return np.asarray(core.compile_model(core.read_model(path), "CPU", self.config)({0: x})[0])
        except Exception as exc:
            raise _openvino_error(exc) from exc

    # ----- ISA-capped child process -----
    def _run_in_worker(self, path: str, x: np.ndarray) -> np.ndarray:
        if self._worker is None or self._worker.poll() is not None:
            env = dict(os.environ, ONEDNN_MAX_CPU_ISA=self.isa or "", DNNL_MAX_CPU_ISA=self.isa or "")
            self._worker = subprocess.Popen(
                [sys.executable, "-m", "edgeattn.export.openvino_target"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
        in_path = os.path.join(self._tmp.name, "x.npy")
        out_path = os.path.join(self._tmp.name, "y.npy")
        np.save(in_path, x)
        request = {"model": path, "input": in_path, "output": out_path, "config": self.config}
        assert self._worker.stdin is not None and self._worker.stdout is not None
        self._worker.stdin.write(json.dumps(request) + "\n")
        self._worker.stdin.flush()
        reply = json.loads(self._worker.stdout.readline() or '{"error": "OpenVINO worker died"}')
        if "error" in reply:
            raise EdgeAttnError(f"openvino ({self.isa}): {reply['error']}", exit_code=5)
        return np.load(out_path)

    def close(self) -> None:
        """Stop the child process (if any) and remove temporary files."""
        if self._worker is not None and self._worker.poll() is None:
            assert self._worker.stdin is not None
            self._worker.stdin.close()
            try:
                self._worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._worker.kill()
        self._worker = None
        self._tmp.cleanup()

    def __enter__(self) -> OpenVINORunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the real API
        with contextlib.suppress(Exception):
            self.close()


def kernel_report(runner: OpenVINORunner, x: np.ndarray, onnx_model: Any = None) -> dict[str, Any]:
    """Per-node kernels of the multiply-accumulate layers, from the CPU plugin's profiling counters.

    Returns ``{"nodes": [{name, type, exec_type, int8}], "all_int8": bool, "count": n}``. Nodes
    fused into a ``Subgraph`` are counted when the subgraph carries an ONNX Conv/MatMul/Gemm name.
    """
    if runner.isa:
        raise ValueError("kernel_report runs in-process; use a runner without isa")
    require_openvino()
    core = openvino_core()
    cfg = dict(runner.config, PERF_COUNT=True)
    compiled = core.compile_model(core.read_model(runner.path), "CPU", cfg)
    request = compiled.create_infer_request()
    request.infer({0: x})
    onnx_compute = set()
    if onnx_model is not None:
        onnx_compute = {n.name for n in onnx_model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")}
    nodes = []
    for info in request.get_profiling_info():
        if str(info.status).endswith("NOT_RUN"):
            continue
        fused = info.node_type == "Subgraph" and _onnx_origin(info.node_name, onnx_compute) is not None
        if info.node_type in _COMPUTE_TYPES or fused:
            kind = info.exec_type.lower()
            nodes.append(
                {
                    "name": info.node_name,
                    "type": info.node_type,
                    "exec_type": info.exec_type,
                    "int8": "i8" in kind or "u8" in kind,
                }
            )
    return {"nodes": nodes, "count": len(nodes), "all_int8": bool(nodes) and all(n["int8"] for n in nodes)}


def _onnx_origin(runtime_name: str, onnx_names: set[str]) -> str | None:
    """The ONNX node a CPU-plugin node comes from: its own name, else its longest ``/``-prefix in ``onnx_names``.

    The exporter names nodes by module path (``/blocks/blocks.0/attn/MatMul_1``); OpenVINO keeps that name on
    the node a fused ``Subgraph`` ends in, or appends to it (``.../MatMul/DequantizationMultiply``).
    """
    name = runtime_name
    while name:
        if name in onnx_names:
            return name
        name = name.rpartition("/")[0]
    return None


def _worker_main() -> None:
    """Child-process loop: one JSON request per line on stdin, one JSON reply per line on stdout."""
    core = openvino_core()
    cache: dict[str, Any] = {}
    for line in sys.stdin:
        try:
            req = json.loads(line)
            key = req["model"] + json.dumps(req["config"], sort_keys=True)
            if key not in cache or req["model"].endswith("probe.onnx"):
                cache[key] = core.compile_model(core.read_model(req["model"]), "CPU", req["config"])
            out = cache[key]({0: np.load(req["input"])})[0]
            np.save(req["output"], np.asarray(out))
            reply: dict[str, Any] = {"ok": True}
        except Exception as exc:  # report to the parent, keep serving
            from edgeattn.export.report import error_line

            reply = {"error": error_line(exc)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _worker_main()
