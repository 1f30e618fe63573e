"""Benchmark of the latency profiler (issue 7). Writes benchmarks/profile.json.

Sections (every figure measured in this run; ratios from runs interleaved or alternated in one run):

* ``models``: FP32 vs FP16 vs INT8 of each registered vision model on ONNX Runtime and on OpenVINO, profiled
  interleaved per runtime with ``edgeattn.profile.profile_artifacts`` (p50, mean, std, ratio to FP32, GMAC/s,
  fraction of peak, per-layer sum vs end-to-end, time per execution precision).
  FP32 ONNX comes from torch.onnx.export here; FP16 ONNX and INT8 (brevitas PTQ, QDQ) from the project's
  exporter (``edgeattn.export.onnx_export.export_onnx``) when it imports; OpenVINO IR from OpenVINO's own
  converter (FP16 = ``compress_to_fp16``).
* ``agreement``: the profiler's median vs OpenVINO's ``benchmark_app`` (same threads,
  ``-hint none -nstreams 1``, sync API) for fmvit_t FP32 and INT8 IR, and vs a plain timed ONNX Runtime loop
  in a separate process; the two tools alternate ``--rounds`` times, the ratio is of the medians of their
  medians. Target: within 10%.
* ``overhead``: the profiler (CLI, separate process) vs a plain timed loop on a sub-ms model (target < 5%), and
  the timing loop's own per-inference cost measured on a no-op runner.

Usage: python benchmarks/profiler.py [--models fmvit_t,mobilenetv2] [--threads 2] [--iters 40] [--rounds 7]
       [--skip models,agreement,overhead]   (skipped sections keep the figures of the previous JSON)

Each section's own command and settings are in ``sections_run_by`` (a kept section keeps those of the run that
measured it). Quick check: ``--models mobilenetv2 --iters 5 --rounds 1 --skip agreement,overhead --out /tmp/p.json``.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
from _cli import BenchError, Parser, check_out, command_line, description, positive_int, read_json, run_cli

SECTIONS = ("models", "agreement", "overhead")

# This file is named like the standard library's `profile` module (which cProfile, and through it
# torch.export, imports): drop the script's own folder from the import path before torch is imported.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

PLAIN_ORT = r"""
import sys, time, numpy as np, onnxruntime as ort
path, threads, iters, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
so = ort.SessionOptions(); so.intra_op_num_threads = threads
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
shape = [d if isinstance(d, int) else 1 for d in i.shape]
x = {i.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
for _ in range(warm): s.run(None, x)
ts = []
for _ in range(iters):
    t = time.perf_counter(); s.run(None, x); ts.append(time.perf_counter() - t)
print(float(np.median(ts)) * 1e3, float(np.min(ts)) * 1e3)
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:240] if text else ''}"


# ------------------------------------------------------------------ artifacts


def export_variants(name: str, work: Path) -> dict[str, object]:
    """ONNX fp32/fp16/int8 and OpenVINO IR fp32/fp16/int8 of registry model ``name`` (cached in ``work``)."""
    import openvino as ov
    import torch

    import edgeattn
    from edgeattn.models import create_model

    torch.set_num_threads(2)
    out: dict[str, object] = {"pending": {}}
    model = edgeattn.reparameterize(create_model(name).eval())
    example = torch.randn(1, *model.input_size)
    fp32 = work / f"{name}_fp32.onnx"
    if not fp32.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(fp32), dynamo=True, opset_version=18, input_names=["x"])
    out["onnx_fp32"] = fp32
    try:
        from edgeattn.export.onnx_export import export_onnx, save_onnx
    except ImportError as exc:
        export_onnx = save_onnx = None
        out["pending"]["exporter"] = first_line(exc)
    if export_onnx is not None:
        fp16 = work / f"{name}_fp16.onnx"
        try:
            if not fp16.exists():
                save_onnx(export_onnx(model, example, precision="fp16").model, fp16)
            out["onnx_fp16"] = fp16
        except Exception as exc:
            out["pending"]["onnx_fp16"] = first_line(exc)
        int8 = work / f"{name}_int8.onnx"
        try:
            if not int8.exists():
                from edgeattn.quant.ptq import ptq

                from edgeattn.hostinfo import detect_host

                gen = torch.Generator().manual_seed(0)
                calib = [torch.randn(8, *model.input_size, generator=gen) for _ in range(2)]
                qmodel = ptq(model, detect_host().matching_profile, calib)
                save_onnx(export_onnx(qmodel, example, precision="int8").model, int8)
            out["onnx_int8"] = int8
        except Exception as exc:
            out["pending"]["onnx_int8"] = first_line(exc)
    for prec, src, compress in (
        ("fp32", "onnx_fp32", False),
        ("fp16", "onnx_fp32", True),
        ("int8", "onnx_int8", False),
    ):
        if src not in out:
            continue
        xml = work / f"{name}_{prec}.xml"
        try:
            if not xml.exists():
                ov.save_model(ov.convert_model(str(out[src])), str(xml), compress_to_fp16=compress)
            out[f"ov_{prec}"] = xml
        except Exception as exc:
            out["pending"][f"ov_{prec}"] = first_line(exc)
    return out


