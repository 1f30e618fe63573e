"""Per-layer breakdown in one schema for every runtime.

Each runtime's own profiler is read and turned into :class:`~edgeattn.profile.schema.LayerRecord` rows:
ONNX Runtime's profiling trace (``*_kernel_time`` node events), OpenVINO's per-node performance counters
(with the kernel actually executed, e.g. ``jit_avx2_I8`` vs ``brgconv_avx2_f32``), TensorRT's
``IProfiler`` layer times, and Core ML's compute plan (estimated relative cost, scaled to the measured
median: marked ``estimated``).
"""

from __future__ import annotations

import bisect
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.profile.schema import LayerBreakdown, LayerRecord

_PRECISION_PATTERNS = (
    ("int8", re.compile(r"(^|[_\W])(i8|u8|int8|uint8|i4|u4)($|[_\W])", re.I)),
    ("bf16", re.compile(r"bf16", re.I)),
    ("fp16", re.compile(r"(^|[_\W])(f16|fp16|float16|half)($|[_\W])", re.I)),
    ("fp32", re.compile(r"(^|[_\W])(f32|fp32|float32|float)($|[_\W])", re.I)),
)
_INT_ONNX_OPS = {
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "QGemm",
    "QLinearAdd",
    "QLinearMul",
    "QLinearSigmoid",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "MatMulIntegerToFloat",  # int8 x int8 -> int32, then scaled to float
    "DynamicQuantizeMatMul",  # float input quantized to uint8 inside the kernel, int8 arithmetic
    # DequantizeLinear(8-bit weight) -> MatMul fused by ONNX Runtime; its default accuracy_level 4
    # (session.qdq_matmulnbits_accuracy_level) quantizes the activation and runs int8 dot products
    "MatMulNBits",
}


def precision_from_kernel(kernel: str) -> str:
    """Execution precision in a kernel name (``jit_avx2_I8`` -> int8, ``brgemm_avx512_f32`` -> fp32)."""
    for name, pattern in _PRECISION_PATTERNS:
        if pattern.search(kernel):
            return name
    return "unknown"


@dataclass
class LayerAccumulator:
    """Collects per-layer times over several profiled inferences, keeping first-seen order.

    A layer's time is the median over the profiled inferences (a layer run several times in one
    inference has its times summed for that inference first), so one stalled run, common on a busy
    machine, does not skew the breakdown; the mean is kept as well.
    """

    runs: int = 0
    wall_ms: list[float] = field(default_factory=list)  # end-to-end time of each profiled inference
    plain_ms: list[float] = field(default_factory=list)  # unprofiled inferences interleaved with them
    _rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def timed(self, fn: Any) -> None:
        """Call ``fn()`` (one profiled inference) and record its wall time."""
        t0 = time.perf_counter_ns()
        fn()
        self.wall_ms.append((time.perf_counter_ns() - t0) / 1e6)

    def timed_pair(self, plain: Any, profiled: Any) -> None:
        """One unprofiled inference ``plain()`` then one profiled ``profiled()``, both timed (A B A B ...)."""
        t0 = time.perf_counter_ns()
        plain()
        self.plain_ms.append((time.perf_counter_ns() - t0) / 1e6)
        self.timed(profiled)

    def add(
        self,
        name: str,
        op_type: str,
        kernel: str,
        precision: str,
        device: str,
        ms: float,
        estimated: bool = False,
        run: int | None = None,
    ) -> None:
        """Add ``ms`` to layer ``name`` for inference ``run`` (default: the current one, ``self.runs``)."""
        row = self._rows.setdefault(
            name,
            {
                "meta": {
                    "name": name,
                    "op_type": op_type,
                    "kernel": kernel,
                    "precision": precision,
                    "device": device,
                    "estimated": estimated,
                },
                "times": {},
            },
        )
        key = self.runs if run is None else run
        row["times"][key] = row["times"].get(key, 0.0) + ms

    def breakdown(self, source: str, end_to_end_p50_ms: float) -> LayerBreakdown:
        """Median (and mean) per inference of every layer, as a :class:`LayerBreakdown`."""
        runs = max(self.runs, 1)
        rows = []
        for r in self._rows.values():
            times = list(r["times"].values())
            # a layer missing from some inferences counts 0 there
            full = times + [0.0] * max(0, runs - len(times))
            rows.append(dict(r["meta"], time_ms=float(np.median(full)), mean_ms=float(np.mean(full))))
        total = sum(r["time_ms"] for r in rows)
        layers = [LayerRecord(**r, share=(r["time_ms"] / total if total else 0.0)) for r in rows]
        by_op: dict[str, float] = {}
        by_prec: dict[str, float] = {}
        for layer in layers:
            by_op[layer.op_type] = by_op.get(layer.op_type, 0.0) + layer.time_ms
            by_prec[layer.precision] = by_prec.get(layer.precision, 0.0) + layer.time_ms
        profiled = float(np.median(self.wall_ms)) if self.wall_ms else None
        coverage = None
        if self.wall_ms and len(self.wall_ms) == self.runs:
            # per inference: what its layers add up to over its own wall time (robust to other runs' stalls)
            per_run = [
                sum(r["times"].get(k, 0.0) for r in self._rows.values()) / wall
                for k, wall in enumerate(self.wall_ms)
                if wall > 0
            ]
            coverage = float(np.median(per_run)) if per_run else None
        interleaved = None
        if self.plain_ms:
            interleaved = float(np.median(self.plain_ms))
        return LayerBreakdown(
            interleaved_e2e_ms=interleaved,
            sum_over_interleaved_e2e=(total / interleaved) if interleaved else None,
            source=source,
            runs=self.runs,
            layers=layers,
            total_ms=total,
            end_to_end_p50_ms=end_to_end_p50_ms,
            sum_over_end_to_end=(total / end_to_end_p50_ms) if end_to_end_p50_ms > 0 else 0.0,
            profiled_p50_ms=profiled,
            sum_over_profiled=(total / profiled) if profiled else None,
            per_run_coverage=coverage,
            by_op_type=dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
            by_precision=dict(sorted(by_prec.items(), key=lambda kv: -kv[1])),
        )


