"""The timing loop: cold start, warm-up, interleaved timed runs, statistics, efficiency, per-layer.

Several artifacts are timed in alternation (A B A B ...): each turn runs one artifact for a block of
inferences (sized so a turn lasts about ``turn_ms``), so slow drifts of the machine's speed (thermal,
other tenants) hit every artifact alike and the ratios stay fair. Python's garbage collector is paused
during timed runs (as :mod:`timeit` does) so its pauses are not charged to the model.
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from edgeattn.errors import EdgeAttnError
from edgeattn.profile import system
from edgeattn.profile.runners import (
    Runner,
    check_artifact,
    check_batch_and_threads,
    check_openvino_options,
    open_runner,
)
from edgeattn.profile.schema import ArtifactResult, Efficiency, LatencyStats, LayerBreakdown, ProfileReport

ProgressFn = Callable[[str, float, float], None]
"""``progress(phase, completed, total)``; phases: 'load', 'warmup', 'timed', 'layers'."""

DEFAULT_ITERS = 100
FAILED_PARITY_TAG = "FAILED_PARITY"  # what `edgeattn export` puts in the name of an artifact whose gate failed


def failed_parity(path: str | Path) -> bool:
    """True when ``path`` is an artifact `edgeattn export` wrote after its parity gate failed
    (``model.FAILED_PARITY.onnx``, ``.xml``, ``.mlpackage``, ...)."""
    return FAILED_PARITY_TAG in Path(path).name.split(".")


def latency_stats(samples_ms: Sequence[float], batch: int) -> LatencyStats:
    """Mean, std (ddof=1), min, max, p50/p90/p99 (linear interpolation) and throughput of ``samples_ms``
    (a list or 1-D array of finite times >= 0, in ms) for inferences of ``batch`` samples each."""
    if isinstance(samples_ms, (str, bytes)):
        raise ValueError(f"samples_ms must be a list of times in ms, got {samples_ms!r}")
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"samples_ms must be a non-empty list of times in ms, got shape {list(a.shape)}")
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError("samples_ms must hold finite times >= 0")
    if isinstance(batch, bool) or not isinstance(batch, Integral) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    mean = float(a.mean())
    return LatencyStats(
        count=int(a.size),
        mean_ms=mean,
        std_ms=float(a.std(ddof=1)) if a.size > 1 else 0.0,
        min_ms=float(a.min()),
        max_ms=float(a.max()),
        p50_ms=float(np.percentile(a, 50)),
        p90_ms=float(np.percentile(a, 90)),
        p99_ms=float(np.percentile(a, 99)),
        throughput=batch * 1000.0 / mean if mean > 0 else math.inf,
    )


def _timed(runner: Runner) -> float:
    t0 = time.perf_counter_ns()
    runner.run()
    return (time.perf_counter_ns() - t0) / 1e6


def interleave(
    runners: Sequence[Runner],
    iters: int | None,
    seconds: float | None,
    block: Sequence[int],
    progress: ProgressFn | None = None,
) -> tuple[list[list[float]], bool]:
    """Timed runs in turns: runner 0 for ``block[0]`` runs, runner 1 for ``block[1]`` ..., repeated.

    Stops when every runner has ``iters`` samples, or after ``seconds`` of wall time (at least one full
    round). Returns the samples per runner and whether Ctrl-C interrupted the loop (samples so far kept).
    """
    samples: list[list[float]] = [[] for _ in runners]
    start = time.perf_counter()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while True:
            for i, runner in enumerate(runners):
                n = block[i] if iters is None else min(block[i], iters - len(samples[i]))
                for _ in range(n):
                    samples[i].append(_timed(runner))
            elapsed = time.perf_counter() - start
            if iters is not None:
                done = min(len(s) for s in samples)
                if progress:
                    progress("timed", done, iters)
                if done >= iters:
                    break
            else:
                if progress:
                    progress("timed", min(elapsed, seconds), seconds)
                if elapsed >= seconds:
                    break
    except KeyboardInterrupt:
        return samples, True
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples, False


def input_batch(input_shapes: Mapping[str, Sequence[int]], batch: int | None = None) -> int:
    """Samples in one inference: ``batch`` when given, else the leading (batch) dim of the first input that
    has one (an artifact exported with a fixed batch of 4, or ``--shape x=4x...``, runs 4 samples), else 1."""
    if batch is not None:
        return batch
    for shape in input_shapes.values():
        if len(shape) > 0:
            return int(shape[0])
    return 1


def _label(paths: Sequence[Path]) -> list[str]:
    """The shortest path tails (file name, then parent/file name, ...) that tell the artifacts apart."""
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def check_settings(
    iters: int | None = None,
    seconds: float | None = None,
    warmup: int = 10,
    layer_runs: int = 20,
    hint: str = "latency",
    infer_precision: str | None = None,
    batch: int | None = None,
    threads: int | None = None,
    turn_ms: float = 25.0,
) -> None:
    """Raise one :class:`EdgeAttnError` (CLI exit 2) naming the first bad profiling setting, else return.

    Called by :func:`profile_artifacts` before any model loads, so a bad number fails at once instead of
    after a long load (or never: a NaN or infinite ``iters`` or ``seconds`` would time forever). ``hint`` and
    ``infer_precision`` are checked for every runtime, though only OpenVINO uses them, so a typo is never
    recorded in a report as if it had been applied.
    """
    if iters is not None and seconds is not None:
        raise EdgeAttnError("give either --iters or --seconds, not both")
    if iters is not None:
        _check_count("--iters", iters, 1)
    if seconds is not None:
        _check_duration("--seconds", seconds)
    _check_count("--warmup", warmup, 0)
    _check_count("--layer-runs", layer_runs, 1)
    _check_duration("turn_ms", turn_ms)
    check_batch_and_threads(batch, threads)
    check_openvino_options(hint, infer_precision)


def _check_count(flag: str, value: object, minimum: int) -> None:
    """``value`` must be an integer (not a bool, a float or a numeric string) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise EdgeAttnError(f"{flag} must be an integer, got {value!r}")
    if value < minimum:
        raise EdgeAttnError(f"{flag} must be >= {minimum}, got {value}")