def summarize(report) -> list[dict[str, object]]:
    rows = []
    for r in report.results:
        lat, ef, b = r.latency, r.efficiency, r.layers
        rows.append(
            {
                "artifact": Path(r.artifact).name,
                "runtime": r.runtime,
                "graph_precision": r.precision,
                "openvino_inference_precision": r.settings.get("INFERENCE_PRECISION_HINT"),
                "p50_ms": lat.p50_ms if lat else None,
                "mean_ms": lat.mean_ms if lat else None,
                "std_ms": lat.std_ms if lat else None,
                "min_ms": lat.min_ms if lat else None,
                "p90_ms": lat.p90_ms if lat else None,
                "cold_ms": r.cold_ms,
                "n": lat.count if lat else 0,
                "ratio_to_fp32": r.ratio_to_first,
                "macs": ef.macs,
                "achieved_gmacs": ef.achieved_gmacs,
                "peak_gmacs": ef.peak_gmacs,
                "peak_formula": ef.peak_formula,
                "fraction_of_peak": ef.fraction_of_peak,
                "per_layer_sum_ms": b.total_ms if b else None,
                "per_layer_sum_over_e2e_p50": b.sum_over_end_to_end if b else None,
                "per_layer_sum_over_profiled_p50": b.sum_over_profiled if b else None,
                "per_layer_per_run_coverage": b.per_run_coverage if b else None,
                "per_layer_interleaved_e2e_ms": b.interleaved_e2e_ms if b else None,
                "per_layer_sum_over_interleaved_e2e": b.sum_over_interleaved_e2e if b else None,
                "per_layer_within_15pct": abs(b.sum_over_interleaved_e2e - 1.0) <= 0.15
                if b and b.sum_over_interleaved_e2e
                else None,
                "per_layer_profiler_cost_ms_per_layer": b.instrumentation_ms_per_layer if b else None,
                "per_layer_sum_uncorrected_ms": b.uncorrected_total_ms if b else None,
                "per_layer_ms_by_precision": b.by_precision if b else None,
                "per_layer_top_ops": dict(list(b.by_op_type.items())[:5]) if b else None,
            }
        )
    return rows


def per_layer_summary(models: dict[str, object]) -> dict[str, object]:
    """Per runtime: per-layer sums over the end-to-end time of unprofiled inferences interleaved with the profiled
    ones (target: within 15%)."""
    out: dict[str, object] = {}
    for runtime in ("onnxruntime", "openvino"):
        ratios = {
            row["artifact"]: row["per_layer_sum_over_interleaved_e2e"]
            for entry in models.values()
            if isinstance(entry, dict) and isinstance(entry.get(runtime), list)
            for row in entry[runtime]
            if row.get("per_layer_sum_over_interleaved_e2e") is not None
        }
        if ratios:
            vals = sorted(ratios.values())
            out[runtime] = {
                "sum_over_interleaved_e2e_min": vals[0],
                "sum_over_interleaved_e2e_median": statistics.median(vals),
                "sum_over_interleaved_e2e_max": vals[-1],
                "within_15pct": sum(abs(v - 1.0) <= 0.15 for v in vals),
                "artifacts": len(vals),
                "outside_15pct": {k: v for k, v in ratios.items() if abs(v - 1.0) > 0.15},
            }
    return out