# ONNX Runtime's (de)quantize nodes convert between float and int8; they do no int8 arithmetic. Labelled by their
# input type they would count as int8 time, although in a Q/DQ graph ORT did not fuse, the compute runs in fp32.
_QDQ_ONNX_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def _onnx_event_precision(op_name: str, args: dict[str, Any]) -> str:
    """The precision of one ONNX Runtime node event: ``int8`` for integer kernels, ``q/dq`` for (de)quantize
    conversions, else the type of its first input (``fp32``, ``fp16``, ``int8``)."""
    if op_name in _INT_ONNX_OPS:
        return "int8"
    if op_name in _QDQ_ONNX_OPS:
        return "q/dq"
    for entry in args.get("input_type_shape", [])[:1]:
        for dtype in entry:
            if dtype in ("int8", "uint8"):
                return "int8"
            if dtype == "float16":
                return "fp16"
            if dtype == "float":
                return "fp32"
    return "unknown"


OrtTrace = str | Path | list[dict[str, Any]]  # a trace file, or its events already loaded


def load_ort_trace(path: str | Path) -> list[dict[str, Any]]:
    """The events of an ONNX Runtime profiling trace file (parse once, pass the list to the readers below)."""
    return json.loads(Path(path).read_text())


def _trace_events(trace: OrtTrace) -> list[dict[str, Any]]:
    return trace if isinstance(trace, list) else load_ort_trace(trace)


def node_event_durations_us(trace: OrtTrace) -> list[float]:
    """Durations (microseconds) of every node event in an ONNX Runtime profiling trace."""
    return [
        float(e["dur"])
        for e in _trace_events(trace)
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
    ]


def read_ort_trace(
    trace: OrtTrace, acc: LayerAccumulator, skip_runs: int = 0, event_overhead_ms: float = 0.0
) -> int:
    """Add the node times of an ONNX Runtime profiling trace to ``acc``; returns the runs it held.

    Node events are named ``<node>_kernel_time`` (category ``Node``); runs are delimited by the
    ``model_run`` session events. The first ``skip_runs`` runs are ignored (warm-up inside the trace).
    ``event_overhead_ms`` (the profiler's own cost inside each node event, as measured by
    :meth:`edgeattn.profile.ort_runner.OrtRunner.profile_layers`) is subtracted from every event, floored at 0.
    """
    events = _trace_events(trace)
    run_ends = sorted(
        e["ts"] + e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    if not run_ends:
        return 0
    start_ts = run_ends[skip_runs - 1] if skip_runs else -1
    used = len(run_ends) - skip_runs
    base = acc.runs
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] <= start_ts:
            continue
        args = e.get("args", {})
        op = args.get("op_name", "?")
        provider = args.get("provider", "")
        run = bisect.bisect_left(run_ends, e["ts"]) - skip_runs  # the model_run this node event ends in
        acc.add(
            e["name"][: -len("_kernel_time")],
            op,
            f"{op} ({provider.replace('ExecutionProvider', '')})",
            _onnx_event_precision(op, args),
            provider,
            max(0.0, e["dur"] / 1000.0 - event_overhead_ms),
            run=base + run,
        )
    acc.runs += used
    return used


