"""HLS benchmark: C simulation of one encoder layer (65 tokens, dim 192, 3 heads) at parallelism 1, 2, 4,
the fixed-point error against float as the widths shrink, and the analytical estimate.

    python benchmarks/hls.py [--json benchmarks/hls.json] [--vectors 4] [--quick] [--force]

An existing ``--json`` is replaced only with ``--force``. ``--quick`` (a check that the script runs, about a
minute; write it to ``--json /tmp/hls.json``): layer 0 at parallelism 1 only, and the width sweep without its C
simulation. Writes JSON with, per run: csim compile/run seconds, mismatches against the golden model, max abs error
and cosine against the float PyTorch layer; the width sweep (golden model, which the C simulation equals bit for
bit, confirmed by a C simulation at the narrowest setting); and cycles / DSP / BRAM / latency per parallelism; plus
the command, host, versions and load average.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _cli import Parser, check_out, command_line, description, positive_int, provenance, run_cli
from edgeattn.fpga_hls import HLSFormats, estimate_model, generate_project, run_csim

from edgeattn.cli._common import write_json
from edgeattn.models import create_model

WIDTHS = [  # (act width, act integer, weight width, weight integer, softmax_out_frac)
    (32, 10, 16, 2, 12),  # wider softmax probabilities: the 8-bit probabilities dominate the default error
    (32, 10, 16, 2, 8),
    (28, 10, 14, 2, 8),
    (24, 10, 12, 2, 8),
    (20, 8, 10, 2, 6),
    (16, 6, 8, 2, 6),
]


def main() -> None:
    """C-simulate, sweep the widths, estimate; write the JSON."""
    ap = Parser(description=description(__doc__))
    ap.add_argument("--json", type=Path, default=Path(__file__).with_name("hls.json"))
    ap.add_argument("--vectors", type=positive_int, default=4, help="random input images per C simulation")
    ap.add_argument("--quick", action="store_true", help="layer 0 at P=1 only, width sweep without C simulation")
    ap.add_argument(
        "--force", action="store_true", help="replace an existing --json (without it an existing file is refused)"
    )
    args = ap.parse_args()
    out = check_out(args.json, "--json", force=args.force)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("edge_moe_vit").eval()  # 32x32 input, patch 4 -> 65 tokens, dim 192, 3 heads
    result: dict = {
        "command": command_line(),
        **provenance(),
        "quick": args.quick,
        "seed": 0,
        "units": {"*_s": "seconds (wall)", "latency_us": "microseconds at 300 MHz", "bram18k": "18 Kb blocks"},
        "model": "edge_moe_vit",
        "tokens": 65,
        "dim": 192,
        "heads": 3,
        "csim": [],
        "widths": [],
    }
    runs = [(0, "dense", 1)] if args.quick else [(0, "dense", 1), (0, "dense", 2), (0, "dense", 4), (1, "moe", 4)]
    with tempfile.TemporaryDirectory() as tmp:
        outs = {}
        for layer, kind, p in runs:
            prj = Path(tmp) / f"l{layer}p{p}"
            t0 = time.perf_counter()
            generate_project(model, "zcu102-hls", prj, layer=layer, vectors=args.vectors, attn_parallel=p)
            gen_s = time.perf_counter() - t0
            rep = run_csim(prj)
            outs[(layer, p)] = np.loadtxt(prj / "tb_data/csim_results.dat")
            row = {
                k: rep[k]
                for k in (
                    "layer",
                    "attn_parallel",
                    "vectors",
                    "outputs",
                    "mismatches",
                    "max_abs_err_vs_float",
                    "cosine_vs_float",
                    "approx_max_abs_err_vs_float",
                    "float_max_abs",
                    "compile_s",
                    "run_s",
                )
            }
            row.update(
                mlp=kind,
                generate_s=round(gen_s, 3),
                csim_total_s=round(rep["compile_s"] + rep["run_s"], 3),
            )
            result["csim"].append(row)
            print(json.dumps(row))
        # None in --quick: one parallelism only, nothing to compare
        result["outputs_identical_across_parallelism"] = (
            None
            if args.quick
            else bool(np.array_equal(outs[(0, 1)], outs[(0, 2)]) and np.array_equal(outs[(0, 1)], outs[(0, 4)]))
        )
        for i, (aw, ai, ww, wi, pf) in enumerate(WIDTHS):
            fmt = HLSFormats(act_width=aw, act_int=ai, weight_width=ww, weight_int=wi, prob_frac=pf)
            prj = Path(tmp) / f"w{i}"
            info = generate_project(model, "zcu102-hls", prj, layer=0, vectors=args.vectors, formats=fmt)
            row = {
                "act": f"ap_fixed<{aw},{ai}>",
                "weight": f"ap_fixed<{ww},{wi}>",
                "softmax_out_frac": pf,
                "max_abs_err_vs_float": info.golden_vs_float["max_abs_err"],
                "cosine_vs_float": info.golden_vs_float["cosine"],
                "approx_max_abs_err_vs_float": info.approx_vs_float["max_abs_err"],
            }
            if i == len(WIDTHS) - 1 and not args.quick:  # confirm the narrowest setting in C simulation too
                rep = run_csim(prj)
                row["csim_mismatches"] = rep["mismatches"]
            result["widths"].append(row)
            print(json.dumps(row))
    result["estimate"] = {}
    for p in (1, 2, 4):
        est = estimate_model(model, "zcu102-hls", layer=0, attn_parallel=p)
        result["estimate"][f"layer0_p{p}"] = {
            k: est[k]
            for k in ("cycles", "dsp", "bram18k", "ddr", "latency_us", "dsp_floor_us", "efficiency", "fits")
        }
    # the whole default model, and the whole vit_tiny (224 px, 197 tokens, 1000 classes: the largest registry ViT)
    for key, net in (("whole_model_p4", model), ("whole_model_vit_tiny_p4", create_model("vit_tiny"))):
        est = estimate_model(net, "zcu102-hls", layer=None)
        result["estimate"][key] = {
            k: est[k]
            for k in (
                "cycles",
                "dsp",
                "bram18k",
                "ddr",
                "latency_us",
                "dsp_floor_us",
                "efficiency",
                "fits",
                "arithmetic",
            )
        }
    result["load_average_at_end"] = list(os.getloadavg())
    write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
