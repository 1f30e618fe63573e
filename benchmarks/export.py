"""Export benchmarks -> benchmarks/export.json.

1. ``all_targets``: wall time of exporting ``fmvit_t`` to ONNX, TensorRT (ONNX + lint + trtexec line),
   OpenVINO and Core ML with one ``export_all`` call, each with its parity gates on 32 inputs (goal: < 60 s
   on 2 cores), with each report's per-stage seconds (~0 where the shared cache served a stage).
2. ``openvino_int8_vs_fp32``: OpenVINO CPU latency of the FP32 and INT8 IRs of ``fmvit_t`` and of a
   7-layer 3x3 conv stack (the case measured on an AVX2 host), medians of interleaved runs on ``--threads`` threads, the
   int8/fp32 speed ratio, and whether every Conv/MatMul of the INT8 IR ran in an I8 kernel. With
   ``--isa AVX2`` the same is measured in a child process whose oneDNN kernels are capped at AVX2
   (what a CPU without VNNI runs), and so are the IRs made with the ``intel-avx2-openvino`` profile (int8
   convolutions; Linear layers and the attention core in f32, where OpenVINO's AVX2 kernels are faster).

Usage: python benchmarks/export.py [--img-size 224] [--threads 2] [--torch-threads 1|none] [--isa AVX2]
       [--skip-latency | --skip-all-targets] [--out benchmarks/export.json] [--force]

An existing ``--out`` is replaced only with ``--force``; a section skipped then keeps the figures of that file, and
``sections_run_by`` names the command that measured each section. Quick check: ``--img-size 32 --n-inputs 4
--reps 3 --isa '' --out /tmp/export.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _cli import (
    BenchError,
    Parser,
    check_out,
    command_line,
    description,
    positive_int,
    provenance,
    read_json,
    run_cli,
)
from _timing import paired_ratio, time_interleaved  # benchmarks/_timing.py (run as a script)


def _fmvit_t(img: int):
    import torch

    from edgeattn.models import create_model
    from edgeattn.reparameterize import reparameterize

    torch.manual_seed(0)
    return reparameterize(create_model("fmvit_t", num_classes=10, img_size=img)).eval()


def _conv_stack(img: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers, c = [], 3
    for _ in range(7):
        layers += [nn.Conv2d(c, 64, 3, padding=1), nn.ReLU()]
        c = 64
    model = nn.Sequential(*layers).eval()
    model.input_size = (3, img, img)
    return model


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the machine is shared: wall time inflates)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def all_targets(img: int, n_inputs: int, threads: int, torch_threads: int | None) -> dict:
    """Export fmvit_t to the four targets in one call (``export_all``, as a user would); time each and the total."""
    import torch
    from edgeattn.export import DEFAULT_PROFILES, ParityFailure, export_all

    tmp = Path(tempfile.mkdtemp(prefix="edgeattn-bench-"))
    out = {
        "model": "fmvit_t",
        "img_size": img,
        "n_inputs": n_inputs,
        "threads": threads,
        "torch_threads": torch_threads,
        "targets": {},
    }
    torch.manual_seed(0)  # the registry model's random init: same weights every run
    t_all = time.perf_counter()
    cpu_all = _cpu_seconds()
    try:
        try:
            reports = export_all(
                "fmvit_t",
                tmp,
                n_inputs=n_inputs,
                model_kwargs={"img_size": img, "num_classes": 10},
                threads=threads,
                torch_threads=torch_threads,
            )
        except ParityFailure as exc:  # still a complete export run: keep its figures
            reports = exc.reports
        out["total_seconds"] = round(time.perf_counter() - t_all, 2)
        out["total_cpu_seconds"] = round(_cpu_seconds() - cpu_all, 2)
        for target, rep in reports.items():
            out["targets"][target] = {
                "profile": DEFAULT_PROFILES[target],
                "precision": rep.precision,
                "passed": rep.passed,
                "parity_inputs": sum(rep.parity_inputs.values()),
                "timings_s": rep.timings_s,
                "parity": {p["runtime"]: round(p["max_abs_rel_range"], 6) for p in rep.parity},
                "first_diverging_node": {
                    p["runtime"]: p["first_diverging_node"]["node"]
                    for p in rep.parity
                    if p.get("first_diverging_node")
                },
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["load_average_1m"] = round(os.getloadavg()[0], 2)
    out["goal_seconds"] = 60
    return out


def _irs(model, img: int, tmp: Path, profile: str = "intel-vnni-openvino") -> dict[str, Path]:
    """FP32 and INT8 (PTQ on digits, quantized as ``profile`` says) OpenVINO IRs of ``model``."""
    import torch
    from edgeattn.export.onnx_export import export_onnx, save_onnx
    from edgeattn.export.openvino_target import convert_to_ir
    from edgeattn.quant import ptq

    from edgeattn.data import digits_dataset

    x = torch.randn(1, 3, img, img)
    calib = digits_dataset(img_size=img, in_chans=3, split="train").tensors[0][:16]
    qmodel = ptq(model, profile, [calib]).eval()
    tmp.mkdir(parents=True, exist_ok=True)
    paths = {}
    for tag, m, prec in (("fp32", model, "fp32"), ("int8", qmodel, "int8")):
        onnx_path = save_onnx(export_onnx(m, x, precision=prec).model, tmp / f"{tag}.onnx")
        paths[tag] = convert_to_ir(onnx_path, tmp / f"{tag}.xml")
    return paths


def latency_pair(paths: dict[str, str], img: int, threads: int, reps: int) -> dict:
    """Interleaved median latencies of the FP32 and INT8 IRs, their paired speed-up, and the INT8 IR's kernel
    check (in-process)."""
    from edgeattn.export.openvino_target import OpenVINORunner, kernel_report

    x = np.random.default_rng(0).standard_normal((1, 3, img, img)).astype(np.float32)
    runners = {k: OpenVINORunner(v, threads=threads) for k, v in paths.items()}
    # both IRs once per repetition in rotating order; the speed-up is the median of per-repetition ratios
    timing = time_interleaved({k: (lambda r=r: r(x)) for k, r in runners.items()}, 0.0, min_reps=reps, max_reps=reps)
    kernels = kernel_report(runners["int8"], x)
    exec_types = sorted({n["exec_type"] for n in kernels["nodes"]})
    for r in runners.values():
        r.close()
    fp32, int8 = timing["fp32"]["median_ms"], timing["int8"]["median_ms"]
    return {
        "fp32_ms": round(fp32, 3),
        "int8_ms": round(int8, 3),
        "int8_speedup": round(paired_ratio(timing, "fp32", "int8"), 3),
        "int8_speedup_of_medians": round(fp32 / int8, 3),
        "int8_all_i8_kernels": kernels["all_int8"],
        "int8_convolutions_all_i8": all(
            n["int8"] for n in kernels["nodes"] if n["type"] in ("Convolution", "GroupConvolution")
        ),
        "int8_f32_compute_nodes": sorted({n["type"] for n in kernels["nodes"] if not n["int8"]}),
        "int8_compute_nodes": kernels["count"],
        "int8_exec_types": exec_types,
        "reps": reps,
        "threads": threads,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _capped_latency(paths: dict[str, str], isa: str, img: int, threads: int, reps: int) -> dict:
    """:func:`latency_pair` in a child process whose oneDNN kernels are capped at ``isa``."""
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa)
    cmd = [
        sys.executable,
        __file__,
        "--latency-child",
        json.dumps(paths),
        "--img-size",
        str(img),
        "--threads",
        str(threads),
        "--reps",
        str(reps),
    ]
    child = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if child.returncode != 0:  # e.g. an ISA name oneDNN does not know
        tail = (child.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise BenchError(f"the latency child with ONEDNN_MAX_CPU_ISA={isa} failed ({child.returncode}): {tail}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def openvino_int8_vs_fp32(img: int, threads: int, reps: int, isa: str | None) -> dict:
    from edgeattn.hostinfo import detect_host

    host = detect_host()
    out: dict = {"host_cpu": host.cpu_model, "host_has_vnni": host.has_vnni, "img_size": img}
    tmp = Path(tempfile.mkdtemp(prefix="edgeattn-bench-ov-"))
    try:
        for name, build in (("conv_stack_7x3x3", _conv_stack), ("fmvit_t", _fmvit_t)):
            model = build(img)
            paths = {k: str(v) for k, v in _irs(model, img, tmp / name).items()}
            out[name] = {"native": latency_pair(paths, img, threads, reps)}
            if isa:
                out[name][f"isa_{isa.lower()}"] = _capped_latency(paths, isa, img, threads, reps)
                # the profile made for such CPUs: int8 convolutions, Linear layers and attention in f32
                avx2 = {k: str(v) for k, v in _irs(model, img, tmp / f"{name}_avx2", "intel-avx2-openvino").items()}
                out[name][f"isa_{isa.lower()}_profile_intel-avx2-openvino"] = _capped_latency(
                    avx2, isa, img, threads, reps
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _torch_threads(text: str) -> list[int | None]:
    """``--torch-threads``: ``"1,none"`` -> ``[1, None]``; a :class:`BenchError` for anything else."""
    values: list[int | None] = []
    for item in text.split(","):
        item = item.strip().lower()
        if item == "none":
            values.append(None)
        elif item.isdigit() and int(item) >= 1:
            values.append(int(item))
        else:
            raise BenchError(f"--torch-threads takes integers >= 1 or 'none', comma-separated; got '{text}'")
    return values


# the two sections, and the top-level keys each one writes
SECTIONS = {
    "all_targets": ("all_targets", "all_targets_other_torch_threads"),
    "openvino_int8_vs_fp32": ("openvino_int8_vs_fp32",),
}


def check_isa(isa: str) -> str | None:
    """``--isa`` as oneDNN spells it, ``None`` for ``''`` (no capped run), or a :class:`BenchError`: oneDNN
    ignores a name it does not know, so the "capped" run would be one at the native ISA under a wrong label."""
    from edgeattn.export.openvino_target import ONEDNN_ISAS

    name = isa.strip().upper()
    if not name:
        return None
    if name not in ONEDNN_ISAS:
        raise BenchError(f"--isa '{isa}' is not a oneDNN ISA; choose one of {', '.join(ONEDNN_ISAS)} ('' to skip)")
    return name


def _measured_by(previous: dict, section: str) -> dict:
    """Which run measured ``section`` of an earlier JSON: its ``sections_run_by`` entry; for a file written before
    that existed, the section's own ``command``, else the file's unless that run kept the section from another."""
    recorded = previous.get("sections_run_by", {}).get(section)
    if recorded:
        return recorded
    own = previous[section].get("command") if isinstance(previous[section], dict) else None
    if own:
        return {"command": own}
    if "command" in previous and section not in previous.get("sections_from_previous_run", []):
        return {"command": previous["command"]}
    return {"command": "not recorded (kept from a file written before sections_run_by existed)"}


def keep_skipped(result: dict, previous: dict, skipped: list[str]) -> None:
    """Copy the ``skipped`` sections' figures from ``previous`` (the file being replaced) into ``result``, with
    the run that measured them in ``result["sections_run_by"]``; a section ``previous`` lacks stays absent."""
    for section in skipped:
        if section not in previous:
            continue
        for key in SECTIONS[section]:
            if key in previous:
                result[key] = previous[key]
        result["sections_run_by"][section] = _measured_by(previous, section)
        result.setdefault("sections_from_previous_run", []).append(section)


def main() -> None:
    """Run the sections asked for and write the JSON (or, as ``--latency-child``, print one latency pair)."""
    ap = Parser(description=description(__doc__))
    ap.add_argument("--img-size", type=positive_int, default=224)
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--reps", type=positive_int, default=30)
    ap.add_argument(
        "--n-inputs", type=positive_int, default=32, help="parity inputs per gate (export_model's default)"
    )
    ap.add_argument(
        "--torch-threads",
        default="1",
        help="torch intra-op threads during the export (export_model's default 1; 'none': leave at --threads); "
        "a comma list (e.g. '1,none') runs the all-targets export once per value, back to back",
    )
    ap.add_argument("--skip-latency", action="store_true", help="only the all-targets export run")
    ap.add_argument("--isa", default="AVX2", help="also measure with oneDNN capped at this ISA ('' to skip)")
    ap.add_argument("--skip-all-targets", action="store_true", help="only the OpenVINO latency section")
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    ap.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --out (a skipped section keeps that file's figures); without it an existing "
        "file is refused",
    )
    ap.add_argument("--latency-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.latency_child:
        print(
            json.dumps(latency_pair(json.loads(args.latency_child), args.img_size, args.threads, args.reps))
        )
        return
    runs = _torch_threads(args.torch_threads)
    if args.skip_latency and args.skip_all_targets:
        raise BenchError("--skip-latency and --skip-all-targets together leave nothing to measure")
    isa = check_isa(args.isa)
    out = check_out(args.out, "--out", force=args.force)
    previous = read_json(out, "--out") if out.exists() else {}  # read now: a bad file fails before measuring
    skip = {"all_targets": args.skip_all_targets, "openvino_int8_vs_fp32": args.skip_latency}
    skipped = [section for section, skipping in skip.items() if skipping]
    prov = provenance()
    result = {
        "command": command_line(),
        **prov,
        "units": {
            "*_seconds, timings_s": "seconds (wall, except total_cpu_seconds)",
            "*_ms": "milliseconds per inference (median)",
            "int8_speedup": "FP32 time / INT8 time (> 1: INT8 faster)",
            "parity": "max abs error / output range",
        },
    }
    if not args.skip_all_targets:
        result["all_targets"] = all_targets(args.img_size, args.n_inputs, args.threads, runs[0])
        if len(runs) > 1:  # the same run with other torch thread counts, back to back (same machine load)
            result["all_targets_other_torch_threads"] = [
                all_targets(args.img_size, args.n_inputs, args.threads, tt) for tt in runs[1:]
            ]
    if not args.skip_latency:
        result["openvino_int8_vs_fp32"] = openvino_int8_vs_fp32(
            args.img_size, args.threads, args.reps, isa
        )
    run_by = {"command": result["command"], "started_utc": prov["started_utc"], "host": prov["host"]["cpu_model"]}
    result["sections_run_by"] = {s: run_by for s in SECTIONS if s not in skipped}
    keep_skipped(result, previous, skipped)
    from edgeattn.cli._common import write_json

    result["load_average_at_end"] = list(os.getloadavg())
    write_json(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(run_cli(main))
