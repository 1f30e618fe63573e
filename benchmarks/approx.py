"""Latency of every softmax/GELU method, torch float and its ONNX lowering in ONNX Runtime, side by side.

Usage: ``python benchmarks/approx.py [--json FILE] [--repeats N] [--threads T]``. Shapes: softmax on ViT-B
attention scores (1, 12, 197, 197), GELU on a ViT-B MLP hidden activation (197, 3072). Reports the median of
``repeats`` timed runs (after warm-up) and the ratio to the ``exact`` method measured in the same run. On a
CPU the approximations are *not* expected to be faster than the vendor kernels: their value is on integer
hardware (FPGA, integer-only accelerators); this benchmark tells what they cost where they run in float.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeattn.approx import GELU_METHODS, SOFTMAX_METHODS
from edgeattn.approx.onnx_lowering import approx_module, export_onnx

SHAPES = {"softmax": (1, 12, 197, 197), "gelu": (197, 3072)}


def _median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for op, methods in (("softmax", SOFTMAX_METHODS), ("gelu", GELU_METHODS)):
            shape = SHAPES[op]
            x = torch.randn(*shape) * (3.0 if op == "softmax" else 2.0)
            xn = x.numpy().astype(np.float32)
            for m in methods:
                mod = approx_module(op, m).eval()
                with torch.inference_mode():
                    t_torch = _median_ms(lambda mod=mod, x=x: mod(x), args.repeats)
                path = export_onnx(op, m, Path(tmp) / f"{op}_{m}.onnx", shape=shape)
                sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                t_ort = _median_ms(lambda sess=sess, xn=xn: sess.run(None, {"x": xn}), args.repeats)
                results.append(
                    {"op": op, "method": m, "shape": list(shape), "torch_ms": t_torch, "ort_ms": t_ort}
                )
    for r in results:
        base = next(b for b in results if b["op"] == r["op"] and b["method"] == "exact")
        r["torch_ratio_vs_exact"] = r["torch_ms"] / base["torch_ms"]
        r["ort_ratio_vs_exact"] = r["ort_ms"] / base["ort_ms"]
    payload = {"threads": args.threads, "repeats": args.repeats, "results": results}
    text = json.dumps(payload, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