def openvino_counter_totals(infos: Iterable[Any]) -> dict[str, tuple[Any, float]]:
    """``{node name: (ProfilingInfo, real time in ms)}`` for the nodes OpenVINO executed.

    Nodes that were not run or were fused away (``status`` other than EXECUTED) are left out.
    """
    return {
        info.node_name: (info, info.real_time.total_seconds() * 1000.0)
        for info in infos
        if str(info.status).rsplit(".", 1)[-1] == "EXECUTED"
    }


def add_openvino_counter_means(
    before: dict[str, tuple[Any, float]],
    runs_before: int,
    after: dict[str, tuple[Any, float]],
    runs_after: int,
    acc: LayerAccumulator,
    device: str,
) -> None:
    """Add the mean per-node time of the inferences between two reads of OpenVINO's counters.

    OpenVINO's CPU counters are running means over every inference since the model was compiled
    (cold first run included), in whole microseconds. Read as if they were the last inference's
    times, they overstate layers after a slow first run and never show a stall. The mean over the
    runs in between is recovered exactly from the two running means:
    ``(runs_after * after - runs_before * before) / (runs_after - runs_before)``.
    ``acc`` gets one aggregate inference (a chunk of runs); pair it with the mean wall time of the same runs.
    """
    runs = runs_after - runs_before
    if runs <= 0:
        raise ValueError("need at least one inference between the two counter reads")
    for name, (info, ms_after) in after.items():
        ms_before = before.get(name, (None, 0.0))[1]
        ms = max(0.0, (runs_after * ms_after - runs_before * ms_before) / runs)
        acc.add(name, info.node_type, info.exec_type, precision_from_kernel(info.exec_type), device, ms)
    acc.runs += 1


# MAC-carrying ops as ONNX Runtime runs them (after its fusions; NCHWc convolutions are named Conv).
_ORT_CONV_OPS = {"Conv", "FusedConv", "NhwcConv", "NhwcFusedConv", "ConvInteger", "QLinearConv", "ConvTranspose"}
_ORT_MATMUL_OPS = {
    "MatMul",
    "FusedMatMul",
    "MatMulInteger",
    "QLinearMatMul",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "MatMulNBits",
}
_ORT_GEMM_OPS = {"Gemm", "FusedGemm", "QGemm"}
# com.microsoft attention kernels ONNX Runtime fuses attention into (softmax(Q K^T) V, + the QKV projection for
# Attention/QAttention). QAttention's projection is int8, its Q K^T and softmax x V run in fp32.
_ORT_ATTENTION_OPS = {"Attention", "QAttention", "MultiHeadAttention", "GroupQueryAttention"}
ORT_MAC_OPS = _ORT_CONV_OPS | _ORT_MATMUL_OPS | _ORT_GEMM_OPS | _ORT_ATTENTION_OPS


def _shapes(entries: list[dict[str, list[int]]]) -> list[list[int]]:
    """``[{"float": [1, 16]}, ...]`` (a node event's input/output_type_shape) -> ``[[1, 16], ...]``."""
    return [list(shape) for entry in entries for shape in entry.values()]


