"""EdgeQAT benchmark: one table of FP32, PTQ (min-max, percentile), plain QAT and EdgeQAT, with ablations.

Vision: ``fmvit_t`` on scikit-learn digits (32x32) at W8A8, W4A8, W4A4; EdgeQAT ablations (each loss off, and
token-adaptive bits on) at W4A8. Language: ``tiny_llama`` on the stdlib byte corpus at W8A8 and W4A8.

Every row starts from the same FP checkpoint (trained once, first), uses the same seed, epochs and data order, and
is written to the JSON as soon as it finishes (``--resume`` skips rows already in the file), so a partial run still
leaves a valid table. A row whose training diverges (inf or nan; a sweep's high lr, say) goes into the section's
``diverged`` (stage, epoch, reason, lr) instead of its ``rows``, and the suite goes on. Top-1 is in %, perplexity
is on the validation split, ``nll`` (and the section's ``fp32_nll``) is the validation cross-entropy in nats per image
or token, ``attn_kl`` is the mean KL(FP attention || quantized attention) over every attention row of 64 validation
samples. ``seed_summary[...][<bits>]["nll"]`` pairs the W8A8-style methods by seed on that cross-entropy, where one
validation image is too coarse a step for top-1.

    python benchmarks/qat.py --out benchmarks/qat.json --force    # the whole table, replacing the file
    python benchmarks/qat.py --only vision --qat-epochs 1 --out /tmp/q.json
    python benchmarks/qat.py --only vision --resume --seeds 1,2,3,4   # the vision table again, per seed

With ``--seeds``, only the vision table runs, once per seed: a whole repetition (its own train/val split, FP model,
data order and QAT runs) in section ``vision_fp<E>_seed<N>`` (the main ``vision`` section is seed 0 of
``--fp-epochs 5``); ``seed_summary["fp_epochs_<E>"]`` gives every method's mean and spread over the seeds and the
paired per-seed differences, which is what a 359-image validation set (one image = 0.28 points) needs before one
method can be said to beat another. ``--ablate w8a8,w4a8`` adds EdgeQAT with each loss off to every seed; the
summary then gives each loss's paired contribution and its effect on the attention KL.

    python benchmarks/qat.py --only vision --resume --fp-epochs 20 --bits w8a8,w4a8 --ablate w8a8,w4a8 \
        --seeds 0,1,2,3,4,5,6,7,8,9 --workdir /tmp/q/bench20

More rows per seed: ``--grad-clip-rows w4a4`` (plain QAT and the default EdgeQAT with the gradient norm clipped),
``--token-adaptive w4a8`` (the default EdgeQAT with token-adaptive bits; with ``--lm-seeds`` too),
``--fp-finetune w8a8,w4a8`` (a control: the FP model fine-tuned, nothing quantized, with that setting's epochs and
lr: what extra training alone gives) and
``--mse-rows w8a8,w4a8,w4a4`` (PTQ with MSE-initialised weight scales), ``--single-loss w8a8`` (EdgeQAT with each
loss alone; ``w8a8:distribution`` for one) and ``--row-floor-rows w4a4`` (the default EdgeQAT with the
distribution loss's row floor, unclipped and clipped). ``--augment-rows w8a8:2`` adds the default EdgeQAT, plain QAT and
the FP fine-tuning control trained on images shifted by up to 2 pixels (``augment_shift``).
``--ablate w8a8:entropy`` turns off one loss only. A run
whose ``--seeds`` are a subset of the seeds in the file also gets its own summary,
``seed_summary["fp_epochs_<E>_seeds_<first>-<last>"]``: a choice made on some seeds is confirmed on held-out ones.
``--only language --lm-seeds 0,1,2`` repeats the language table per seed (``language_seed<N>``, summary in
``language_seed_summary``). With another FP training (``--lm-fp-epochs 10 --lm-train-samples 0``: 10 epochs on
every training window) the sections are ``language_fp<E>_seed<N>``, summary ``language_fp<E>_seed_summary``.

``--lr-sweep w8a8:1e-3:1`` (``bits:lr:epochs``, comma-separated) adds, with ``--seeds`` or ``--lm-seeds``, the default
EdgeQAT at that QAT lr and length from the same FP models, as rows ``<row>-lr<lr>-ep<epochs>``;
``--lr-sweep-controls`` adds plain QAT and the FP fine-tuning control at the same settings.
``lr_sweep_summary["<vision_fp<E>|language_fp<E>>"]`` pairs each setting by seed with FP32, PTQ, the controls and the
default EdgeQAT at the suite's own lr (a subset of seeds gets its own ``..._seeds_<first>-<last>`` entry too):

    python benchmarks/qat.py --only language --resume --lm-fp-epochs 10 --lm-train-samples 0 --workdir /tmp/q/lm10 \
        --lm-seeds 0,1,2,3,4 --lr-sweep w8a8:3e-4:1,w8a8:1e-3:1,w8a8:1e-4:3
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _cli import BenchError, Parser, check_out, description, int_list, positive_int, read_json, run_cli
from edgeattn.quant.losses import DISTRIBUTION_ROW_FLOOR
from edgeattn.quant.train import TrainConfig, TrainingDiverged, run

from edgeattn.hostinfo import detect_host, runtime_versions

QAT_SAMPLES: dict[str, int | None] = {}  # suite -> cap on QAT training samples (--qat-train-samples)
# the paper's recipe, all three losses; edgeattn's default drops the entropy loss (measured by the
# ``edgeqat-no-entropy-*`` rows of ``--ablate``: docs/qat.md, "Ablations over ten seeds")
EDGEQAT = {"kd": True, "entropy": True, "distribution": True}
EDGEQAT_DEFAULT = {**EDGEQAT, "entropy": False}
PLAIN = {"kd": False, "entropy": False, "distribution": False}
SINGLE_LOSSES = tuple(PLAIN)  # the EdgeQAT losses, by name
LEGACY_LM_FP = (3, 1024)  # (FP epochs, training windows) of the first language table, which keeps its section names
# Per-setting EdgeQAT losses: at W4A4 the entropy loss cost 2.8 and 7.8 points in two paired runs (same FP model /
# lr / epochs / threads), so the W4A4 EdgeQAT row runs without it and the all-losses run is kept as its own row.
# The five-seed repetitions later showed the stalls come with the distribution loss, and ten seeds that gradient
# clipping ends them (``--grad-clip-rows w4a4``); the ``w4a4`` preset of edgeattn.quant.train is KD + distribution
# with ``grad_clip`` 1.0.
EDGEQAT_BY_BITS = {"w4a4": EDGEQAT_DEFAULT}
# quant-config update of the FP fine-tuning control: every module left in float (quantize_model changes nothing)
FLOAT_EVERYTHING = {"float_layers": ["*"]}


def _lr_key(lr: float | None) -> dict[str, float]:
    """A row's ``lr`` entry: empty for the suite's own lr."""
    return {"lr": lr} if lr is not None else {}


def vision_rows(bits_list: list[str], lr_by_bits: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """PTQ (min-max), plain QAT and EdgeQAT rows per bit setting; ``lr_by_bits`` overrides the QAT lr of a
    setting (the same lr for plain QAT and EdgeQAT, so the comparison stays fair)."""
    lr_by_bits = lr_by_bits or {}
    rows: list[dict[str, Any]] = []
    for bits in bits_list:
        lr = {"lr": lr_by_bits[bits]} if bits in lr_by_bits else {}
        rows.append({"name": f"ptq-minmax-{bits}", "method": "PTQ (min-max)", "bits": bits, "ptq": "minmax"})
        # the PTQ (percentile) baseline is the starting point of every QAT row: taken from the plain-QAT row
        rows.append({"name": f"qat-{bits}", "method": "plain QAT", "bits": bits, "losses": PLAIN, **lr})
        if bits in EDGEQAT_BY_BITS:
            rows.append(
                {
                    "name": f"edgeqat-{bits}",
                    "method": "EdgeQAT (entropy off)",
                    "bits": bits,
                    "losses": EDGEQAT_BY_BITS[bits],
                    **lr,
                }
            )
            rows.append(
                {
                    "name": f"edgeqat-all-losses-{bits}",
                    "method": "EdgeQAT (all losses)",
                    "bits": bits,
                    "losses": EDGEQAT,
                    **lr,
                }
            )
        else:
            rows.append({"name": f"edgeqat-{bits}", "method": "EdgeQAT", "bits": bits, "losses": EDGEQAT, **lr})
    return rows


def ablation_rows(
    ablate_bits: str,
    lr: float | None = None,
    token_adaptive: bool = True,
    losses: tuple[str, ...] = SINGLE_LOSSES,
) -> list[dict[str, Any]]:
    """EdgeQAT with each of ``losses`` off in turn (and, with ``token_adaptive``, with token-adaptive bits on)."""
    lr_row = _lr_key(lr)
    rows: list[dict[str, Any]] = []
    for off in losses:
        rows.append(
            {
                "name": f"edgeqat-no-{off}-{ablate_bits}",
                "method": f"EdgeQAT - {off}",
                "bits": ablate_bits,
                "losses": {**EDGEQAT, off: False},
                **lr_row,
            }
        )
    if not token_adaptive:
        return rows
    rows.append(
        {
            "name": f"edgeqat-token-adaptive-{ablate_bits}",
            "method": "EdgeQAT + token-adaptive bits",
            "bits": ablate_bits,
            "losses": EDGEQAT,
            "token_adaptive": True,
        }
    )
    return rows


def fp_finetune_row(bits: str, lr: float | None = None, prefix: str = "") -> dict[str, Any]:
    """Control: the FP model fine-tuned with cross-entropy for the same epochs and lr as ``bits``' QAT rows, with
    nothing quantized. It separates what QAT recovers from what the extra training alone gives."""
    row = {"name": f"{prefix}fp-finetune-{bits}", "method": "FP32 fine-tuned (control)", "bits": bits}
    return {**row, "losses": PLAIN, "quant": FLOAT_EVERYTHING, **_lr_key(lr)}


def grad_clip_rows(bits: str, clip: float, lr: float | None = None) -> list[dict[str, Any]]:
    """Plain QAT and the default EdgeQAT (KD + distribution loss) with the gradient's global norm clipped."""
    extra = {"grad_clip": clip, **_lr_key(lr)}
    return [
        {"name": f"qat-clip-{bits}", "method": "plain QAT, grad clip", "bits": bits, "losses": PLAIN, **extra},
        {
            "name": f"edgeqat-no-entropy-clip-{bits}",
            "method": "EdgeQAT (default losses), grad clip",
            "bits": bits,
            "losses": EDGEQAT_DEFAULT,
            **extra,
        },
    ]