def _check_duration(flag: str, value: object) -> None:
    """``value`` must be a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, Real) or not (math.isfinite(value) and value > 0):
        raise EdgeAttnError(f"{flag} must be a finite number > 0, got {value!r}")


def _check_shape_names(
    shapes: Mapping[str, Sequence[int]] | None, runners: Sequence[Runner], paths: Sequence[Path]
) -> None:
    """A ``--shape`` whose name no artifact has as an input is a typo: name it instead of ignoring it."""
    known = {name for runner in runners for name in runner.input_shapes}
    unknown = sorted(set(shapes or {}) - known)
    if unknown:
        what = "is not an input" if len(unknown) == 1 else "are not inputs"
        whose = "the artifact's" if len(paths) == 1 else "the artifacts'"
        raise EdgeAttnError(
            f"--shape names {', '.join(repr(n) for n in unknown)}, which {what}; "
            f"{whose} inputs: {', '.join(sorted(known))}"
        )


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def efficiency(
    runner: Runner, macs: int | None, macs_source: str, threads: int | None, probe: bool = True
) -> Efficiency:
    """The peak for what ``runner``'s kernels ran, without the achieved figures (set from the latency later).

    Where the runtime tells the precision each MAC-carrying kernel ran in (ONNX Runtime's trace, read by
    ``runner.executed_macs()`` when ``probe``), the peak is weighted by the MACs per precision
    (:func:`system.mixed_peak_gmacs`); otherwise it is the peak at ``runner.compute_precision``.
    """
    executed = runner.executed_macs(macs) if probe else None
    note = ""
    covered = None
    trace = ""
    if executed and any(executed[0].values()):
        by_precision, how = executed
        trace = runner.peak_trace
        peak, formula, precision = system.mixed_peak_gmacs(by_precision, threads)
        formula += "; precision per MAC kernel from ONNX Runtime's profiling trace" + (f" ({how})" if how else "")
        if macs:
            covered = sum(by_precision.values()) / macs
            if abs(covered - 1) > 0.005:
                note = (
                    f"the trace's MAC kernels cover {covered:.1%} of the graph's {macs} MACs; the peak is weighted "
                    "by those (the rest ran in kernels whose MACs the trace does not tell)"
                )
    else:
        by_precision = {}
        precision = runner.compute_precision
        peak, formula = system.peak_gmacs(precision, threads)
        if runner.runtime == "onnxruntime" and precision != "fp32":
            note = (
                f"peak at the graph's precision ({precision}): no profiling trace told which precision ONNX "
                "Runtime's MAC kernels ran in (unfused Q/DQ Conv/Gemm/MatMul run in fp32)"
            )
    return Efficiency(
        macs=macs,
        macs_source=macs_source,
        peak_gmacs=peak,
        peak_precision=precision,
        peak_formula=formula,
        macs_by_precision=by_precision,
        macs_covered=covered,
        peak_trace=trace,
        note=note,
    )


def profile_artifacts(
    paths: str | Path | Sequence[str | Path],
    runtime: str = "auto",
    device: str | None = None,
    warmup: int = 10,
    iters: int | None = None,
    seconds: float | None = None,
    batch: int | None = None,
    threads: int | None = None,
    per_layer: bool = False,
    shapes: Mapping[str, Sequence[int]] | None = None,
    hint: str = "latency",
    infer_precision: str | None = None,
    layer_runs: int = 20,
    turn_ms: float = 25.0,
    keep_samples: bool = True,
    progress: ProgressFn | None = None,
) -> ProfileReport:
    """Profile one or more artifacts on this machine and return a :class:`ProfileReport`.

    Per artifact: load time, the cold first inference, ``warmup`` untimed runs, then timed runs
    (``iters`` each, or for ``seconds`` in total; default ``DEFAULT_ITERS``), interleaved across artifacts.
    ``per_layer`` adds the runtime's own per-layer breakdown over ``layer_runs`` extra inferences.
    Ctrl-C during warm-up or timing returns the results measured so far with ``interrupted=True``.
    ``paths``: one artifact (a ``str`` or ``Path``) or a sequence of them.
    """
    if isinstance(paths, (str, os.PathLike)):  # one artifact, not a sequence of characters
        paths = [paths]
    if not isinstance(paths, Sequence):
        raise EdgeAttnError(f"paths must be an artifact path or a list of them, got {paths!r}")
    if not paths:
        raise EdgeAttnError("give at least one artifact to profile")
    check_settings(
        iters=iters,
        seconds=seconds,
        warmup=warmup,
        layer_runs=layer_runs,
        hint=hint,
        infer_precision=infer_precision,
        batch=batch,
        threads=threads,
        turn_ms=turn_ms,
    )
    if shapes is not None and not isinstance(shapes, Mapping):
        raise EdgeAttnError(f"shapes must map input names to dims, e.g. {{'x': [1, 3, 32, 32]}}, got {shapes!r}")
    if progress is not None and not callable(progress):
        raise EdgeAttnError(f"progress must be a function (phase, completed, total) or None, got {progress!r}")
    bad = [p for p in paths if not isinstance(p, (str, os.PathLike))]
    if bad:
        raise EdgeAttnError(f"an artifact must be a path (str or Path), got {bad[0]!r}")
    paths = [Path(p) for p in paths]
    runtimes = [check_artifact(path, runtime) for path in paths]  # every path before the first (slow) load
    on_openvino = "openvino" in runtimes
    if not on_openvino:  # OpenVINO's options would be recorded as applied while nothing used them
        given = [f"--{flag} {value}" for flag, value in (("hint", hint), ("infer-precision", infer_precision))
                 if value is not None and (flag != "hint" or value != "latency")]  # fmt: skip
        if given:
            raise EdgeAttnError(
                f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to OpenVINO artifacts (.xml), "
                "and none of these runs in OpenVINO"
            )
    if iters is None and seconds is None:
        iters = DEFAULT_ITERS
    sysrec = system.system_record()
    runners: list[Runner] = []
    load_ms: list[float] = []
    rss_load: list[float] = []  # RSS growth while loading (up to the end of load/compile)
    rss_cold: list[float] = []  # ... and up to the end of the cold first inference (lazy allocations too)
    cold_ms: list[float] = []
    interrupted = False
    try:
        for k, path in enumerate(paths):
            if progress:
                progress("load", k, len(paths))
            rss0 = system.current_rss_mb()
            t0 = time.perf_counter_ns()
            runners.append(
                open_runner(
                    path,
                    runtime,
                    device,
                    threads,
                    batch,
                    shapes,
                    hint,
                    ort_spinning=len(paths) == 1,
                    infer_precision=infer_precision,
                )
            )
            load_ms.append((time.perf_counter_ns() - t0) / 1e6)
            rss_load.append(system.current_rss_mb() - rss0)
            cold_ms.append(_timed(runners[-1]))  # the first inference: lazy allocations, kernel JIT, caches
            rss_cold.append(system.current_rss_mb() - rss0)
        if progress:
            progress("load", len(paths), len(paths))
        _check_shape_names(shapes, runners, paths)
        est: list[float] = []
        try:
            for k, runner in enumerate(runners):
                times = [_timed(runner) for _ in range(warmup)]
                est.append(float(np.median(times[len(times) // 2 :])) if times else cold_ms[k])
                if progress:
                    progress("warmup", k + 1, len(runners))
            # A turn of ~turn_ms per artifact. A single artifact runs back to back anyway; its turns only
            # pace the progress updates, so they can be longer.
            turn = turn_ms if len(runners) > 1 else 8 * turn_ms
            block = [max(1, min(1000, round(turn / max(e, 1e-3)))) for e in est]
            samples, interrupted = interleave(runners, iters, seconds, block, progress)
        except KeyboardInterrupt:
            interrupted = True
            samples = [[] for _ in runners]
            block = [1 for _ in runners]
        results: list[ArtifactResult] = []
        labels = _label(paths)
        batches = [input_batch(runner.input_shapes, batch) for runner in runners]
        all_stats = [latency_stats(s, b) if s else None for s, b in zip(samples, batches, strict=True)]
        layer_breakdowns: list[LayerBreakdown | None] = [None for _ in runners]
        if per_layer and not interrupted:
            # before the peak: ONNX Runtime's kernel probe then reads this trace instead of tracing again
            try:
                for k, runner in enumerate(runners):
                    if progress:
                        progress("layers", k, len(runners))
                    p50 = all_stats[k].p50_ms if all_stats[k] else 0.0
                    layer_breakdowns[k] = runner.profile_layers(layer_runs, p50)
                if progress:
                    progress("layers", len(runners), len(runners))
            except KeyboardInterrupt:
                interrupted = True
        for k, runner in enumerate(runners):
            stats = all_stats[k]
            macs, macs_source = runner.macs()
            try:
                eff = efficiency(runner, macs, macs_source, threads, probe=not interrupted)
            except KeyboardInterrupt:  # during the kernel probe: keep what was timed, peak at the graph's precision
                interrupted = True
                eff = efficiency(runner, macs, macs_source, threads, probe=False)
            if stats and macs:
                eff.achieved_gmacs = macs / (stats.p50_ms * 1e-3) / 1e9
                eff.fraction_of_peak = eff.achieved_gmacs / eff.peak_gmacs if eff.peak_gmacs else None
                if eff.fraction_of_peak is not None and eff.fraction_of_peak > 1:
                    eff.note = _join(
                        eff.note,
                        "achieved GMAC/s exceed the computed peak: the cores ran faster than the clock "
                        f"used ({sysrec.clock_ghz:.3f} GHz) or the kernels compute fewer MACs than the "
                        "graph (e.g. Winograd)",
                    )
            results.append(
                ArtifactResult(
                    artifact=str(paths[k]),
                    label=labels[k],
                    runtime=runner.runtime,
                    runtime_version=runner.version,
                    device=runner.device,
                    precision=runner.precision,
                    input_shapes=runner.input_shapes,
                    batch=batches[k],
                    input_dtypes=getattr(runner, "input_dtypes", {}),
                    settings=runner.settings,
                    load_ms=load_ms[k],
                    cold_ms=cold_ms[k],
                    warmup=warmup,
                    latency=stats,
                    efficiency=eff,
                    rss_after_load_mb=rss_load[k],
                    rss_after_cold_mb=rss_cold[k],
                    parity_failed=failed_parity(paths[k]),
                    samples_ms=samples[k] if keep_samples else [],
                    layers=layer_breakdowns[k],
                )
            )
        first = results[0].latency
        for r in results:
            if first and r.latency:
                r.ratio_to_first = r.latency.p50_ms / first.p50_ms
    finally:
        for runner in runners:
            runner.close()
    return ProfileReport(
        created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        system=sysrec,
        settings={
            "runtime": runtime,
            "device": device,
            "warmup": warmup,
            "iters": iters,
            "seconds": seconds,
            "batch": batch,
            "threads": threads,
            "hint": hint if on_openvino else None,  # OpenVINO's options: none where no artifact ran in it
            "infer_precision": infer_precision if on_openvino else None,
            "per_layer": per_layer,
            "layer_runs": layer_runs,
            "block": block,
            "gc_disabled_while_timing": True,
        },
        interleaved=len(runners) > 1,
        interrupted=interrupted,
        peak_rss_mb=system.peak_rss_mb(),
        load_average_end=system.load_average(),
        results=results,
    )