def bench_models(names: list[str], work: Path, threads: int, iters: int) -> dict[str, object]:
    from edgeattn.profile import profile_artifacts

    results: dict[str, object] = {}
    for name in names:
        log(f"model {name}: exporting")
        entry: dict[str, object] = {}
        try:
            arts = export_variants(name, work)
        except Exception as exc:
            results[name] = {"error": first_line(exc)}
            log(f"  export failed: {first_line(exc)}")
            continue
        entry["pending"] = arts["pending"]
        for runtime, keys in (
            ("onnxruntime", ("onnx_fp32", "onnx_fp16", "onnx_int8")),
            ("openvino", ("ov_fp32", "ov_fp16", "ov_int8")),
        ):
            paths = [arts[k] for k in keys if k in arts]
            log(f"  {runtime}: profiling {[p.name for p in paths]}")
            try:
                report = profile_artifacts(
                    paths, threads=threads, warmup=5, iters=iters, per_layer=True, layer_runs=20
                )
                entry[runtime] = summarize(report)
                entry[f"{runtime}_load_average"] = [report.system.load_average, report.load_average_end]
            except Exception as exc:
                entry[runtime] = {"error": first_line(exc)}
                log(f"  failed: {first_line(exc)}")
        # OpenVINO's FP32 IR again with f32 inference precision (the CPU plugin defaults to bf16 where it can)
        if "ov_fp32" in arts:
            try:
                report = profile_artifacts(
                    [arts["ov_fp32"]], threads=threads, warmup=5, iters=iters, infer_precision="f32"
                )
                entry["openvino_fp32_f32_hint"] = summarize(report)
            except Exception as exc:
                entry["openvino_fp32_f32_hint"] = {"error": first_line(exc)}
        results[name] = entry
    return results


# ------------------------------------------------------------------ agreement with other tools


def _run(cmd: list[str], timeout: int = 600) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}... failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return proc.stdout


def ours_cli(path: Path, threads: int, iters: int, warmup: int, extra: list[str]) -> tuple[float, float]:
    """(p50, min) in ms from ``edgeattn profile`` run in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cli = "import sys; from edgeattn.cli import main; sys.exit(main())"
        _run(
            [
                sys.executable,
                "-c",
                cli,
                "profile",
                str(path),
                "--threads",
                str(threads),
                "--iters",
                str(iters),
                "--warmup",
                str(warmup),
                "--json",
                str(out),
                *extra,
            ]
        )
        lat = json.loads(out.read_text())["results"][0]["latency"]
        return lat["p50_ms"], lat["min_ms"]


def benchmark_app(path: Path, threads: int, iters: int) -> tuple[float, float]:
    """(median, min) in ms from OpenVINO's benchmark_app with the same threads, one stream, sync API."""
    exe = Path(sys.executable).with_name("benchmark_app")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "openvino.tools.benchmark.main"]
    text = _run(
        [
            *cmd,
            "-m",
            str(path),
            "-d",
            "CPU",
            "-hint",
            "none",
            "-nthreads",
            str(threads),
            "-nstreams",
            "1",
            "-api",
            "sync",
            "-niter",
            str(iters),
        ]
    )
    # benchmark_app switches to microseconds below 1 ms ("Median: 935.96 us")
    med = re.search(r"Median:\s+([0-9.]+)\s*(ms|us)", text)
    low = re.search(r"Min:\s+([0-9.]+)\s*(ms|us)", text)
    if not med or not low:
        raise RuntimeError("no 'Median:'/'Min:' lines in benchmark_app output")
    return tuple(float(m.group(1)) / (1000.0 if m.group(2) == "us" else 1.0) for m in (med, low))


def plain_ort(path: Path, threads: int, iters: int, warmup: int) -> tuple[float, float]:
    """(median, min) in ms from a plain timed ONNX Runtime loop in a separate process."""
    out = _run([sys.executable, "-c", PLAIN_ORT, str(path), str(threads), str(iters), str(warmup)]).split()
    return float(out[0]), float(out[1])


def alternate(a, b, rounds: int) -> dict[str, object]:
    """Run a() and b() (each -> (p50, min) in ms) alternately ``rounds`` times, a first in even rounds and b
    first in odd ones (so neither always runs on the machine the other has just warmed or loaded).

    ``ratio``: median of the profiler's p50s over the median of the reference's p50s (the target's figure).
    ``ratio_paired``: median over rounds of the profiler's p50 / the reference's p50 of the same round.
    ``ratio_of_minimums``: the same for the minimum latencies, which on a machine shared with other tenants
    estimates the uncontended state of both tools (a p50 moves whenever a neighbour takes a core).
    """
    xs, ys = [], []
    for r in range(rounds):
        if r % 2:
            ys.append(b())
            xs.append(a())
        else:
            xs.append(a())
            ys.append(b())
    ma, mb = statistics.median(x[0] for x in xs), statistics.median(y[0] for y in ys)
    la, lb = min(x[1] for x in xs), min(y[1] for y in ys)
    return {
        "profiler_p50_min_ms_per_round": xs,
        "reference_p50_min_ms_per_round": ys,
        "profiler_median_ms": ma,
        "reference_median_ms": mb,
        "ratio": ma / mb,
        "ratio_paired": statistics.median(x[0] / y[0] for x, y in zip(xs, ys, strict=True)),
        "within_10pct": abs(ma / mb - 1) <= 0.10,
        "profiler_min_ms": la,
        "reference_min_ms": lb,
        "ratio_of_minimums": la / lb,
        "load_average_after": list(os.getloadavg()),
    }