def row_floor_rows(bits: str, clip: float, lr: float | None = None) -> list[dict[str, Any]]:
    """The default EdgeQAT (KD + distribution) with the distribution loss's row floor, unclipped and with the
    gradient clip. (The ``edgeqat-<bits>`` rows of the W4A4 table ran before the floor existed: the plain cosine.)"""
    floored = {**EDGEQAT_DEFAULT, "distribution_row_floor": DISTRIBUTION_ROW_FLOOR}
    variants = [("floor", "row floor", {}), ("floor-clip", "row floor, grad clip", {"grad_clip": clip})]
    return [
        {
            "name": f"edgeqat-no-entropy-{suffix}-{bits}",
            "method": f"EdgeQAT (default losses), {what}",
            "bits": bits,
            "losses": floored,
            **extra,
            **_lr_key(lr),
        }
        for suffix, what, extra in variants
    ]


def single_loss_rows(
    bits: str, lr: float | None = None, losses: tuple[str, ...] = SINGLE_LOSSES
) -> list[dict[str, Any]]:
    """EdgeQAT with one loss alone on top of the task loss (``ablation_rows`` turns one off instead)."""
    return [
        {
            "name": f"edgeqat-{only}-only-{bits}",
            "method": f"EdgeQAT, {only} loss only",
            "bits": bits,
            "losses": {**PLAIN, only: True},
            **_lr_key(lr),
        }
        for only in losses
    ]


