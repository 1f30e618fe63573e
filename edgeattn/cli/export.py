"""`edgeattn export`: write a target's artifact(s) and report.json, and run the parity gate on each.

Exit codes: 0 ok, 2 bad input, 3 parity failed, 4 missing backend, 5 op/target problem, 6 output exists,
7 bad checkpoint (see docs/export.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from edgeattn.cli._common import check_report_path, console, sigterm_as_interrupt, with_run_files, write_json


@sigterm_as_interrupt()  # SIGTERM unwinds like Ctrl-C: the staging folder is removed
def export(
    model: str = typer.Argument(..., help="Registry model name, or a checkpoint written by 'edgeattn qat'."),
    target: str = typer.Option(..., "--target", "-t", help="onnx, tensorrt, openvino or coreml."),
    profile: str = typer.Option(..., "--profile", "-p", help="Device profile name or YAML path."),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Output directory (artifacts + report.json); replaced as a whole with --force."
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Weights for MODEL (a qat checkpoint)."
    ),
    precision: str | None = typer.Option(None, "--precision", help="fp32, fp16 or int8 (default: profile)."),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset (default: profile; not for coreml)."),
    batch: int | None = typer.Option(None, "--batch", help="Batch size of the exported input."),
    dynamic_batch: bool | None = typer.Option(
        None, "--dynamic-batch/--static-batch", help="Dynamic batch dimension (default: profile; coreml: static only)."
    ),
    atol: float | None = typer.Option(
        None, "--atol", help="Parity max-abs tolerance as a fraction of the output range (default: profile)."
    ),
    n_inputs: int = typer.Option(32, "--n-inputs", help="Number of parity inputs (1-4096)."),
    img_size: int | None = typer.Option(None, "--img-size", help="Vision input side for registry models."),
    cpu_isa: str | None = typer.Option(
        None,
        "--cpu-isa",
        help="Cap OpenVINO's CPU kernels at this oneDNN ISA (e.g. AVX2, AVX512_CORE; any case) to check that CPU.",
    ),
    exporter: str = typer.Option(
        "torchscript", "--exporter", help="torch ONNX exporter: torchscript or dynamo (coreml: torchscript)."
    ),
    threads: int = typer.Option(
        2, "--threads", help="Threads of ONNX Runtime and OpenVINO, 1-1024 (torch runs on one)."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of a registry model's random weights, the generated parity inputs and PTQ's batches."
    ),
    noise_floor: bool = typer.Option(
        True,
        "--noise-floor/--no-noise-floor",
        help="Quantized models: widen the tolerance to 2x the reference's rounding noise floor (at most 4x).",
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace an existing output directory (and an existing --json file)."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write report.json's content here."),
) -> None:
    """Export MODEL for a deployment target, then check the artifact in its runtime against PyTorch."""

    from edgeattn.atomic import check_writable_folder
    from edgeattn.errors import EdgeAttnError
    from edgeattn.export import export_model
    from edgeattn.export.report import ParityFailure

    if json_out:  # before exporting, not after it
        check_report_path(json_out, "--json", force, with_run_files((model, checkpoint, profile)), output=output)
    check_writable_folder(Path(os.path.abspath(output)).parent, f"output folder '{output}'")
    if exporter not in ("torchscript", "dynamo"):
        raise EdgeAttnError(f"--exporter must be torchscript or dynamo, got '{exporter}'")
    kwargs = {"img_size": img_size} if img_size is not None else None  # --img-size 0 is refused, not dropped
    with console.status(f"exporting {model} for {target} ...", spinner="dots"):
        try:
            report = export_model(
                model,
                target,
                profile,
                output,
                precision=precision,
                checkpoint=str(checkpoint) if checkpoint else None,
                opset=opset,
                batch=batch,
                dynamic_batch=dynamic_batch,
                atol=atol,
                force=force,
                n_inputs=n_inputs,
                model_kwargs=kwargs,
                exporter=exporter,
                cpu_isa=cpu_isa,
                threads=threads,
                seed=seed,
                noise_floor=noise_floor,
            )
        except ParityFailure as exc:
            if json_out:
                write_json(json_out, exc.report)
            console.print(exc.report.summary(), highlight=False, soft_wrap=True)
            _print_notes(exc.report)
            raise
    console.print(
        f"[bold]{report.model}[/] -> {report.target} ({report.precision}), profile "
        f"{report.profile['name']}: {', '.join(Path(p).name for p in report.artifacts.values())}"
    )
    console.print(report.summary(), highlight=False, soft_wrap=True)
    _print_notes(report)
    if report.trtexec:
        console.print(f"trtexec: {report.trtexec}", highlight=False, soft_wrap=True)
    if report.kernels:
        k = report.kernels
        console.print(
            f"OpenVINO int8 kernels: {sum(n['int8'] for n in k['nodes'])}/{k['count']} compute nodes"
        )
    console.print(f"report: {Path(report.out_dir) / 'report.json'}", highlight=False, soft_wrap=True)
    if json_out:
        write_json(json_out, report)


def _print_notes(report) -> None:
    """The report's notes, one dim line each (the first says how a trained checkpoint's bits were exported)."""
    for note in report.notes:
        console.print(f"[dim]{note}[/]", highlight=False, soft_wrap=True)
