"""`edgeattn qat`: train (or load) an FP model, build the PTQ baseline, fine-tune with EdgeQAT, report.

Settings come from ``--preset`` (default, demo, w4a8, w4a4, llama), then ``--config FILE`` (YAML, validated:
unknown keys are errors), then flags. See docs/qat.md. ``python -m edgeattn.quant.train`` (what ``torchrun`` launches)
runs this same command, so both take the same options.
"""

from __future__ import annotations

from pathlib import Path

import typer

from edgeattn.cli._common import check_report_path, console, sigterm_as_interrupt, write_json


@sigterm_as_interrupt()  # outside the run's own stop handler (after it, a second SIGTERM): 130, as Ctrl-C
def qat(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file (keys: docs/qat.md)."),
    preset: str | None = typer.Option(None, "--preset", help="Start from a preset: default, demo, w4a8, w4a4, llama."),
    model: str | None = typer.Option(None, "--model", "-m", help="Registry model name (edgeattn models list)."),
    data: str | None = typer.Option(
        None, "--data", help="'digits', 'stdlib', an image folder (root/<class>/*) or a text file."
    ),
    profile: str | None = typer.Option(None, "--profile", "-p", help="Device profile name or YAML path."),
    bits: str | None = typer.Option(None, "--bits", help="'profile' or wNaM: w8a8, w4a8, w4a4."),
    epochs: int | None = typer.Option(None, "--epochs", help="QAT epochs."),
    fp_epochs: int | None = typer.Option(None, "--fp-epochs", help="FP training epochs (no --fp-checkpoint)."),
    lr: float | None = typer.Option(None, "--lr", help="QAT peak learning rate."),
    lr_schedule: str | None = typer.Option(None, "--lr-schedule", help="cosine, constant or step."),
    grad_clip: float | None = typer.Option(None, "--grad-clip", help="Clip the QAT gradient's global L2 norm."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch size."),
    augment_shift: int | None = typer.Option(
        None, "--augment-shift", help="Vision: shift training images by a random 0..N pixels per axis (0: off)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Random seed."),
    img_size: int | None = typer.Option(None, "--img-size", help="Vision input size."),
    resize: str | None = typer.Option(
        None,
        "--resize",
        help="Image folder to img_size: crop (shorter side, centre crop; default) or stretch (aspect not kept).",
    ),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output directory (default runs/qat)."),
    fp_checkpoint: Path | None = typer.Option(None, "--fp-checkpoint", help="Start from this FP checkpoint."),
    token_adaptive: bool | None = typer.Option(
        None, "--token-adaptive/--no-token-adaptive", help="EdgeQAT token-importance-aware bits."
    ),
    kd: bool | None = typer.Option(None, "--kd/--no-kd", help="Logit distillation from the FP model."),
    entropy: bool | None = typer.Option(
        None, "--entropy/--no-entropy", help="Entropy loss on Q and K (default off, docs/qat.md)."
    ),
    distribution: bool | None = typer.Option(
        None, "--distribution/--no-distribution", help="Attention-logit distribution loss."
    ),
    max_train_samples: int | None = typer.Option(None, "--max-train-samples", help="Cap training samples."),
    max_val_samples: int | None = typer.Option(None, "--max-val-samples", help="Cap validation samples."),
    threads: int | None = typer.Option(None, "--threads", help="torch intra-op threads."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --output exactly where it stopped (same settings)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Start over in an --output that already holds a run (removes that run's files); "
        "replace an existing --json file.",
    ),
    json_out: Path | None = typer.Option(
        None, "--json", help="Also write the result as JSON here (an existing file: with --force or --resume)."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar or per-epoch lines."),
) -> None:
    """Quantization-aware training (EdgeQAT) with a PTQ baseline; writes checkpoints and metrics.json."""
    from edgeattn.errors import EdgeAttnError
    from edgeattn.quant.train import (
        TrainingDiverged,
        build_config,
        default_bits_note,
        process_rank,
        resumable,
        run,
    )

    if fp_checkpoint is not None and fp_checkpoint.is_dir():
        raise EdgeAttnError(f"--fp-checkpoint '{fp_checkpoint}' is a folder, not a checkpoint file")
    if fp_checkpoint is not None and not fp_checkpoint.is_file():
        raise EdgeAttnError(f"--fp-checkpoint '{fp_checkpoint}' not found")
    cfg = build_config(
        config_file=str(config) if config else None,
        preset=preset,
        model=model,
        data=data,
        profile=profile,
        bits=bits,
        epochs=epochs,
        fp_epochs=fp_epochs,
        lr=lr,
        lr_schedule=lr_schedule,
        grad_clip=grad_clip,
        batch_size=batch_size,
        augment_shift=augment_shift,
        seed=seed,
        img_size=img_size,
        resize=resize,
        output_dir=str(output) if output else None,
        fp_checkpoint=str(fp_checkpoint) if fp_checkpoint else None,
        token_adaptive=token_adaptive,
        max_train_samples=max_train_samples,
        max_val_samples=max_val_samples,
        num_threads=threads,
        loss_kd=kd,
        loss_entropy=entropy,
        loss_distribution=distribution,
    )
    if json_out is not None:  # before training, not after it
        from edgeattn.quant.train import RUN_FILES

        run_files = {(Path(cfg.output_dir) / name).resolve() for name in RUN_FILES}
        if json_out.resolve() in run_files:
            raise EdgeAttnError(f"--json '{json_out}' is one of the run's own files; write it elsewhere")
        # the inputs: the data (a file or an image folder), the config, the FP checkpoint, a profile YAML
        inputs = (cfg.data, config, fp_checkpoint, cfg.profile)
        check_report_path(json_out, "--json", force, inputs, resume=resume)
    note = default_bits_note(cfg)
    if note is not None and process_rank() == 0:
        console.print(f"[yellow]note[/]: {note}")
    if fp_checkpoint is not None:  # fail before any training if the checkpoint is unusable
        from edgeattn.quant.checkpoint import read_checkpoint_file

        read_checkpoint_file(fp_checkpoint)
    try:
        result = run(cfg, resume=resume, progress=not no_progress, force=force)
    except TrainingDiverged as exc:  # the error line follows; --json records the diverged run like result.json
        if json_out is not None and process_rank() == 0:
            write_json(json_out, exc.result)
        raise
    if process_rank() == 0:  # under torchrun every process gets here; one report is enough
        if any(result.get(key) is not None for key in ("fp32", "ptq", "qat")):  # no empty table after an early stop
            _print_table(result)
        if json_out is not None:
            write_json(json_out, result)
        if result.get("status") == "interrupted":
            out = result["output_dir"]
            if resumable(out):
                console.print(f"[yellow]stopped[/]: the last complete stage is kept in {out} (--resume continues)")
            else:  # e.g. stopped during FP training: no finished FP model or QAT epoch to continue from
                console.print(f"[yellow]stopped[/] before anything resumable was saved in {out} (--force starts over)")
    if result.get("status") == "interrupted":
        raise typer.Exit(130)


def _print_table(result: dict) -> None:
    from rich.table import Table

    metric = result.get("metric", "top1")
    title = f"{result.get('model')} on {result.get('data')}, {_bits_title(result)} ({result.get('profile')})"
    table = Table(title=title)
    table.add_column("model")
    table.add_column("top-1 %" if metric == "top1" else "perplexity", justify="right")
    table.add_column("attention KL vs FP", justify="right")
    for key, label, kl in (
        ("fp32", "FP32", None),
        ("ptq", "PTQ", "attn_kl_ptq"),
        ("qat", "QAT", "attn_kl_qat"),
    ):
        value = result.get(key)
        if value is None:
            continue
        kl_value = result.get(kl) if kl else None
        if key == "qat" and result.get("qat_epochs_complete") is not None:  # stopped: the epoch that is kept
            label = f"QAT (epoch {result['qat_epochs_complete']}, kept)"
        table.add_row(label, f"{value:.2f}", "" if kl_value is None else f"{kl_value:.5f}")
    console.print(table)
    console.print(f"outputs in {result.get('output_dir')} ({result.get('seconds', 0):.1f} s)")


def _bits_title(result: dict) -> str:
    """The bits the run quantized at, from its QuantConfig: ``W7A8``, ``W8A8, mixed: 2 overrides, 1 float layer``
    (a result without one, the ``bits`` setting)."""
    qc = result.get("quant_config")
    if not qc:
        return str(result.get("bits"))
    weight_bits = min(qc["weight_bits"], qc.get("weight_max_bits") or qc["weight_bits"])
    title = f"W{weight_bits}A{qc['act_bits']}"
    counts = ((len(qc.get("overrides") or {}), "override"), (len(qc.get("float_layers") or ()), "float layer"))
    mixed = [f"{n} {what}{'s' if n > 1 else ''}" for n, what in counts if n]
    return f"{title}, mixed: {', '.join(mixed)}" if mixed else title