def _event_macs(op: str, args: dict[str, Any]) -> int | None:
    """MACs of one ONNX Runtime node event, from the shapes the trace records; None where they do not tell.

    The trace leaves out constant inputs the kernel pre-packed (a Gemm's or MatMul's weight), so MACs are read
    from the activation and the output: MatMul ``out x K`` with K the first input's reduced dim, Gemm
    ``out x size(A) / M``; a convolution needs its weight, the first later input of the output's rank
    (``out x size(W) / W[0]``; ConvTranspose ``size(X) x size(W) / W[0]``).
    """
    ins, outs = _shapes(args.get("input_type_shape", [])), _shapes(args.get("output_type_shape", []))
    if not ins or not outs or not ins[0] or not outs[0]:
        return None
    a, out = ins[0], outs[0]
    if op in _ORT_MATMUL_OPS:
        if len(a) == 1:
            k = a[0]
        elif len(out) >= 2 and a[-2] != out[-2] and a[-1] == out[-2]:
            k = a[-2]  # A transposed (FusedMatMul transA)
        else:
            k = a[-1]
        return int(np.prod(out)) * k
    if op in _ORT_GEMM_OPS:
        return int(np.prod(out)) * int(np.prod(a)) // out[0] if len(a) == 2 and len(out) == 2 else None
    if op in _ORT_CONV_OPS:
        w = next((shape for shape in ins[1:] if len(shape) == len(out) and shape[0] > 0), None)
        if w is None:
            return None
        per_out = int(np.prod(w)) // w[0]
        return (int(np.prod(a)) if op == "ConvTranspose" else int(np.prod(out))) * per_out
    return None


def _attention_macs(op: str, args: dict[str, Any]) -> dict[str, int] | None:
    """MACs per precision of one fused attention event, from its shapes; None where they do not tell.

    Per batch, ``S`` queries against ``L`` keys cost ``S x L x (D_qk + D_v)`` (Q K^T, then softmax x V, summed
    over the heads, so the head count cancels). Attention/QAttention (input ``[B, S, D_in]``, QKV bias
    ``[D_q + D_k + D_v]``, output ``[B, S, D_v]``) add the QKV projection ``B x S x D_in x len(bias)``, int8 for
    QAttention. MultiHeadAttention: query ``[B, S, D]``, key ``[B, L, D]`` or ``[B, N, L, H]``. GroupQueryAttention:
    query ``[B, S, D]``, ``L`` from its present key output ``[B, N_kv, L, H]`` (past + new), else ``S``.
    """
    ins, outs = _shapes(args.get("input_type_shape", [])), _shapes(args.get("output_type_shape", []))
    if not ins or not outs or len(ins[0]) != 3 or len(outs[0]) != 3:
        return None
    (b, s, d_in), d_v = ins[0], outs[0][-1]
    if op in ("Attention", "QAttention"):
        bias = next((shape for shape in ins[1:] if len(shape) == 1 and shape[0] > d_v), None)
        if bias is None:
            return None
        d_qk = (bias[0] - d_v) // 2
        core = b * s * s * (d_qk + d_v)
        projection = b * s * d_in * bias[0]
        if op == "QAttention":
            return {"int8": projection, "fp32": core}
        return {_onnx_event_precision(op, args): projection + core}
    if op == "MultiHeadAttention":
        key = ins[1] if len(ins) > 1 else []
        if len(key) == 3:
            length, d_qk = key[1], d_in
        elif len(key) == 4:
            length, d_qk = key[2], key[1] * key[3]
        else:
            return None  # packed QKV: the head split is an attribute the trace does not record
        return {_onnx_event_precision(op, args): b * s * length * (d_qk + d_v)}
    if op == "GroupQueryAttention":
        present = outs[1] if len(outs) > 1 and len(outs[1]) == 4 else None
        length = present[2] if present else s
        return {_onnx_event_precision(op, args): b * s * length * 2 * d_v}
    return None


# ONNX Runtime renames the nodes it rewrites: ``<output tensor>_nchwc`` (NCHWc convolutions), ``<node>_token_<n>``
# (Q/DQ fusions), ``InsertedPrecisionFreeCast_<tensor>`` (an fp16 graph run in fp32 kernels).
_ORT_NAME_PREFIX = re.compile(r"^(InsertedPrecisionFreeCast_)+")
_ORT_NAME_SUFFIX = re.compile(r"(_nchwc|_token_\d+)+$")


def graph_name_candidates(event_node: str) -> list[str]:
    """Graph node or tensor names an ONNX Runtime trace node (``_kernel_time`` already cut) may stand for:
    itself, then with ORT's rename prefixes and suffixes taken off (``InsertedPrecisionFreeCast_y_nchwc`` -> ``y``)."""
    bare = _ORT_NAME_SUFFIX.sub("", _ORT_NAME_PREFIX.sub("", event_node))
    return [event_node] if bare == event_node or not bare else [event_node, bare]


