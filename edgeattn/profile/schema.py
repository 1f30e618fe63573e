"""Result models of the latency profiler: one JSON schema for every runtime.

A :class:`ProfileReport` holds the system it ran on, the settings, and one :class:`ArtifactResult` per
artifact (latency statistics, compute-efficiency figures, memory and an optional per-layer breakdown).
All times are milliseconds.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

SCHEMA_VERSION = 1


class LatencyStats(BaseModel):
    """Statistics over the timed runs of one artifact (milliseconds, one inference of ``batch`` samples)."""

    count: int = Field(description="number of timed inferences")
    mean_ms: float
    std_ms: float = Field(description="sample standard deviation (ddof=1; 0 for a single run)")
    min_ms: float
    max_ms: float
    p50_ms: float = Field(description="median")
    p90_ms: float
    p99_ms: float
    throughput: float = Field(description="samples per second at the mean latency: batch * 1000 / mean_ms")


class LayerRecord(BaseModel):
    """One layer (node, kernel) of the executed graph, averaged per inference."""

    name: str = Field(description="node/layer name as the runtime reports it")
    op_type: str = Field(description="operator type (Conv, MatMul, Softmax ...)")
    kernel: str = Field(
        "", description="kernel/implementation that actually ran (e.g. jit_avx2_I8, brgconv_avx512_f32)"
    )
    precision: str = Field(
        "unknown",
        description="execution precision read from the kernel: int8, fp32, fp16, bf16; q/dq for ONNX Runtime's "
        "(de)quantize conversions (no int8 arithmetic)",
    )
    device: str = Field("", description="execution provider / device that ran the layer")
    time_ms: float = Field(description="median time per inference in this layer (over the profiled runs)")
    mean_ms: float = Field(0.0, description="mean time per inference in this layer")
    share: float = Field(0.0, description="fraction of the summed per-layer time")
    estimated: bool = Field(
        False, description="True when the time is an estimate (Core ML compute plan cost), not a measurement"
    )


class LayerBreakdown(BaseModel):
    """Per-layer breakdown of one artifact."""

    source: str = Field(description="where the numbers come from (ORT profiler, OpenVINO perf counters ...)")
    runs: int = Field(description="inferences the per-layer times are averaged over")
    layers: list[LayerRecord]
    total_ms: float = Field(description="sum of the per-layer median times")
    end_to_end_p50_ms: float = Field(description="the artifact's end-to-end median (timed without profiling)")
    sum_over_end_to_end: float = Field(description="total_ms / end_to_end_p50_ms")
    profiled_p50_ms: float | None = Field(
        None, description="median wall time of the profiled inferences (profiler overhead included)"
    )
    sum_over_profiled: float | None = Field(
        None, description="total_ms / profiled_p50_ms: the share of the profiled runs the layers cover"
    )
    per_run_coverage: float | None = Field(
        None, description="median over profiled inferences of (their layer times summed / their wall time)"
    )
    interleaved_e2e_ms: float | None = Field(
        None,
        description="end-to-end time of plain (unprofiled) inferences run alternately with the profiled ones: "
        "their median (OpenVINO: the median of chunk means, as its layer times)",
    )
    sum_over_interleaved_e2e: float | None = Field(
        None,
        description="total_ms / interleaved_e2e_ms: the accounting check (target: within 15%), taken in the "
        "same time window as the layer times, so a machine whose speed drifts does not skew it",
    )
    instrumentation_ms_per_layer: float = Field(
        0.0,
        description="profiler cost recorded inside each layer event, measured and subtracted from every layer "
        "time (ONNX Runtime: a few us per node event); 0 where none applies",
    )
    uncorrected_total_ms: float | None = Field(
        None, description="total_ms before the instrumentation correction (None where none applies)"
    )
    by_op_type: dict[str, float] = Field(
        default_factory=dict, description="time per op type, ms per inference"
    )
    by_precision: dict[str, float] = Field(
        default_factory=dict, description="time per execution precision, ms per inference"
    )


class Efficiency(BaseModel):
    """How close the measured latency is to the machine's arithmetic limit."""

    macs: int | None = Field(
        None, description="multiply-accumulates of one inference, counted from the graph"
    )
    macs_source: str = Field("", description="how the MACs were counted")
    achieved_gmacs: float | None = Field(None, description="macs / p50 latency, in GMAC/s")
    peak_gmacs: float | None = Field(None, description="arithmetic peak for the precision and threads used")
    peak_precision: str = Field(
        "fp32", description="precision the peak is computed for; mixed: a MAC-weighted peak over several"
    )
    macs_by_precision: dict[str, int] = Field(
        default_factory=dict,
        description="MACs of one inference per precision the runtime's kernels ran in (ONNX Runtime: read from "
        "its profiling trace); the peak is weighted by them. Empty: the peak is at the graph's precision",
    )
    macs_covered: float | None = Field(
        None,
        description="sum(macs_by_precision) / macs: the share of the graph's MACs the peak is weighted by (below 1 "
        "where some MACs ran in kernels the trace does not tell); None when not weighted",
    )
    peak_trace: str = Field(
        "",
        description="the ONNX Runtime trace macs_by_precision was read from: 'per-layer' (the --per-layer trace, "
        "reused) or 'probe' (a separate two-inference traced session); empty when not weighted",
    )
    peak_formula: str = Field("", description="the arithmetic behind peak_gmacs")
    fraction_of_peak: float | None = None
    note: str = Field("", description="set when the figures need a caveat (e.g. above the computed peak)")