def _loss_specs(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """``--ablate`` / ``--single-loss`` values: comma-separated ``bits`` (every loss) or ``bits:loss``."""
    specs = []
    for item in filter(None, text.split(",")):
        bits, _, loss = item.partition(":")
        if loss and loss not in SINGLE_LOSSES:
            raise SystemExit(f"unknown loss '{loss}' in '{item}'; losses: {', '.join(SINGLE_LOSSES)}")
        specs.append((bits, (loss,) if loss else SINGLE_LOSSES))
    return specs


def ptq_rows(bits: str) -> list[dict[str, Any]]:
    """PTQ with min-max and with percentile calibration, on their own (``vision_rows`` takes the percentile one
    from its plain-QAT row): for a run that compares only PTQ and the default EdgeQAT."""
    return [
        {"name": f"ptq-{cal}-{bits}", "method": f"PTQ ({name})", "bits": bits, "ptq": cal}
        for cal, name in (("minmax", "min-max"), ("percentile", "percentile"))
    ]


def mse_ptq_rows(bits: str) -> list[dict[str, Any]]:
    """PTQ (min-max and percentile) with the weight scales initialised by brevitas' MSE search, not abs-max."""
    return [
        {
            "name": f"ptq-{cal}-mse-{bits}",
            "method": f"PTQ ({cal}), MSE weight scales",
            "bits": bits,
            "ptq": cal,
            "quant": {"weight_scale_init": "mse"},
        }
        for cal in ("minmax", "percentile")
    ]


def _sweep_specs(text: str) -> list[tuple[str, str, int]]:
    """``--lr-sweep`` values: comma-separated ``bits:lr:epochs`` (``w8a8:1e-3:1``), the lr kept as written for the
    row names."""
    specs = []
    for item in filter(None, text.split(",")):
        parts = item.split(":")
        try:
            bits, lr_text, epochs = parts
            float(lr_text), int(epochs)
        except ValueError:
            raise SystemExit(f"--lr-sweep: '{item}' is not bits:lr:epochs (e.g. w8a8:1e-3:1)") from None
        specs.append((bits, lr_text, int(epochs)))
    return specs


def _augment_specs(text: str) -> list[tuple[str, int]]:
    """``--augment-rows`` values: comma-separated ``bits:shift`` (``w8a8:2``)."""
    specs = []
    for item in filter(None, text.split(",")):
        bits, _, shift = item.partition(":")
        if not shift.isdigit() or int(shift) < 1:
            raise SystemExit(f"--augment-rows: '{item}' is not bits:shift with a shift of at least 1 (e.g. w8a8:2)")
        specs.append((bits, int(shift)))
    return specs


SWEEP_SUFFIX = re.compile(r"^(?P<row>.+)-lr(?P<lr>[^-]+(?:e-\d+)?)-ep(?P<epochs>\d+)$")


def lr_sweep_rows(
    bits: str, lr_text: str, epochs: int, prefix: str = "", controls: bool = False
) -> list[dict[str, Any]]:
    """The default EdgeQAT (KD + distribution) at another QAT lr and length, named ``<row>-lr<lr>-ep<epochs>``;
    with ``controls`` also plain QAT and the FP fine-tuning control at the same lr and length, so a gain can be told
    apart from the extra training."""
    rows = [
        {
            "name": f"{prefix}edgeqat-no-entropy-{bits}",
            "method": "EdgeQAT (default losses)",
            "bits": bits,
            "losses": EDGEQAT_DEFAULT,
        }
    ]
    if controls:
        rows.append({"name": f"{prefix}qat-{bits}", "method": "plain QAT", "bits": bits, "losses": PLAIN})
        rows.append(fp_finetune_row(bits, prefix=prefix))
    suffix = f"-lr{lr_text}-ep{epochs}"
    return [{**r, "name": r["name"] + suffix, "lr": float(lr_text), "epochs": epochs, "sweep": True} for r in rows]


def augment_rows(bits: str, shift: int, lr: float | None = None) -> list[dict[str, Any]]:
    """The default EdgeQAT (KD + distribution) trained on randomly shifted images (``augment_shift``), with its
    controls at the same shift: plain QAT, and the FP fine-tuning control (what the augmented extra training gives
    with nothing quantized). The shift is recorded in each row (``augment_shift``)."""
    rows = [
        {"name": f"edgeqat-no-entropy-augment-{bits}", "method": "EdgeQAT (default losses), shifted images"},
        {"name": f"qat-augment-{bits}", "method": "plain QAT, shifted images", "losses": PLAIN},
        {**fp_finetune_row(bits), "name": f"fp-finetune-augment-{bits}", "method": "FP32 fine-tuned, shifted images"},
    ]
    base = {"bits": bits, "losses": EDGEQAT_DEFAULT, "augment_shift": shift, **_lr_key(lr)}
    return [{**base, **r} for r in rows]


def token_adaptive_row(bits: str, lr: float | None = None, prefix: str = "") -> dict[str, Any]:
    """edgeattn's default EdgeQAT (KD + distribution loss) with token-importance-aware bits on."""
    return {
        "name": f"{prefix}edgeqat-no-entropy-token-adaptive-{bits}",
        "method": "EdgeQAT (default losses) + token-adaptive bits",
        "bits": bits,
        "losses": EDGEQAT_DEFAULT,
        "token_adaptive": True,
        **_lr_key(lr),
    }


def language_rows(bits_list: list[str]) -> list[dict[str, Any]]:
    """Plain QAT, EdgeQAT with the paper's three losses and with edgeattn's default (no entropy loss), per
    setting, and the FP fine-tuning control."""
    rows: list[dict[str, Any]] = [fp_finetune_row("w8a8", prefix="lm-")]
    for bits in bits_list:
        rows.append({"name": f"lm-qat-{bits}", "method": "plain QAT", "bits": bits, "losses": PLAIN})
        rows.append({"name": f"lm-edgeqat-{bits}", "method": "EdgeQAT (all losses)", "bits": bits, "losses": EDGEQAT})
        rows.append(
            {
                "name": f"lm-edgeqat-no-entropy-{bits}",
                "method": "EdgeQAT (default: entropy off)",
                "bits": bits,
                "losses": EDGEQAT_DEFAULT,
            }
        )
    return rows


def _row_config(
    base: dict[str, Any], row: dict[str, Any], fp_ckpt: str, out: str, qat_samples: int | None
) -> TrainConfig:
    cfg = {**base, "fp_checkpoint": fp_ckpt, "bits": row["bits"], "output_dir": out}
    if qat_samples:  # fine-tuning sees the first qat_samples training samples (the FP model saw them all)
        cfg["max_train_samples"] = min(qat_samples, cfg.get("max_train_samples") or qat_samples)
    if "quant" in row:
        cfg["quant"] = {**cfg.get("quant", {}), **row["quant"]}
    if "ptq" in row:
        cfg.update(skip_qat=True, calibration=row["ptq"])
    else:
        cfg.update(losses=row["losses"], token_adaptive=row.get("token_adaptive", False))
        # training settings a row may set for itself (otherwise the suite's)
        cfg.update({k: row[k] for k in ("lr", "epochs", "grad_clip", "augment_shift") if k in row})
    return TrainConfig.parse(cfg, row["name"])


def _save(path: Path, payload: dict[str, Any]) -> None:
    from edgeattn.cli._common import write_json

    write_json(path, payload)


def run_suite(
    suite: str,
    base: dict[str, Any],
    rows: list[dict[str, Any]],
    payload: dict[str, Any],
    out: Path,
    work: Path,
) -> None:
    section = payload.setdefault(suite, {"config": base, "rows": {}})
    section["config"] = base  # the settings of the rows run now (the FP model's own are in fp_config)
    section.setdefault("fp_config", base)
    done = section["rows"]
    fp_dir = work / f"{suite}-fp"
    fp_ckpt = fp_dir / "fp.pt"
    if "fp32" not in section or not fp_ckpt.is_file():
        t0 = time.perf_counter()
        try:
            res = run(
                TrainConfig.parse({**base, "output_dir": str(fp_dir), "skip_qat": True}, f"{suite} fp"),
                progress=False,
                force=True,
            )
        except TrainingDiverged as exc:  # every row starts from this model: the suite cannot go on
            raise SystemExit(f"[{suite}] FP training diverged: {exc}") from None
        if res.get("status") != "done":
            raise SystemExit(f"[{suite}] FP training interrupted; rerun with --resume")
        section["fp32"] = res["fp32"]
        section["fp32_nll"] = res["fp32_nll"]
        section["fp_train_seconds"] = res.get("fp_train_seconds")
        section["fp_total_seconds"] = time.perf_counter() - t0
        section["metric"] = res["metric"]
        _save(out, payload)
        print(
            f"[{suite}] FP32 {res['metric']} = {res['fp32']:.3f} ({section['fp_total_seconds']:.0f} s)",
            flush=True,
        )
    diverged = section.setdefault("diverged", {})
    for row in rows:
        if row["name"] in done or row["name"] in diverged:
            continue
        t0 = time.perf_counter()
        cfg = _row_config(base, row, str(fp_ckpt), str(work / row["name"]), QAT_SAMPLES.get(suite))
        try:
            res = run(cfg, progress=False, force=True)
        except TrainingDiverged as exc:
            # a row whose training blew up (a sweep's high lr, say) is recorded beside the table, not in it, and
            # the suite goes on; summaries only ever see finished rows. Delete the entry to run it again.
            where = exc.result.get("diverged", {})
            diverged[row["name"]] = {**where, "lr": cfg.lr, "epochs": cfg.epochs}
            _save(out, payload)
            print(
                f"[{suite}] {row['name']}: {where.get('stage')} diverged at epoch {where.get('epoch')} "
                f"({where.get('reason')}); recorded under 'diverged', not in the table",
                flush=True,
            )
            continue
        if res.get("status") != "done":  # Ctrl-C / SIGTERM: a truncated row must not enter the table
            raise SystemExit(f"[{suite}] {row['name']} interrupted; rerun with --resume")
        value = res["ptq"] if "ptq" in row else res["qat"]
        section.setdefault("fp32_nll", res["fp32_nll"])  # sections whose FP model was trained before it was measured
        is_float = row.get("quant") == FLOAT_EVERYTHING
        done[row["name"]] = {
            "method": row["method"],
            "bits": "fp32" if is_float else row["bits"],
            "value": value,
            "ptq_value": None if is_float else res["ptq"],
            "nll": res["ptq_nll"] if "ptq" in row else res["qat_nll"],
            "ptq_nll": None if is_float else res["ptq_nll"],
            "attn_kl": res["attn_kl_ptq"] if "ptq" in row else res["attn_kl_qat"],
            "weight_bits": None if is_float else res["quant_config"]["weight_bits"],
            "act_bits": None if is_float else res["quant_config"]["act_bits"],
            "kv_max_bits": None if is_float else res["quant_config"].get("kv_max_bits"),
            "history": res.get("history", []),
            "losses": None if "ptq" in row else row["losses"],
            "lr": None if "ptq" in row else cfg.lr,
            "epochs": None if "ptq" in row else cfg.epochs,
            "grad_clip": None if "ptq" in row else cfg.grad_clip,
            "augment_shift": None if "ptq" in row else cfg.augment_shift,
            "seconds": time.perf_counter() - t0,
        }
        if "ptq" not in row and row["method"] == "plain QAT" and not row.get("sweep"):
            done[row["name"].replace("qat-", "ptq-percentile-")] = {
                "method": "PTQ (percentile)",
                "bits": row["bits"],
                "value": res["ptq"],
                "ptq_value": res["ptq"],
                "nll": res["ptq_nll"],
                "ptq_nll": res["ptq_nll"],
                "attn_kl": res["attn_kl_ptq"],
                "weight_bits": res["quant_config"]["weight_bits"],
                "act_bits": res["quant_config"]["act_bits"],
                "kv_max_bits": res["quant_config"].get("kv_max_bits"),
                "history": [],
                "seconds": None,
            }
        _summarise(payload)
        _save(out, payload)
        print(
            f"[{suite}] {row['name']}: {value:.3f} (attn KL {done[row['name']]['attn_kl']}) "
            f"{done[row['name']]['seconds']:.0f} s",
            flush=True,
        )


def _summarise(payload: dict[str, Any]) -> None:
    """Side-by-side comparisons computed from the rows present (targets from the issue)."""
    summary: dict[str, Any] = {}
    vis = payload.get("vision", {})
    rows = vis.get("rows", {})
    fp = vis.get("fp32")
    for bits in ("w8a8", "w4a8", "w4a4"):
        e, q = rows.get(f"edgeqat-{bits}"), rows.get(f"qat-{bits}")
        ptqs = [rows[k]["value"] for k in (f"ptq-minmax-{bits}", f"ptq-percentile-{bits}") if k in rows]
        if e and fp is not None:
            summary[f"vision_{bits}_edgeqat_drop_points"] = fp - e["value"]
        if e and ptqs:
            summary[f"vision_{bits}_edgeqat_beats_best_ptq"] = e["value"] > max(ptqs)
        if e and q:
            summary[f"vision_{bits}_edgeqat_minus_plain_qat_points"] = e["value"] - q["value"]
            if e["attn_kl"] is not None and q["attn_kl"] is not None:
                summary[f"vision_{bits}_attn_kl_edgeqat_over_plain"] = e["attn_kl"] / max(q["attn_kl"], 1e-12)
    for off in SINGLE_LOSSES:
        a, e = rows.get(f"edgeqat-no-{off}-w4a8"), rows.get("edgeqat-w4a8")
        if a and e:
            summary[f"vision_w4a8_contribution_of_{off}_points"] = e["value"] - a["value"]
    a, e = rows.get("edgeqat-token-adaptive-w4a8"), rows.get("edgeqat-w4a8")
    if a and e:
        summary["vision_w4a8_token_adaptive_minus_edgeqat_points"] = a["value"] - e["value"]
    lm = payload.get("language", {})
    lrows = lm.get("rows", {})
    lfp = lm.get("fp32")
    for bits in ("w8a8", "w4a8"):
        e, q = lrows.get(f"lm-edgeqat-{bits}"), lrows.get(f"lm-qat-{bits}")
        if e and lfp:
            summary[f"language_{bits}_edgeqat_ppl_increase_pct"] = 100.0 * (e["value"] / lfp - 1.0)
            summary[f"language_{bits}_ptq_ppl_increase_pct"] = 100.0 * (e["ptq_value"] / lfp - 1.0)
        if e and q:
            summary[f"language_{bits}_edgeqat_minus_plain_qat_ppl"] = e["value"] - q["value"]
    payload["summary"] = summary


def _seed_sections(payload: dict[str, Any], ref: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Vision sections (the main ``vision`` one and every ``vision_*seed<N>``) run with ``ref``'s settings, by seed."""
    ref = {k: v for k, v in ref.items() if k != "seed"}
    out: dict[int, dict[str, Any]] = {}
    for key, section in payload.items():
        if not (key == "vision" or (key.startswith("vision_") and "seed" in key)):
            continue
        config = section.get("config", {})
        if {k: v for k, v in config.items() if k != "seed"} == ref:
            out[int(config.get("seed", 0))] = section
    return dict(sorted(out.items()))


def _paired_stats(diffs: list[float]) -> dict[str, Any]:
    """Mean, spread, wins/ties/losses and p-values of paired per-seed differences."""
    return {
        "mean": statistics.fmean(diffs),
        "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
        "wins": sum(d > 0 for d in diffs),
        "ties": sum(d == 0 for d in diffs),
        "losses": sum(d < 0 for d in diffs),
        **_paired_tests(diffs),
    }


def _paired_tests(diffs: list[float]) -> dict[str, float | None]:
    """Two-sided p-values that the paired differences are centred on 0: Student's t and the exact sign test."""
    from scipy import stats  # scikit-learn's dependency, installed with edgeattn

    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    sign_p = float(stats.binomtest(wins, wins + losses).pvalue) if wins + losses else None
    t_p = float(stats.ttest_1samp(diffs, 0.0).pvalue) if len(diffs) > 2 and statistics.stdev(diffs) > 0 else None
    return {"t_test_p": t_p, "sign_test_p": sign_p}


def _attn_kl_summary(sections: dict[int, dict[str, Any]], bits: str) -> dict[str, Any]:
    """Attention KL (vs the FP model) of EdgeQAT (all its losses, and without the entropy loss) over plain QAT,
    per seed: the median ratio and in how many seeds it is lower."""
    out: dict[str, Any] = {}
    for key, row in (("edgeqat", f"edgeqat-{bits}"), ("edgeqat_no_entropy", f"edgeqat-no-entropy-{bits}")):
        ratios = {}
        for seed, sec in sections.items():
            e, q = sec["rows"].get(row), sec["rows"].get(f"qat-{bits}")
            if e and q and e.get("attn_kl") is not None and q.get("attn_kl"):
                ratios[seed] = e["attn_kl"] / q["attn_kl"]
        if ratios:
            vals = list(ratios.values())
            out[f"attn_kl_{key}_over_plain"] = {
                "median": statistics.median(vals),
                "lower": sum(r < 1 for r in vals),
                "n": len(vals),
                "by_seed": ratios,
            }
    return out


def _ablation_summary(sections: dict[int, dict[str, Any]], bits: str) -> dict[str, Any]:
    """Per loss: EdgeQAT minus EdgeQAT-without-it (top-1 points, paired by seed) and the attention KL ratio."""
    out: dict[str, Any] = {}
    for off in SINGLE_LOSSES:
        diffs, kl = [], []
        for sec in sections.values():
            e, a = sec["rows"].get(f"edgeqat-{bits}"), sec["rows"].get(f"edgeqat-no-{off}-{bits}")
            if e and a:
                diffs.append(e["value"] - a["value"])
                if e.get("attn_kl") is not None and a.get("attn_kl"):
                    kl.append(e["attn_kl"] / a["attn_kl"])
        if diffs:
            out[f"contribution_of_{off}"] = {
                **_paired_stats(diffs),
                "attn_kl_with_over_without_median": statistics.median(kl) if kl else None,
                "n": len(diffs),
            }
    return out


def _best_ptq(rows: dict[str, Any], bits: str, variant: str = "", field: str = "value") -> float | None:
    """The better of the min-max and percentile PTQ rows of ``bits`` (``variant`` e.g. ``"mse-"``), if any ran:
    the higher top-1 (``field`` 'value'), or the lower cross-entropy (``field`` 'nll'; rows without one are skipped)."""
    names = (f"ptq-minmax-{variant}{bits}", f"ptq-percentile-{variant}{bits}")
    found = [rows[k][field] for k in names if rows.get(k, {}).get(field) is not None]
    return (min if field == "nll" else max)(found, default=None)


def _paired_gain(
    values: dict[str, dict[int, float]], method: str, other: str, sign: float = 1.0, min_seeds: int = 1
) -> dict[str, Any] | None:
    """:func:`_paired_stats` of ``sign * (method - other)`` over the seeds both have (``values``: method -> seed ->
    value), or None if they share fewer than ``min_seeds``. ``sign`` -1 makes a lower value the gain (perplexity,
    cross-entropy)."""
    common = sorted(set(values.get(method, {})) & set(values.get(other, {})))
    if len(common) < min_seeds:
        return None
    return _paired_stats([sign * (values[method][s] - values[other][s]) for s in common])


# vision method -> row-name prefix in a section (the row is ``<prefix>-<bits>``); FP32 and the best PTQ come from
# the section and _best_ptq
_VISION_ROW_OF = {
    "plain_qat": "qat",
    "edgeqat": "edgeqat",
    "edgeqat_all_losses": "edgeqat-all-losses",
    "edgeqat_no_entropy": "edgeqat-no-entropy",
    "edgeqat_token_adaptive": "edgeqat-no-entropy-token-adaptive",
    "fp_finetune": "fp-finetune",
    "plain_qat_clip": "qat-clip",
    "edgeqat_clip": "edgeqat-no-entropy-clip",
    "ptq_minmax": "ptq-minmax",
    "ptq_percentile": "ptq-percentile",
    **{f"edgeqat_{only}_only": f"edgeqat-{only}-only" for only in SINGLE_LOSSES},
    "edgeqat_floor": "edgeqat-no-entropy-floor",
    "edgeqat_floor_clip": "edgeqat-no-entropy-floor-clip",
    "edgeqat_augment": "edgeqat-no-entropy-augment",
    "plain_qat_augment": "qat-augment",
    "fp_finetune_augment": "fp-finetune-augment",
}


def _vision_values(
    sections: dict[int, dict[str, Any]], bits: str, field: str = "value", methods: tuple[str, ...] | None = None
) -> dict[str, dict[int, float]]:
    """method -> seed -> ``field`` of that method's ``bits`` row (top-1 'value', or 'nll'), for ``methods`` (default:
    FP32, the best PTQ, the best MSE-initialised PTQ and every method of :data:`_VISION_ROW_OF`); seeds whose row did
    not run, or has no ``field``, are left out."""
    fp32_key = "fp32" if field == "value" else f"fp32_{field}"
    getters: dict[str, Callable[[dict[str, Any]], float | None]] = {
        "fp32": lambda sec: sec.get(fp32_key),
        "ptq_best": lambda sec: _best_ptq(sec["rows"], bits, field=field),
        "ptq_best_mse": lambda sec: _best_ptq(sec["rows"], bits, "mse-", field),
        **{
            m: (lambda sec, p=prefix: sec["rows"].get(f"{p}-{bits}", {}).get(field))
            for m, prefix in _VISION_ROW_OF.items()
        },
    }
    values: dict[str, dict[int, float]] = {}
    for m in methods or tuple(getters):
        values[m] = {seed: v for seed, sec in sections.items() if (v := getters[m](sec)) is not None}
    return values


def _nll_summary(sections: dict[int, dict[str, Any]], bits: str) -> dict[str, Any]:
    """Validation cross-entropy (nats per image) of the W8A8-style comparison, where top-1 ties: FP32, the best PTQ
    (per seed, the lower of min-max and percentile), plain QAT, the default EdgeQAT and the FP fine-tuning control,
    and each one's paired gain (the other's NLL minus its own: positive is better) over the best PTQ and others.
    Only rows that recorded an ``nll`` count (rows run before it was measured have none)."""
    methods = ("fp32", "ptq_best", "ptq_minmax", "ptq_percentile", "plain_qat", "edgeqat_no_entropy", "fp_finetune")
    values = _vision_values(sections, bits, "nll", methods)
    out: dict[str, Any] = {m: _method_stats(v) for m, v in values.items() if v}
    if out:
        out["gain"] = "the other's NLL minus this one's, paired per seed: a win is a lower NLL"
    pairs = [
        ("edgeqat_no_entropy", other) for other in ("ptq_best", "ptq_minmax", "ptq_percentile", "fp32", "plain_qat")
    ]
    pairs += [("edgeqat_no_entropy", "fp_finetune"), ("plain_qat", "ptq_best"), ("fp_finetune", "ptq_best")]
    pairs += [("fp_finetune", "fp32"), ("ptq_best", "fp32")]
    for method, other in pairs:
        if (gain := _paired_gain(values, method, other, sign=-1.0, min_seeds=2)) is not None:
            out[f"{method}_gain_over_{other}"] = gain
    return out


def _method_stats(by_seed: dict[int, float]) -> dict[str, Any]:
    """Mean, spread and count of one method's per-seed values (kept alongside them)."""
    vals = list(by_seed.values())
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "n": len(vals),
        "by_seed": by_seed,
    }


def _seed_summary(payload: dict[str, Any], ref: dict[str, Any], only: list[int] | None = None) -> None:
    """Mean, spread and paired per-seed differences of the vision methods over every seed run with ``ref``'s
    settings, in ``payload["seed_summary"]["fp_epochs_<N>"]``; with ``only``, over those seeds alone, in
    ``"fp_epochs_<N>_seeds_<first>-<last>"`` (e.g. a held-out set of seeds that confirms a choice made on others)."""
    sections = _seed_sections(payload, ref)
    key = f"fp_epochs_{ref['fp_epochs']}"
    if only is not None:
        sections = {s: sec for s, sec in sections.items() if s in only}
        key += f"_seeds_{min(only)}-{max(only)}"
    if len(sections) < 2:
        return
    summary: dict[str, Any] = {"seeds": list(sections), "config": ref}
    for bits in ("w8a8", "w4a8", "w4a4"):
        values = _vision_values(sections, bits)
        entry: dict[str, Any] = {m: _method_stats(by_seed) for m, by_seed in values.items() if by_seed}
        pairs = [
            (m, o)
            for m in ("edgeqat", "edgeqat_no_entropy")
            for o in ("fp32", "ptq_best", "plain_qat", "fp_finetune")
        ]
        pairs += [
            ("ptq_best", "fp32"),
            ("plain_qat", "fp_finetune"),
            ("fp_finetune", "fp32"),
            ("edgeqat_token_adaptive", "edgeqat_no_entropy"),
            ("edgeqat_clip", "plain_qat_clip"),
            ("edgeqat_clip", "ptq_best"),
            ("edgeqat_clip", "edgeqat"),
            ("plain_qat_clip", "plain_qat"),
            ("ptq_best_mse", "ptq_best"),
            ("edgeqat_no_entropy", "ptq_minmax"),
            ("edgeqat_no_entropy", "ptq_percentile"),
            ("edgeqat_floor", "edgeqat"),
            ("edgeqat_floor", "edgeqat_clip"),
            ("edgeqat_floor", "plain_qat_clip"),
            ("edgeqat_floor", "ptq_best"),
            ("edgeqat_floor_clip", "edgeqat_clip"),
            ("edgeqat_floor_clip", "edgeqat_floor"),
            ("edgeqat_floor_clip", "plain_qat_clip"),
            ("edgeqat_floor_clip", "ptq_best"),
            *[("edgeqat_augment", o) for o in ("ptq_best", "ptq_minmax", "ptq_percentile", "fp32", "plain_qat")],
            *[("edgeqat_augment", o) for o in ("edgeqat_no_entropy", "plain_qat_augment", "fp_finetune_augment")],
            ("plain_qat_augment", "ptq_best"),
            ("fp_finetune_augment", "fp32"),
            ("fp_finetune_augment", "ptq_best"),
        ]
        pairs += [
            (f"edgeqat_{only}_only", other)
            for only in SINGLE_LOSSES
            for other in ("fp32", "ptq_best", "ptq_minmax", "ptq_percentile", "plain_qat", "edgeqat_no_entropy")
        ]
        for method, other in pairs:
            if (diff := _paired_gain(values, method, other)) is not None:
                entry[f"{method}_minus_{other}"] = diff
        entry.update(_attn_kl_summary(sections, bits))
        entry.update(_ablation_summary(sections, bits))
        nll = _nll_summary(sections, bits)
        if nll:
            entry["nll"] = nll
        summary[bits] = entry
    payload.setdefault("seed_summary", {})
    if "seeds" in payload["seed_summary"]:  # the first layout held a single summary
        payload["seed_summary"] = {}
    payload["seed_summary"][key] = summary


def _language_prefix(fp_epochs: int, train_samples: int | None) -> str:
    """Section names of the language repetitions are ``<prefix><seed>``. The first language table (FP 3 epochs on
    1024 windows) keeps its names, ``language`` (seed 0) and ``language_seed<N>``; any other FP training is
    ``language_fp<E>_seed<N>``."""
    return "language_seed" if (fp_epochs, train_samples) == LEGACY_LM_FP else f"language_fp{fp_epochs}_seed"


def _language_sections(payload: dict[str, Any], prefix: str) -> dict[int, dict[str, Any]]:
    """The language sections ``<prefix><N>`` (for the first table also ``language`` = seed 0), by seed."""
    sections = {0: payload["language"]} if prefix == "language_seed" and "language" in payload else {}
    for key, section in payload.items():
        if key.startswith(prefix) and key[len(prefix) :].isdigit():  # <prefix><N>, not ..._summary
            sections[int(key[len(prefix) :])] = section
    return dict(sorted(sections.items()))


def _language_seed_summary(payload: dict[str, Any], prefix: str = "language_seed") -> None:
    """Mean perplexity per method over the language sections ``<prefix><N>`` (for the first table also
    ``language`` = seed 0) and the paired per-seed differences of the default EdgeQAT (lower perplexity is better,
    so a 'win' is a drop). Written to ``<prefix>_summary``."""
    sections = _language_sections(payload, prefix)
    if len(sections) < 2:
        return
    summary: dict[str, Any] = {"seeds": sorted(sections)}
    for bits in ("w8a8", "w4a8"):
        # method -> (row, field); the FP32 figure is the section's own
        where = {
            "ptq": (f"lm-qat-{bits}", "ptq_value"),
            "plain_qat": (f"lm-qat-{bits}", "value"),
            "fp_finetune": ("lm-fp-finetune-w8a8", "value"),
            "edgeqat_all_losses": (f"lm-edgeqat-{bits}", "value"),
            "edgeqat_default": (f"lm-edgeqat-no-entropy-{bits}", "value"),
        }
        values: dict[str, dict[int, float]] = {"fp32": {s: sec["fp32"] for s, sec in sections.items() if "fp32" in sec}}
        for m, (row, field) in where.items():
            values[m] = {s: sec["rows"][row][field] for s, sec in sections.items() if row in sec["rows"]}
        entry: dict[str, Any] = {m: _method_stats(by_seed) for m, by_seed in values.items() if by_seed}
        for other in ("fp32", "ptq", "plain_qat", "edgeqat_all_losses"):
            common = sorted(set(values["edgeqat_default"]) & set(values[other]))
            if common:  # other minus default: positive = the default's perplexity is lower
                diffs = [values[other][s] - values["edgeqat_default"][s] for s in common]
                entry[f"{other}_minus_edgeqat_default_ppl"] = _paired_stats(diffs)
        common = sorted(set(values["edgeqat_default"]) & set(values["fp32"]))
        entry["edgeqat_default_ppl_increase_pct_max"] = max(
            (100.0 * (values["edgeqat_default"][s] / values["fp32"][s] - 1.0) for s in common), default=None
        )
        summary[bits] = entry
    payload[f"{prefix}_summary"] = summary


def _lr_sweep_summary(
    payload: dict[str, Any], sections: dict[int, dict[str, Any]], key: str, language: bool, only: list[int] | None
) -> None:
    """Per ``--lr-sweep`` setting (bits, lr, epochs) over ``sections``: each method's mean and the paired per-seed
    gains of the default EdgeQAT and of the controls, in ``payload["lr_sweep_summary"][key]`` (with ``only``, over
    those seeds alone, under ``<key>_seeds_<first>-<last>``). A gain is top-1 points up, or perplexity down."""
    if only is not None:
        sections = {s: sec for s, sec in sections.items() if s in only}
        key += f"_seeds_{min(only)}-{max(only)}"
    pre = "lm-" if language else ""
    settings: dict[str, dict[str, dict[int, float]]] = {}
    for seed, sec in sections.items():
        rows = sec["rows"]
        for name, row in rows.items():
            match = SWEEP_SUFFIX.match(name)
            if not match:
                continue
            method, _, bits = match["row"].removeprefix(pre).rpartition("-")
            values = settings.setdefault(f"{bits}-lr{match['lr']}-ep{match['epochs']}", {})
            values.setdefault(method, {})[seed] = row["value"]
            # references of the same seed: FP32, PTQ and the default EdgeQAT at the suite's own lr
            ptq = rows[f"lm-qat-{bits}"]["ptq_value"] if language else _best_ptq(rows, bits)
            suite_edgeqat = rows.get(f"{pre}edgeqat-no-entropy-{bits}", {}).get("value")
            for ref, v in (("fp32", sec.get("fp32")), ("ptq", ptq), ("edgeqat-no-entropy-suite-lr", suite_edgeqat)):
                if v is not None:
                    values.setdefault(ref, {})[seed] = v
    pairs = [("edgeqat-no-entropy", o) for o in ("ptq", "fp32", "qat", "fp-finetune", "edgeqat-no-entropy-suite-lr")]
    pairs += [("qat", "ptq"), ("fp-finetune", "fp32")]
    out: dict[str, Any] = {
        "metric": "perplexity" if language else "top-1 %",
        "gain": "paired per seed: perplexity down (language) or top-1 points up (vision); a win is a gain > 0",
        "ptq": "the PTQ (percentile) row the QAT rows start from" if language else "the better PTQ row per seed",
    }
    sign = -1.0 if language else 1.0  # a gain is perplexity down, or top-1 up
    for setting, values in settings.items():
        entry: dict[str, Any] = {m: _method_stats(by_seed) for m, by_seed in values.items()}
        for m, o in pairs:
            if (gain := _paired_gain(values, m, o, sign)) is not None:
                entry[f"{m}_gain_over_{o}"] = gain
        out[setting] = entry
    if settings:
        payload.setdefault("lr_sweep_summary", {})[key] = out


def main() -> None:
    """Run the rows asked for, writing ``--out`` after each one."""
    ap = Parser(description=description(__doc__))
    ap.add_argument("--out", default=str(Path(__file__).with_name("qat.json")))
    ap.add_argument("--only", choices=["vision", "language"], default=None)
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--fp-epochs", type=int, default=6)
    ap.add_argument("--qat-epochs", type=int, default=6, help="QAT epochs of every vision QAT row")
    ap.add_argument("--lm-fp-epochs", type=int, default=3)
    ap.add_argument("--lm-qat-epochs", type=int, default=1)
    ap.add_argument("--lm-train-samples", type=int, default=1024, help="training windows of the LM (0: all)")
    ap.add_argument("--lr", type=float, default=5e-4, help="QAT peak learning rate of every vision QAT row")
    ap.add_argument("--lr-w8a8", type=float, default=1e-4, help="QAT lr of the W8A8 vision rows")
    ap.add_argument("--lm-lr", type=float, default=1e-4, help="QAT peak learning rate of every language QAT row")
    ap.add_argument("--qat-train-samples", type=int, default=None, help="cap QAT rows' training samples")
    ap.add_argument("--resume", action="store_true", help="keep rows already in --out")
    ap.add_argument(
        "--force", action="store_true", help="without --resume: replace an existing --out (its rows are dropped)"
    )
    ap.add_argument("--workdir", default=None)
    ap.add_argument(
        "--bits",
        default="w8a8,w4a8,w4a4",
        help="comma-separated bit settings of the vision table (with --seeds; 'none' for no table rows)",
    )
    ap.add_argument(
        "--ablate",
        default="",
        help="with --seeds: also run EdgeQAT with each loss off at these comma-separated bit settings "
        "('w8a8:entropy' turns off that loss alone)",
    )
    ap.add_argument(
        "--token-adaptive",
        default="",
        help="with --seeds or --lm-seeds: also run the default EdgeQAT with token-adaptive bits at these bit settings",
    )
    ap.add_argument(
        "--fp-finetune",
        default="",
        help="with --seeds: also fine-tune the FP model (nothing quantized) with each setting's epochs and lr",
    )
    ap.add_argument(
        "--grad-clip-rows",
        default="",
        help="with --seeds: also run plain QAT and the default EdgeQAT with --grad-clip at these bit settings",
    )
    ap.add_argument(
        "--ptq-rows",
        default="",
        help="with --seeds: also run PTQ (min-max and percentile) on their own at these bit settings "
        "(with --bits none: PTQ against the --ablate rows, without plain QAT)",
    )
    ap.add_argument(
        "--mse-rows",
        default="",
        help="with --seeds: also run PTQ with MSE-initialised weight scales at these bit settings",
    )
    ap.add_argument(
        "--single-loss",
        default="",
        help="with --seeds: also run EdgeQAT with each loss alone (plus the task loss) at these bit settings "
        "('w8a8:distribution' runs that one alone)",
    )
    ap.add_argument(
        "--row-floor-rows",
        default="",
        help="with --seeds: also run the default EdgeQAT with the distribution loss's row floor, unclipped and "
        "with --grad-clip, at these bit settings",
    )
    ap.add_argument(
        "--augment-rows",
        default="",
        help="with --seeds: also run the default EdgeQAT, plain QAT and the FP fine-tuning control on images shifted "
        "by up to N pixels, at these comma-separated bits:N settings (w8a8:2)",
    )
    ap.add_argument(
        "--lm-seeds",
        default="",
        help="with --only language: run the language table once per seed (init and data order; seed 0 = 'language')",
    )
    ap.add_argument("--grad-clip", type=float, default=1.0, help="the global gradient-norm clip of those rows")
    ap.add_argument(
        "--lr-sweep",
        default="",
        help="with --seeds or --lm-seeds: also run the default EdgeQAT at these comma-separated bits:lr:epochs "
        "settings (w8a8:1e-3:1), from the same FP models",
    )
    ap.add_argument(
        "--lr-sweep-controls",
        action="store_true",
        help="with --lr-sweep: also plain QAT and the FP fine-tuning control at each of those settings",
    )
    ap.add_argument(
        "--seeds",
        default="",
        help="comma-separated seeds: run only the vision table (no ablations, no language), once per seed",
    )
    args = ap.parse_args()
    out = check_out(args.out, "--out")
    if out.exists() and not (args.resume or args.force):
        raise BenchError(
            f"--out '{out}' exists: --resume adds to its rows, --force replaces it (and drops every row in it)"
        )
    seeds = int_list(args.seeds, "--seeds")
    lm_seeds = int_list(args.lm_seeds, "--lm-seeds")
    if seeds and args.only == "language":
        raise BenchError("--seeds repeats the vision table; it cannot run with --only language (use --lm-seeds)")
    if lm_seeds and (seeds or args.only == "vision"):
        raise BenchError("--lm-seeds repeats the language table; it cannot run with --seeds or --only vision")
    torch.set_num_threads(args.threads)
    payload: dict[str, Any] = read_json(out, "--out") if args.resume and out.exists() else {}
    payload["host"] = {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "brevitas": runtime_versions()["brevitas"],
        "threads": args.threads,
        # host-cpu resolves the bits per host: 7-bit weights and K/V on x86 without VNNI
        "has_vnni": detect_host().has_vnni,
        "load_average_at_start": list(os.getloadavg()),
        "note": "2 shared CPU cores; other jobs may run concurrently, so seconds are upper bounds",
    }
    repo = Path(__file__).resolve().parents[1]
    shown = {**vars(args), "out": os.path.relpath(out.resolve(), repo) if out.resolve().is_relative_to(repo) else out}
    command = "python benchmarks/qat.py " + " ".join(
        # by identity: a 0 (``--lm-train-samples 0``) is a value, not an unset flag; a switch has no value
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
        for k, v in shown.items()
        if v is not None and v is not False and v != "" and k not in ("resume", "force")
    )
    # each mode keeps its own command line, so a later run of another mode does not overwrite it
    lm_train_samples = args.lm_train_samples or None  # 0: every training window
    lm_prefix = _language_prefix(args.lm_fp_epochs, lm_train_samples)
    if args.lr_sweep:  # every sweep keeps its command line: the sweeps add rows to sections other runs made
        sweep_commands = payload.setdefault("lr_sweep_commands", [])
        if command not in sweep_commands:
            sweep_commands.append(command)
    elif args.seeds:
        payload["seeds_command"] = command
    elif args.lm_seeds:  # each language FP training keeps its own command line
        legacy = lm_prefix == "language_seed"
        payload["lm_seeds_command" if legacy else f"{lm_prefix.removesuffix('_seed')}_command"] = command
    else:
        payload["command"] = command
    work = Path(args.workdir or tempfile.mkdtemp(prefix="edgeattn-qat-bench-"))
    QAT_SAMPLES.update(vision=args.qat_train_samples, language=args.qat_train_samples)
    sweep = _sweep_specs(args.lr_sweep)
    if sweep and not (seeds or lm_seeds):
        raise SystemExit("--lr-sweep needs --seeds (vision) or --lm-seeds (language)")

    def sweep_rows(prefix: str) -> list[dict[str, Any]]:
        return [r for spec in sweep for r in lr_sweep_rows(*spec, prefix=prefix, controls=args.lr_sweep_controls)]

    table_bits = [] if args.bits == "none" else args.bits.split(",")

    def lr_of(bits: str) -> float:
        return args.lr_w8a8 if bits == "w8a8" else args.lr

    if args.only in (None, "vision"):
        base = {
            "model": "fmvit_t",
            "data": "digits",
            "img_size": 32,
            "profile": "host-cpu",
            "fp_epochs": args.fp_epochs,
            "epochs": args.qat_epochs,
            "lr": args.lr,
            "seed": 0,
            "num_threads": args.threads,
        }
        vis_base = base
        if not seeds:
            run_suite(
                "vision", base, vision_rows(["w8a8", "w4a8", "w4a4"], {"w8a8": args.lr_w8a8}), payload, out, work
            )
    for seed in seeds:  # whole repetitions of the vision table, one per seed (its own split, FP model, QAT runs)
        run_suite(
            f"vision_fp{args.fp_epochs}_seed{seed}" if seed or args.fp_epochs != 5 else "vision",
            {**vis_base, "seed": seed},
            vision_rows(table_bits, {"w8a8": args.lr_w8a8})
            + [r for b in args.ptq_rows.split(",") if b for r in ptq_rows(b)]
            + [
                row
                for bits, losses in _loss_specs(args.ablate)
                for row in ablation_rows(bits, lr_of(bits), token_adaptive=False, losses=losses)
            ]
            + [token_adaptive_row(b, lr_of(b)) for b in args.token_adaptive.split(",") if b]
            + [fp_finetune_row(b, lr_of(b)) for b in args.fp_finetune.split(",") if b]
            + [r for b in args.grad_clip_rows.split(",") if b for r in grad_clip_rows(b, args.grad_clip, lr_of(b))]
            + [r for b in args.mse_rows.split(",") if b for r in mse_ptq_rows(b)]
            + [r for b, losses in _loss_specs(args.single_loss) for r in single_loss_rows(b, lr_of(b), losses)]
            + [r for b in args.row_floor_rows.split(",") if b for r in row_floor_rows(b, args.grad_clip, lr_of(b))]
            + [r for b, n in _augment_specs(args.augment_rows) for r in augment_rows(b, n, lr_of(b))]
            + sweep_rows(""),
            payload,
            out,
            work,
        )
        _seed_summary(payload, vis_base)
        sections = _seed_sections(payload, vis_base)
        subset = set(seeds) != set(sections)  # this run's seeds are a subset: summarise them too
        if subset:
            _seed_summary(payload, vis_base, only=seeds)
        if sweep:  # (as for language) only a sweep adds sweep rows to summarise
            _lr_sweep_summary(payload, sections, f"vision_fp{args.fp_epochs}", language=False, only=None)
            if subset:
                _lr_sweep_summary(payload, sections, f"vision_fp{args.fp_epochs}", language=False, only=seeds)
        _save(out, payload)
    if seeds:
        return
    if args.only in (None, "language"):
        base = {
            "model": "tiny_llama",
            "data": "stdlib",
            "seq_len": 64,
            "profile": "host-cpu",
            "batch_size": 32,
            "fp_epochs": args.lm_fp_epochs,
            "epochs": args.lm_qat_epochs,
            "lr": args.lm_lr,
            "fp_lr": 2e-3,
            "seed": 0,
            "max_train_samples": lm_train_samples,
            "max_val_samples": 256,
            "corpus_bytes": 300_000,
            "num_threads": args.threads,
        }
        for seed in lm_seeds or [0]:
            suite = "language" if lm_prefix == "language_seed" and seed == 0 else f"{lm_prefix}{seed}"
            rows = language_rows(["w8a8", "w4a8"]) + sweep_rows("lm-")
            rows += [token_adaptive_row(b, prefix="lm-") for b in args.token_adaptive.split(",") if b]
            run_suite(suite, {**base, "seed": seed}, rows, payload, out, work)
        _language_seed_summary(payload, lm_prefix)
        if sweep:
            sections = _language_sections(payload, lm_prefix)
            group = lm_prefix.removesuffix("_seed")
            _lr_sweep_summary(payload, sections, group, language=True, only=None)
            if set(lm_seeds) != set(sections):
                _lr_sweep_summary(payload, sections, group, language=True, only=lm_seeds)
        if lm_seeds:
            _save(out, payload)
            return
    if args.only in (None, "vision"):  # ablations last: the main table first if time runs short
        run_suite("vision", vis_base, ablation_rows("w4a8"), payload, out, work)
    _summarise(payload)
    _save(out, payload)
    print(json.dumps(payload.get("summary", {}), indent=2))


if __name__ == "__main__":
    sys.exit(run_cli(main))