def _scale_to(macs: dict[str, int], total: int) -> dict[str, int]:
    """``macs`` scaled so that they add up to ``total`` exactly (rounding remainder on the largest)."""
    have = sum(macs.values())
    scaled = {p: n * total // have for p, n in macs.items()}
    largest = max(scaled, key=lambda p: macs[p])
    scaled[largest] += total - sum(scaled.values())
    return scaled


def ort_macs_by_precision(
    trace: OrtTrace, graph_macs: int | None = None, node_macs: Mapping[str, int] | None = None
) -> tuple[dict[str, int], str]:
    """MACs of one inference per precision ONNX Runtime's MAC-carrying kernels actually ran in, and a note.

    Reads the node events of the trace's last ``model_run``: QLinearConv/QLinearMatMul/ConvInteger/
    MatMulInteger(ToFloat)/QGemm/MatMulNBits are int8; Conv/FusedConv/Gemm/MatMul/FusedMatMul count at their first
    input's type (fp32 for a Conv that ONNX Runtime left between DequantizeLinear and QuantizeLinear instead of
    fusing it); fused attention kernels as :func:`_attention_macs` tells. A kernel whose
    weight ONNX Runtime pre-packed (a fused QLinearConv) has no weight shape in the trace: the MACs of such kernels
    are the graph's count ``graph_macs`` less those the trace tells, split over their precisions by output
    elements where they differ. The note says when that was done, or what was left out.

    ``node_macs`` (graph node and output tensor names -> the graph's MACs of that node, as
    :func:`edgeattn.profile.ort_runner.onnx_node_macs` gives) takes precedence over a kernel's shapes wherever the trace
    node maps back to a graph node (:func:`graph_name_candidates`): ORT's NCHWc convolutions record their channels
    padded to the SIMD block (3->24 runs as 3->32), which would count MACs the model does not have. The counts never
    exceed ``graph_macs``: where they would, they are scaled down to it.
    """
    events = _trace_events(trace)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if not runs:
        return {}, ""
    last = max(runs, key=lambda e: e["ts"])
    macs: dict[str, int] = {}
    hidden: dict[str, int] = {}  # per precision: output elements of the kernels whose MACs the trace hides
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if not last["ts"] <= e["ts"] <= last["ts"] + last["dur"]:
            continue
        args = e.get("args", {})
        op = args.get("op_name", "")
        if op not in ORT_MAC_OPS:
            continue
        precision = _onnx_event_precision(op, args)
        if op in _ORT_ATTENTION_OPS:
            parts = _attention_macs(op, args)
            if parts is not None:
                for p, n in parts.items():
                    macs[p] = macs.get(p, 0) + n
                continue
            precision = "fp32" if op == "QAttention" else precision  # unknown split: the safer (lower) peak
            n = None
        else:
            name = e["name"][: -len("_kernel_time")]
            known = [node_macs[c] for c in graph_name_candidates(name) if c in (node_macs or {})]
            n = known[0] if known else _event_macs(op, args)
        if n is None:
            outs = _shapes(args.get("output_type_shape", []))
            hidden[precision] = hidden.get(precision, 0) + (int(np.prod(outs[0])) if outs else 0)
        else:
            macs[precision] = macs.get(precision, 0) + n
    note = ""
    if hidden:
        kernels = f"MAC kernels whose weight the trace does not show ({', '.join(sorted(hidden))})"
        rest = (graph_macs or 0) - sum(macs.values())
        if graph_macs is None or rest <= 0:
            note = f"{kernels} left out: no graph MAC count to take theirs from"
        else:
            elements = sum(hidden.values())
            for precision, out in hidden.items():
                share = out / elements if elements else 1.0 / len(hidden)
                macs[precision] = macs.get(precision, 0) + round(rest * share)
            split = "" if len(hidden) == 1 else ", split by output elements"
            note = f"{kernels}: their {rest} MACs are the graph's count less the rest{split}"
    counted = sum(macs.values())
    if graph_macs and counted > graph_macs:
        macs = _scale_to(macs, graph_macs)
        scaled = (
            f"the kernels' shapes count {counted} MACs, more than the graph's {graph_macs} (channels padded for "
            "SIMD): scaled down to the graph's"
        )
        note = f"{note}; {scaled}" if note else scaled
    return macs, note