def bench_agreement(work: Path, threads: int, iters: int, rounds: int) -> dict[str, object]:
    out: dict[str, object] = {"threads": threads, "iters": iters, "rounds": rounds}
    for prec in ("fp32", "int8"):
        xml = work / f"fmvit_t_{prec}.xml"
        if not xml.exists():
            out[f"openvino_{prec}"] = {"pending": f"{xml.name} was not produced (see models.fmvit_t.pending)"}
            continue
        log(f"agreement: benchmark_app vs profiler on {xml.name}, {threads} threads")
        try:
            res = alternate(
                lambda xml=xml: ours_cli(xml, threads, iters, 10, ["--hint", "none"]),
                lambda xml=xml: benchmark_app(xml, threads, iters),
                rounds,
            )
            out[f"openvino_{prec}"] = {"reference": "benchmark_app -hint none -nstreams 1 -api sync", **res}
        except Exception as exc:
            out[f"openvino_{prec}"] = {"error": first_line(exc)}
    onnx_path = work / "fmvit_t_fp32.onnx"
    if onnx_path.exists():
        log(f"agreement: plain ORT loop vs profiler on fmvit_t_fp32.onnx, {threads} threads")
        res = alternate(
            lambda: ours_cli(onnx_path, threads, iters, 10, []),
            lambda: plain_ort(onnx_path, threads, iters, 10),
            rounds,
        )
        out["onnxruntime_fp32"] = {"reference": "plain timed loop, separate process", **res}
    return out


# ------------------------------------------------------------------ overhead


def small_model(path: Path) -> Path:
    """A conv net of 0.74 ms on 1 thread, 0.38 ms on 2 (48x48 input, 32 channels, 5 convs; profile.json)."""
    import torch

    if path.exists():
        return path
    layers: list[torch.nn.Module] = [torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU()]
    for _ in range(4):
        layers += [torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU()]
    net = torch.nn.Sequential(
        *layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            (torch.randn(1, 3, 48, 48),),
            str(path),
            dynamo=True,
            opset_version=18,
            input_names=["x"],
        )
    return path


def bench_overhead(work: Path, threads: int, rounds: int) -> dict[str, object]:
    from edgeattn.profile import measure
    from edgeattn.profile.runners import Runner

    path = small_model(work / "small_1ms.onnx")
    log(f"overhead: profiler vs plain loop on a sub-ms model, {threads} threads")
    res = alternate(
        lambda: ours_cli(path, threads, 400, 50, []), lambda: plain_ort(path, threads, 400, 50), rounds
    )

    class Noop(Runner):
        def run(self) -> None:
            pass

    noop = Noop(path=None)
    n = 20000
    samples, _ = measure.interleave([noop], iters=n, seconds=None, block=[n])
    t0 = time.perf_counter_ns()
    for _ in range(n):
        noop.run()
    bare_us = (time.perf_counter_ns() - t0) / n / 1e3
    loop_us = float(np.median(samples)) * 1e3
    return {
        "model": "5-conv net, 48x48x32, ONNX Runtime",
        "threads": threads,
        **res,
        "added_fraction": res["ratio"] - 1,
        "below_5pct": res["ratio"] - 1 < 0.05,
        "added_fraction_minimums": res["ratio_of_minimums"] - 1,
        "timing_loop_cost_us_per_inference": loop_us,
        "bare_python_call_us": bare_us,
        "timing_loop_cost_fraction_of_1ms": loop_us / 1000.0,
    }


def _older_run_by(previous: dict, key: str) -> dict[str, object]:
    """Which run measured section ``key`` of a JSON written before ``sections_run_by`` existed: the run that wrote
    it, unless that run kept the section from an earlier one (then it is not recorded)."""
    if "command" in previous and key not in previous.get("sections_from_previous_run", []):
        return {"command": previous["command"], "settings": previous.get("settings")}
    return {"command": "not recorded (kept from a run before sections_run_by existed)"}


