"""Latency of every softmax/GELU method, torch float and its ONNX lowering in ONNX Runtime, side by side.

Usage: ``python benchmarks/approx.py [--json FILE] [--budget S] [--threads T] [--force]`` (default JSON:
``benchmarks/approx.json``; an existing one is replaced only with ``--force``; quick check: ``--budget 0 --json
/tmp/approx.json``, 10 repetitions each).
Shapes: softmax on ViT-B attention scores (1, 12, 197, 197), GELU on a ViT-B MLP hidden activation (197, 3072).
All methods of one op in one runtime run once per repetition in rotating order (after warm-up); the JSON has
each method's median ms, its raw per-repetition samples, and its ratio to ``exact`` taken pairwise within each
repetition (the median of those ratios), so drifts of a shared machine's load cancel. On a CPU the
approximations are *not* expected to be faster than the vendor kernels: their value is on integer hardware
(FPGA, integer-only accelerators); this benchmark tells what they cost where they run in float.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _cli import Parser, check_out, command_line, description, nonneg_float, positive_int, provenance, run_cli
from _timing import paired_ratio, time_interleaved  # benchmarks/_timing.py (run as a script)

from edgeattn.approx import GELU_METHODS, SOFTMAX_METHODS
from edgeattn.approx.onnx_lowering import approx_module, export_onnx
from edgeattn.cli._common import write_json

SHAPES = {"softmax": (1, 12, 197, 197), "gelu": (197, 3072)}


def main() -> None:
    """Time every method of both ops in torch and ONNX Runtime; write the JSON."""
    ap = Parser(description=description(__doc__))
    ap.add_argument("--json", type=Path, default=Path(__file__).with_name("approx.json"))
    ap.add_argument(
        "--budget",
        type=nonneg_float,
        default=6.0,
        help="seconds of timed repetitions per op and runtime (10 to 200 repetitions whatever the budget)",
    )
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument(
        "--force", action="store_true", help="replace an existing --json (without it an existing file is refused)"
    )
    args = ap.parse_args()
    out = check_out(args.json, "--json", force=args.force)
    prov = provenance()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    results = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for op, methods in (("softmax", SOFTMAX_METHODS), ("gelu", GELU_METHODS)):
            shape = SHAPES[op]
            x = torch.randn(*shape) * (3.0 if op == "softmax" else 2.0)
            xn = x.numpy().astype(np.float32)
            torch_runs, ort_runs = {}, {}
            for m in methods:
                mod = approx_module(op, m).eval()
                torch_runs[m] = lambda mod=mod, x=x: mod(x)
                sess = ort.InferenceSession(
                    str(export_onnx(op, m, Path(tmp) / f"{op}_{m}.onnx", shape=shape)), so,
                    providers=["CPUExecutionProvider"],
                )
                ort_runs[m] = lambda sess=sess, xn=xn: sess.run(None, {"x": xn})
            t_torch = time_interleaved(torch_runs, args.budget, min_reps=10, max_reps=200)
            t_ort = time_interleaved(ort_runs, args.budget, min_reps=10, max_reps=200)
            for m in methods:
                results.append(
                    {
                        "op": op,
                        "method": m,
                        "shape": list(shape),
                        "torch_ms": t_torch[m]["median_ms"],
                        "ort_ms": t_ort[m]["median_ms"],
                        "torch_ratio_vs_exact": paired_ratio(t_torch, m, "exact"),
                        "ort_ratio_vs_exact": paired_ratio(t_ort, m, "exact"),
                        "reps": t_torch[m]["reps"],
                        "ort_reps": t_ort[m]["reps"],
                        "torch_samples_ms": t_torch[m]["samples"],
                        "ort_samples_ms": t_ort[m]["samples"],
                    }
                )
    payload = {
        "command": command_line(),
        "threads": args.threads,
        "budget_s": args.budget,
        **prov,
        "load_average_at_end": list(os.getloadavg()),
        "units": {"*_ms": "milliseconds per call", "*_ratio_vs_exact": "method time / exact time (>1: slower)"},
        "note": "shared 2-core host: medians; ratios are medians of per-repetition ratios to exact, where all "
        "methods of an op ran once per repetition in rotating order; *_samples_ms are those repetitions",
        "results": results,
    }
    write_json(out, payload)
    for r in results:
        print(
            f"{r['op']:8s} {r['method']:11s} torch {r['torch_ms']:8.3f} ms ({r['torch_ratio_vs_exact']:.2f}x)"
            f"  ort {r['ort_ms']:8.3f} ms ({r['ort_ratio_vs_exact']:.2f}x)"
        )


if __name__ == "__main__":
    sys.exit(run_cli(main))
