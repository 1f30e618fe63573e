"""Where the W4A4 EdgeQAT gradient spikes come from: per-loss gradient norms over the first QAT steps.

Without gradient clipping, some W4A4 seeds of ``benchmarks/qat.py`` start QAT with global gradient norms near 1e6
and stall (``docs/qat.md``, "W4A4: gradient clipping ends the stalls"). This script replays the first steps of
that run (the same FP checkpoint, PTQ start, batches, optimizer and lr schedule as the ``edgeqat-w4a4`` row: KD +
distribution loss, unclipped) and splits each step's gradient by loss. The forward pass and the task and
distribution terms are the trainer's own (``edgeattn.quant.train.qat_loss_terms``), so the replay cannot drift
from ``quant/train.py``:

* ``grad_task``: the KD + cross-entropy term;
* ``grad_distribution``: the distribution loss with the plain cosine (``row_floor=0``, what the stalled runs
  used), which drives the replayed updates together with ``grad_task``;
* ``grad_distribution_without_small_rows``: the distribution loss without the student logit rows whose norm is
  under 1e-3 of the teacher row's, the counterfactual that tests whether the spikes come from rows that 4-bit Q and
  K quantize to (almost) zero: the gradient of a row's cosine similarity grows as 1 / ||student row||, capped only
  by its eps;
* ``grad_distribution_row_floor``: the distribution loss as edgeattn computes it now, with the student row's norm
  floored at 1e-3 of the teacher row's (``LossConfig.distribution_row_floor``);
* ``zero_logit_rows`` / ``small_logit_rows``: per attention layer, how many student logit rows are exactly zero /
  under that 1e-3; ``min_row_norm_ratio``: the smallest ||student row|| / ||teacher row||.

    python benchmarks/grad_spikes.py --fp-checkpoint /tmp/q/bench20/vision_fp20_seed1-fp/fp.pt --seed 1 \
        --out benchmarks/grad_spikes.json

``--seed`` defaults to the seed the checkpoint records (its meta's ``split.seed``); another one is refused.

The FP checkpoints come from ``benchmarks/qat.py --seeds ... --fp-epochs 20 --workdir /tmp/q/bench20``. Each run
adds (or replaces) its ``seed<N>_<bits>`` entry of ``--out`` and keeps the others. Quick check: ``--steps 1 --out
/tmp/grad_spikes.json`` with any FP checkpoint of that benchmark.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from _cli import (
    BenchError,
    Parser,
    check_out,
    command_line,
    description,
    nonneg_float,
    positive_int,
    provenance,
    read_json,
    run_cli,
)
from edgeattn.quant.checkpoint import load_checkpoint, read_checkpoint_file
from edgeattn.quant.losses import DISTRIBUTION_ROW_FLOOR, distribution_loss
from edgeattn.quant.train import (
    TrainConfig,
    _batches,
    calibrated_ptq_model,
    epoch_order,
    frozen_teacher,
    load_data,
    qat_loss_terms,
    qat_optimizer,
    quant_config_for,
    seed_everything,
    steps_per_epoch,
)

SMALL_ROW = DISTRIBUTION_ROW_FLOOR  # a student logit row this small relative to the teacher's is "all but zeroed"


def _norm(grads: tuple[torch.Tensor, ...]) -> float:
    """Global L2 norm, as ``clip_grad_norm_`` measures it."""
    return float(torch.nn.utils.get_total_norm(grads))


def replay(cfg: TrainConfig, steps: int) -> list[dict[str, Any]]:
    """The first ``steps`` QAT steps of ``cfg`` (unclipped), with each step's gradient split by loss.

    Each step's forward pass, task term and distribution term come from the trainer's own
    :func:`~edgeattn.quant.train.qat_loss_terms` (with ``distribution_row_floor`` 0, the plain cosine); the
    counterfactual terms are computed from the attention logits it recorded.
    """
    # the plain cosine the stalled runs used: then the trainer's distribution term is grad_distribution's
    cfg = cfg.model_copy(update={"losses": cfg.losses.model_copy(update={"distribution_row_floor": 0.0})})
    train, _val, info = load_data(cfg)
    qcfg = quant_config_for(cfg, info)
    seed_everything(cfg.seed)  # as quant.train does before the FP model / PTQ
    teacher = frozen_teacher(*load_checkpoint(cfg.fp_checkpoint, dtype=torch.float32))
    student = calibrated_ptq_model(cfg, teacher, qcfg, train)
    seed_everything(cfg.seed + 1)  # as quant.train's QAT loop does
    opt, sched = qat_optimizer(cfg, student, steps_per_epoch(len(train), cfg.batch_size))
    params = list(student.parameters())
    names = [n for n, _ in student.named_parameters()]
    w = cfg.losses.distribution_weight
    records: list[dict[str, Any]] = []
    student.train()
    for step, (x, y) in enumerate(_batches(train, epoch_order(len(train), cfg.seed, 0), cfg.batch_size)):
        if step == steps:
            break
        terms = qat_loss_terms(cfg, student, student, teacher, x, y)
        if terms.distribution is None:
            raise ValueError("grad_spikes: the replayed run needs the distribution loss on an attention model")
        s_logits, t_logits = terms.student_logits, terms.teacher_logits
        task = terms.task
        dist = w * terms.distribution
        dist_floored = w * distribution_loss(s_logits, t_logits)  # edgeattn's default row floor
        # per layer, ||student row|| / ||teacher row||, computed once for the masks and the counts below
        ratios = [
            s.detach().norm(dim=-1) / t.norm(dim=-1).clamp_min(1e-12) for s, t in zip(s_logits, t_logits, strict=True)
        ]
        # the counterfactual: the plain-cosine loss over the rows that are not (all but) zero
        large = [r >= SMALL_ROW for r in ratios]
        dist_large = w * distribution_loss(
            [s[m] for s, m in zip(s_logits, large, strict=True)],
            [t[m] for t, m in zip(t_logits, large, strict=True)],
            row_floor=0.0,
        )
        # materialize_grads: a parameter a loss does not reach gets zeros, so the parts add up
        g_task = torch.autograd.grad(task, params, retain_graph=True, materialize_grads=True)
        g_dist = torch.autograd.grad(dist, params, retain_graph=True, materialize_grads=True)
        g_dist_large = torch.autograd.grad(dist_large, params, retain_graph=True, materialize_grads=True)
        g_dist_floored = torch.autograd.grad(dist_floored, params, materialize_grads=True)
        g_total = tuple(a + b for a, b in zip(g_task, g_dist, strict=True))
        dist_norms = {n: float(g.norm()) for n, g in zip(names, g_dist, strict=True)}
        top_name = max(dist_norms, key=dist_norms.__getitem__)
        records.append(
            {
                "step": step + 1,
                "grad_total": _norm(g_total),
                "grad_task": _norm(g_task),
                "grad_distribution": _norm(g_dist),
                "grad_distribution_without_small_rows": _norm(g_dist_large),
                "grad_distribution_row_floor": _norm(g_dist_floored),
                "largest_distribution_grad": {"param": top_name, "norm": dist_norms[top_name]},
                "zero_logit_rows": [int((r == 0).sum()) for r in ratios],
                "small_logit_rows": [int((~m).sum()) for m in large],
                "min_row_norm_ratio": min(float(r.min()) for r in ratios),
                "rows_per_layer": [int(s.numel() // s.shape[-1]) for s in s_logits],
            }
        )
        for p, g in zip(params, g_total, strict=True):
            p.grad = g
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return records


def checkpoint_seed(path: str, seed: int | None) -> int:
    """The seed to replay: the one the FP checkpoint's train/validation split was drawn with (its meta's
    ``split.seed``). A ``seed`` that differs is a :class:`BenchError`: the replay would draw another split and other
    batches than the run it explains. ``seed`` is needed only for a checkpoint that does not record its split."""
    split = read_checkpoint_file(path)["meta"].get("split") or {}
    saved = split.get("seed")
    if saved is None:
        if seed is None:
            raise BenchError(f"--fp-checkpoint '{path}' does not record its split seed: pass --seed")
        return seed
    if seed is not None and seed != saved:
        raise BenchError(
            f"--seed {seed} does not match --fp-checkpoint '{path}', trained on the split of seed {saved}; "
            f"leave --seed out or pass {saved}"
        )
    return int(saved)


def main() -> None:
    """Replay the steps and add this seed's entry to ``--out``."""
    ap = Parser(description=description(__doc__))
    ap.add_argument("--fp-checkpoint", required=True, help="FP checkpoint of benchmarks/qat.py's seed")
    ap.add_argument(
        "--seed", type=int, default=None, help="the seed that checkpoint was trained with (default: the one it records)"
    )
    ap.add_argument("--bits", default="w4a4")
    ap.add_argument("--steps", type=positive_int, default=20)
    ap.add_argument("--lr", type=nonneg_float, default=5e-4)
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).with_name("grad_spikes.json")))
    args = ap.parse_args()
    out = check_out(args.out, "--out")
    if not Path(args.fp_checkpoint).is_file():
        raise BenchError(f"--fp-checkpoint '{args.fp_checkpoint}' is not a file")
    args.seed = checkpoint_seed(args.fp_checkpoint, args.seed)
    previous = read_json(out, "--out") if out.exists() else {}  # read now: a bad file fails before the replay
    prov = provenance()
    torch.set_num_threads(args.threads)
    # the edgeqat-no-entropy-<bits> row of benchmarks/qat.py (--fp-epochs 20 --qat-epochs 6), without grad_clip
    cfg = TrainConfig.parse(
        {
            "model": "fmvit_t",
            "data": "digits",
            "img_size": 32,
            "profile": "host-cpu",
            "epochs": 6,
            "lr": args.lr,
            "seed": args.seed,
            "num_threads": args.threads,
            "fp_checkpoint": args.fp_checkpoint,
            "bits": args.bits,
            "losses": {"kd": True, "entropy": False, "distribution": True},
            "output_dir": tempfile.mkdtemp(prefix="edgeattn-grad-spikes-"),
        },
        "grad_spikes",
    )
    records = replay(cfg, args.steps)
    payload: dict[str, Any] = read_json(out, "--out") if out.exists() else previous  # as it is now
    spiky = [r for r in records if r["grad_total"] > 1e3]
    payload[f"seed{args.seed}_{args.bits}"] = {
        "command": command_line(),
        **prov,
        "threads": args.threads,
        "load_average_at_end": list(os.getloadavg()),
        "steps_over_1e3": len(spiky),
        "median_grad_total": statistics.median(r["grad_total"] for r in records),
        "median_grad_distribution_without_small_rows": statistics.median(
            r["grad_distribution_without_small_rows"] for r in records
        ),
        "max_grad_distribution_without_small_rows": max(r["grad_distribution_without_small_rows"] for r in records),
        "max_grad_distribution_row_floor": max(r["grad_distribution_row_floor"] for r in records),
        "max_grad_task": max(r["grad_task"] for r in records),
        "steps": records,
    }
    from edgeattn.cli._common import write_json

    write_json(out, payload)
    for r in records:
        print(
            f"step {r['step']:3d} total {r['grad_total']:10.3g} task {r['grad_task']:8.3g} "
            f"dist {r['grad_distribution']:10.3g} w/o small rows {r['grad_distribution_without_small_rows']:8.3g} "
            f"floored {r['grad_distribution_row_floor']:8.3g} "
            f"zero rows {r['zero_logit_rows']} small rows {r['small_logit_rows']} "
            f"min ratio {r['min_row_norm_ratio']:.2g}"
        )


if __name__ == "__main__":
    sys.exit(run_cli(main))