class ArtifactResult(BaseModel):
    """Everything measured for one artifact."""

    artifact: str
    label: str = Field(description="short name used in tables and plots")
    runtime: str
    runtime_version: str
    device: str
    precision: str = Field(
        description="precision of the artifact's graph: int8 (Q/DQ or integer ops), fp16, fp32"
    )
    input_shapes: dict[str, list[int]]
    batch: int = Field(
        1,
        description="samples per inference, used for throughput: --batch, else the leading dim of the first input",
    )
    input_dtypes: dict[str, str] = Field(
        default_factory=dict,
        description="numpy dtype of each bound input (float32: random normal; integer, e.g. int64 token ids: 0/1)",
    )
    settings: dict[str, Any] = Field(default_factory=dict, description="runtime settings actually in effect")
    load_ms: float = Field(description="time to load/compile the artifact")
    cold_ms: float = Field(description="first inference after loading")
    warmup: int
    latency: LatencyStats | None = Field(None, description="None when interrupted before any timed run")
    ratio_to_first: float | None = Field(None, description="this p50 / the first artifact's p50")
    efficiency: Efficiency = Field(default_factory=Efficiency)
    rss_after_load_mb: float = Field(
        description="resident memory growth of the process while loading this artifact (before any inference)"
    )
    rss_after_cold_mb: float | None = Field(
        None,
        description="resident memory growth from before loading to after the cold first inference (adds the "
        "runtime's lazy allocations: arenas, JIT kernels); None in reports written before it was recorded",
    )
    layers: LayerBreakdown | None = None
    parity_failed: bool = Field(
        False,
        description="the artifact's name says `edgeattn export` wrote it after its parity gate failed "
        "(FAILED_PARITY): its outputs do not match the model; it is timed all the same",
    )
    samples_ms: list[float] = Field(default_factory=list, description="every timed latency, in run order")


class SystemRecord(BaseModel):
    """The machine and software a report was measured on."""

    cpu_model: str
    isa_flags: list[str]
    physical_cores: int | None
    logical_cores: int
    clock_ghz: float | None = Field(description="clock used for peaks (measured when possible)")
    clock_source: str
    nominal_clock_ghz: float | None = Field(
        None, description="clock reported by the OS (sysfs or /proc/cpuinfo)"
    )
    system: str
    machine: str
    gpus: list[str]
    runtimes: dict[str, str | None]
    python: str
    hostname: str
    load_average: list[float] = Field(
        default_factory=list, description="1/5/15-minute load average at the start (a busy machine = noise)"
    )


class ProfileReport(BaseModel):
    """The result of one ``edgeattn profile`` call."""

    schema_version: int = SCHEMA_VERSION
    created_utc: str
    system: SystemRecord
    settings: dict[str, Any] = Field(
        description="warmup, iters/seconds, batch (as asked: None = each artifact's own), threads, interleaving block"
    )
    interleaved: bool = Field(
        description="True when several artifacts were timed in alternation (A B A B ...)"
    )
    interrupted: bool = Field(False, description="True when Ctrl-C stopped the run; results are partial")
    peak_rss_mb: float = Field(description="peak resident memory of the profiling process")
    load_average_end: list[float] = Field(default_factory=list, description="load average when the run ended")
    results: list[ArtifactResult]
