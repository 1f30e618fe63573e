"""Deploy (reparameterized) vs train form latency on ONNX Runtime and OpenVINO CPU, plus the block-level
targets of the reparameterization issue. Writes medians and ratios measured side by side to JSON.

    python benchmarks/reparam.py [--out benchmarks/reparam.json] [--models fmvit_t,mobilenetv2] [--threads 1]
        [--budget-scale 1.0] [--force]

An existing ``--out`` is replaced only with ``--force``. Quick check (about a minute): ``--models mobilenetv2
--budget-scale 0.05 --out /tmp/reparam.json``.

For each registered model (default input: 224x224 for the vision models; seed 0, BatchNorm statistics and affine
parameters randomised so that folding them is measurable) the script exports the train form (eval mode) and the
deploy form with ``torch.onnx.export`` (opset 18; for both forms constant folding only, not the exporter's
optimizer, which would fold the train form's BatchNorm into its convolutions and leave nothing to compare), loads
both in ONNX Runtime and in OpenVINO (CPU, f32 inference precision: this host's default would be bf16) and times
them interleaved (train/deploy x ORT/OpenVINO round-robin within each repetition), reporting medians and ratios.
Models that reparameterization leaves unchanged (no BN, no branches) are listed but not timed.

Also measured: a reparameterized 3x3 RepConv block vs a single plain 3x3 conv of the same shape (the
physical floor); fmvit_t vs mobilenetv2 on OpenVINO CPU FP32 at 224x224; and the parameter costs of ULSAM
and the four ELA versions against their published formulas.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
import numpy as np
import torch
from _cli import BenchError, Parser, check_out, command_line, description, nonneg_float, positive_int, run_cli
from _timing import paired_ratio, time_interleaved  # benchmarks/_timing.py (run as a script)
from torch import nn

import edgeattn
from edgeattn.cli._common import write_json
from edgeattn.models import count_macs, count_params, create_model, example_input, list_models
from edgeattn.openvino_core import openvino_core


def _export(model: nn.Module, x: torch.Tensor, path: Path, keep_batchnorm: bool = False) -> None:
    """``model`` to ONNX (dynamo, opset 18). The exporter's optimizer folds BatchNorm into the preceding
    convolutions; ``keep_batchnorm`` runs only its constant folding and dead-node removal instead, so a train form
    keeps its BatchNormalization nodes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (x,), dynamo=True, opset_version=18, verbose=False, optimize=not keep_batchnorm
        )
    if keep_batchnorm:
        from onnxscript import optimizer

        optimizer.fold_constants(program.model)
        optimizer.remove_unused_nodes(program.model)
    program.save(str(path))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> int:
    """Give every BatchNorm layer of ``model`` seeded random statistics and affine parameters (a fresh model's
    mean 0, variance 1, weight 1, bias 0 make folding exact, so a deploy-vs-train difference would measure
    nothing); returns how many layers were changed."""
    gen = torch.Generator().manual_seed(seed)
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in layers:
            n = bn.num_features
            bn.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            bn.running_var.copy_(0.5 + torch.rand(n, generator=gen))  # in [0.5, 1.5)
            if bn.affine:
                bn.weight.copy_(0.5 + torch.rand(n, generator=gen))
                bn.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return len(layers)