def main() -> int:
    """Run the sections not skipped, keep the skipped ones from the previous ``--out``, write the JSON."""
    ap = Parser(description=description(__doc__))
    ap.add_argument("--models", default="all", help="comma-separated registry names, or 'all' vision models")
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--iters", type=positive_int, default=40)
    ap.add_argument("--rounds", type=positive_int, default=7)
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="folder for the exported artifacts (default: a fresh temporary one). An existing folder's exports are "
        "reused as they are, so only pass one made by this same edgeattn version",
    )
    ap.add_argument("--out", type=Path, default=HERE / "profile.json")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: models,agreement,overhead")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if skip - set(SECTIONS):
        raise BenchError(f"--skip: unknown section(s) {', '.join(sorted(skip - set(SECTIONS)))}; sections: "
                         f"{', '.join(SECTIONS)}")
    if skip == set(SECTIONS):  # a run would only rewrite the file's command and settings over older figures
        raise BenchError(f"--skip: every section ({', '.join(SECTIONS)}) skipped, nothing to measure")
    out = check_out(args.out, "--out")
    previous = read_json(out, "--out") if out.exists() else {}  # read now: a bad file fails before measuring
    if args.workdir is not None and args.workdir.exists() and not args.workdir.is_dir():
        raise BenchError(f"--workdir '{args.workdir}' exists and is not a folder")
    from edgeattn.models import list_models

    names = (
        [n for n in list_models() if n != "tiny_llama"] if args.models == "all" else args.models.split(",")
    )
    if set(names) - set(list_models()):
        raise BenchError(f"--models: unknown {', '.join(sorted(set(names) - set(list_models())))}; registered: "
                         f"{', '.join(list_models())}")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.workdir is None:  # fresh, so no export of an older model or quantizer is timed by mistake
        args.workdir = Path(tempfile.mkdtemp(prefix="edgeattn-profile-bench-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    from edgeattn.cli._common import write_json
    from edgeattn.profile.system import system_record

    started = time.time()
    run_by = {
        "command": command_line(),
        "settings": {"threads": args.threads, "iters": args.iters, "rounds": args.rounds},
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    result: dict[str, object] = {
        "command": run_by["command"],
        "system": system_record().model_dump(mode="json"),
        "settings": run_by["settings"],
        "units": {
            "*_ms": "milliseconds per inference",
            "ratio, ratio_paired, ratio_of_minimums": "profiler time / reference tool time",
            "ratio_to_fp32": "artifact time / FP32 artifact time (< 1: faster)",
        },
    }
    # the agreement needs fmvit_t's artifacts: export them first even when only agreement runs
    if "models" not in skip:
        result["models"] = bench_models(names, args.workdir, args.threads, args.iters)
    elif "agreement" not in skip:
        export_variants("fmvit_t", args.workdir)
    thread_counts = sorted({1, args.threads})  # 1 thread as well: a neighbour taking one core hurts it less
    if "agreement" not in skip:
        result["agreement"] = {}
        for th in thread_counts:
            try:
                result["agreement"][f"threads_{th}"] = bench_agreement(args.workdir, th, 100, args.rounds)
            except Exception as exc:
                result["agreement"][f"threads_{th}"] = {
                    "error": first_line(exc),
                    "trace": traceback.format_exc(),
                }
    if "overhead" not in skip:
        result["overhead"] = {
            f"threads_{th}": bench_overhead(args.workdir, th, args.rounds) for th in thread_counts
        }
    # which run measured each section: this one, or (for a section skipped now) the one the previous JSON names
    sections_run_by: dict[str, object] = {key: run_by for key in SECTIONS if key in result}
    for key in SECTIONS:  # sections skipped in this run keep their previous figures
        if key not in result and key in previous:
            result[key] = previous[key]
            result.setdefault("sections_from_previous_run", []).append(key)
            sections_run_by[key] = previous.get("sections_run_by", {}).get(key) or _older_run_by(previous, key)
    result["sections_run_by"] = sections_run_by
    if isinstance(result.get("models"), dict):
        result["per_layer_summary"] = per_layer_summary(result["models"])
    result["wall_s"] = round(time.time() - started, 1)
    result["load_average_end"] = list(os.getloadavg())
    write_json(out, result)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