def _runners(path: Path, x: np.ndarray, threads: int) -> dict:
    """Callables running the ONNX file once in each runtime."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # No spin-waiting: on a shared machine spinning threads steal the cores the other side needs.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    compiled = openvino_core().compile_model(
        str(path),
        "CPU",
        {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
            "ENABLE_CPU_PINNING": False,  # pinned threads stall when another process holds their core
        },
    )
    request = compiled.create_infer_request()
    return {"onnxruntime": lambda: sess.run(None, feed), "openvino": lambda: request.infer([x])}


def _onnx_ops(path: Path) -> dict:
    """Total node count and per-op counts of an ONNX file."""
    import onnx

    ops: dict = {}
    for node in onnx.load(str(path)).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"total": sum(ops.values()), **dict(sorted(ops.items()))}


def _has_reparam(model: nn.Module) -> bool:
    return any(callable(getattr(m, "reparameterize", None)) for m in model.modules())


def bench_models(names: list[str], tmp: Path, threads: int, budget_scale: float = 1.0) -> dict:
    """Per model: parameters, MACs, deploy-vs-train parity, ONNX op counts, and interleaved latency of both forms in
    both runtimes (ratios train/deploy: > 1 means the deploy form is faster)."""
    out = {}
    for name in names:
        torch.manual_seed(0)
        train = create_model(name).eval()
        x = example_input(train)
        record: dict = {
            "input_shape": list(x.shape),
            "params_train": count_params(train),
            "batchnorm_layers_randomized": randomize_batchnorm(train),
        }
        if not _has_reparam(train):
            record.update(timed=False, note="no BatchNorm or branches: the deploy form is the train form")
            out[name] = record
            print(f"{name}: unchanged by reparameterization", flush=True)
            continue
        deploy = edgeattn.reparameterize(train)
        with torch.no_grad():
            y, z = train(x), deploy(x)
        record.update(
            params_deploy=count_params(deploy),
            macs_train=count_macs(train, x),
            macs_deploy=count_macs(deploy, x),
            max_rel_diff=float((y - z).abs().max() / y.abs().max()),
        )
        _export(train, x, tmp / f"{name}_train.onnx", keep_batchnorm=True)
        _export(deploy, x, tmp / f"{name}_deploy.onnx", keep_batchnorm=True)  # the same export passes
        record["onnx_nodes"] = {form: _onnx_ops(tmp / f"{name}_{form}.onnx") for form in ("train", "deploy")}
        xs = x.numpy()
        runs = {}
        for form in ("train", "deploy"):
            for rt, fn in _runners(tmp / f"{name}_{form}.onnx", xs, threads).items():
                runs[f"{rt}/{form}"] = fn
        timing = time_interleaved(runs, budget_s=8.0 * budget_scale)
        record["latency_ms"] = {k: round(v["median_ms"], 4) for k, v in timing.items()}
        record["reps"] = timing["openvino/deploy"]["reps"]
        record["speedup_deploy_vs_train"] = {
            rt: round(paired_ratio(timing, f"{rt}/train", f"{rt}/deploy"), 3)
            for rt in ("onnxruntime", "openvino")
        }
        record["speedup_of_medians"] = {
            rt: round(timing[f"{rt}/train"]["median_ms"] / timing[f"{rt}/deploy"]["median_ms"], 3)
            for rt in ("onnxruntime", "openvino")
        }
        out[name] = record
        print(f"{name}: {record['latency_ms']} speedup {record['speedup_deploy_vs_train']}", flush=True)
    return out


def bench_rep3x3(tmp: Path, threads: int, channels: int = 64, size: int = 56, budget_scale: float = 1.0) -> dict:
    """Reparameterized RepConv (4 branches + 1x1 + identity, ReLU) vs plain Conv2d 3x3 + ReLU."""
    from edgeattn.blocks import RepConv

    torch.manual_seed(0)
    rep = RepConv(channels, channels, 3, num_branches=4).eval()
    plain = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()).eval()
    deploy = edgeattn.reparameterize(rep)
    x = torch.randn(1, channels, size, size)
    runs = {}
    for label, model in (("train", rep), ("deploy", deploy), ("plain", plain)):
        _export(model, x, tmp / f"rep3x3_{label}.onnx")
        for rt, fn in _runners(tmp / f"rep3x3_{label}.onnx", x.numpy(), threads).items():
            runs[f"{rt}/{label}"] = fn
    timing = time_interleaved(runs, budget_s=6.0 * budget_scale, min_reps=30, max_reps=300)
    med = {k: round(v["median_ms"], 4) for k, v in timing.items()}
    return {
        "shape": [1, channels, size, size],
        "latency_ms": med,
        "deploy_over_plain": {
            rt: round(paired_ratio(timing, f"{rt}/deploy", f"{rt}/plain"), 3)
            for rt in ("onnxruntime", "openvino")
        },
        "train_over_deploy": {
            rt: round(paired_ratio(timing, f"{rt}/train", f"{rt}/deploy"), 3)
            for rt in ("onnxruntime", "openvino")
        },
    }


def bench_fmvit_vs_mobilenetv2(tmp: Path, threads: int, budget_scale: float = 1.0) -> dict:
    """OpenVINO CPU FP32 at 224x224, deploy forms, interleaved; plus global-context parameter counts."""
    from edgeattn.blocks import RLMHSA, Attention

    runs, params, ctx = {}, {}, {}
    for name in ("fmvit_t", "mobilenetv2"):
        model = edgeattn.reparameterize(create_model(name).eval())
        x = example_input(model)
        path = tmp / f"{name}_deploy.onnx"
        if not path.exists():
            _export(model, x, path)
        runs[name] = _runners(path, x.numpy(), threads)["openvino"]
        params[name] = count_params(model)
        # parameters of modules that see the whole image (self-attention); MobileNet-V2 has none
        ctx[name] = sum(count_params(m) for m in model.modules() if isinstance(m, (RLMHSA, Attention)))
    timing = time_interleaved(runs, budget_s=10.0 * budget_scale, min_reps=40, max_reps=400)
    med = {k: round(v["median_ms"], 4) for k, v in timing.items()}
    return {
        "runtime": "openvino CPU f32",
        "latency_ms": med,
        "fmvit_t_over_mobilenetv2": round(paired_ratio(timing, "fmvit_t", "mobilenetv2"), 3),
        "fmvit_t_over_mobilenetv2_of_medians": round(med["fmvit_t"] / med["mobilenetv2"], 3),
        "params": params,
        "global_context_params": ctx,
        "reps": timing["fmvit_t"]["reps"],
    }


def param_costs() -> dict:
    """ULSAM: 2m conv weights per module; ELA: C*(C/groups)*k conv weights + 2C GroupNorm per version."""
    from edgeattn.blocks import ELA, ULSAM

    m = 512
    ul = ULSAM(m, 4)
    ulsam = {
        "m": m,
        "conv_weights": ul.conv_dw.weight.numel() + ul.conv_pw.weight.numel(),
        "published_conv_weights": 2 * m,
        "macs_14x14": count_macs(ul, torch.randn(1, m, 14, 14)),
        "published_flops_14x14": 2 * m * 14 * 14,
    }
    ela = {}
    table = {"T": (5, 1), "B": (7, 1), "S": (5, 8), "L": (7, 8)}  # kernel, channels per conv group
    for c in (64, 256):
        for v, (k, cpg) in table.items():
            mod = ELA(c, v)
            ela[f"{v}@C={c}"] = {"params": count_params(mod), "published": c * cpg * k + 2 * c}
    return {"ulsam": ulsam, "ela": ela}


def main(argv: list[str] | None = None) -> int:
    """Run every section and write the JSON."""
    ap = Parser(description=description(__doc__))
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    ap.add_argument("--models", default=None, help="comma-separated subset (default: every registered model)")
    # One thread by default: on the shared 2-core host a 2-thread parallel region stalls whenever another
    # process holds one of the cores, which made identical graphs differ by up to ~35% between runs.
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument(
        "--budget-scale",
        type=nonneg_float,
        default=1.0,
        help="multiplies every section's timing budget (8 s per model, 6 s rep3x3, 10 s fmvit_t vs mobilenetv2); "
        "the minimum repetitions (10, 30, 40) still apply",
    )
    ap.add_argument(
        "--force", action="store_true", help="replace an existing --out (without it an existing file is refused)"
    )
    args = ap.parse_args(argv)
    out_path = check_out(args.out, "--out", force=args.force)
    names = args.models.split(",") if args.models else list_models()
    unknown = sorted(set(names) - set(list_models()))
    if unknown:
        raise BenchError(f"--models: unknown {', '.join(unknown)}; registered: {', '.join(list_models())}")
    torch.set_num_threads(args.threads)
    import onnxruntime
    import openvino

    from edgeattn.hostinfo import detect_host

    result: dict = {
        "command": command_line(),
        "host": detect_host().model_dump(mode="json"),
        "threads": args.threads,
        "budget_scale": args.budget_scale,
        "load_average_at_start": list(os.getloadavg()),
        "versions": {
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "openvino": openvino.__version__,
        },
        "method": "torch.onnx.export (dynamo, opset 18; models section: seed 0, BatchNorm statistics and affine "
        "parameters randomised; both forms exported with constant folding only, not the exporter's "
        "optimizer, so the train form keeps its BatchNormalization nodes); forms x runtimes interleaved "
        "round-robin in each repetition; latency = median ms; ratios = median over repetitions of the ratio "
        "within a repetition",
        "units": {
            "latency_ms": "milliseconds per inference (median)",
            "speedup_deploy_vs_train": "train time / deploy time (> 1: deploy faster)",
            "*_over_*": "first time / second time (< 1: first faster)",
        },
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        result["param_costs"] = param_costs()
        result["rep3x3_vs_plain_conv"] = bench_rep3x3(tmp, args.threads, budget_scale=args.budget_scale)
        print("rep3x3:", result["rep3x3_vs_plain_conv"], flush=True)
        result["models"] = bench_models(names, tmp, args.threads, args.budget_scale)
        result["fmvit_t_vs_mobilenetv2"] = bench_fmvit_vs_mobilenetv2(tmp, args.threads, args.budget_scale)
        print("fmvit_t vs mobilenetv2:", result["fmvit_t_vs_mobilenetv2"], flush=True)
    timed = {n: r for n, r in result["models"].items() if r.get("timed", True)}
    result["targets"] = {
        "deploy_never_slower": {
            n: {rt: s >= 1.0 for rt, s in r["speedup_deploy_vs_train"].items()} for n, r in timed.items()
        },
        # For ConvBN-only models both runtimes fold the train form's BatchNormalization into the conv when they
        # load it, so their ratio is 1 up to timing noise: allow 2% for that noise.
        "deploy_not_slower_within_2pct_noise": {
            n: {rt: s >= 0.98 for rt, s in r["speedup_deploy_vs_train"].items()} for n, r in timed.items()
        },
        "fmvit_t_deploy_speedup_ge_1.3": (
            {rt: s >= 1.3 for rt, s in timed["fmvit_t"]["speedup_deploy_vs_train"].items()}
            if "fmvit_t" in timed
            else None
        ),
        "rep3x3_within_5pct_of_plain_conv": {
            rt: r <= 1.05 for rt, r in result["rep3x3_vs_plain_conv"]["deploy_over_plain"].items()
        },
        "fmvit_t_not_slower_than_mobilenetv2_openvino": result["fmvit_t_vs_mobilenetv2"][
            "fmvit_t_over_mobilenetv2"
        ]
        <= 1.0,
        "ulsam_2m_conv_weights": result["param_costs"]["ulsam"]["conv_weights"]
        == result["param_costs"]["ulsam"]["published_conv_weights"],
        "ela_cost_follows_table": all(
            v["params"] == v["published"] for v in result["param_costs"]["ela"].values()
        ),
        "max_rel_diff_below_1e-5": {n: r["max_rel_diff"] < 1e-5 for n, r in timed.items()},
    }
    result["load_average_at_end"] = list(os.getloadavg())
    write_json(out_path, result)
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
