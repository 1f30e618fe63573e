"""`edgeattn profile`: measure what exported artifacts really cost on this device, and where."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeattn.cli._common import check_report_path, sigterm_as_interrupt
from edgeattn.errors import EdgeAttnError


def _parse_shapes(specs: list[str] | None) -> dict[str, list[int]]:
    """``--shape NAME=D0xD1x...`` options as ``{name: dims}``; a name given twice is refused, not overwritten."""
    shapes: dict[str, list[int]] = {}
    for spec in specs or []:
        name, sep, dims = spec.partition("=")
        if sep and name in shapes:
            raise EdgeAttnError(f"--shape {name} given twice ({name}={'x'.join(map(str, shapes[name]))} and {spec})")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.lower().split("x")]
            if min(shapes[name]) < 1:
                raise ValueError
        except ValueError:
            raise EdgeAttnError(
                f"--shape {spec!r} is not NAME=D0xD1x... with dimensions >= 1 (e.g. input=1x3x224x224)"
            ) from None
    return shapes


@sigterm_as_interrupt()  # SIGTERM stops the timing like Ctrl-C
def profile(
    artifacts: list[Path] = typer.Argument(
        None,
        help="Artifacts to profile: .onnx, .xml (OpenVINO IR), .engine/.plan/.trt (TensorRT), .mlpackage/.mlmodel.",
    ),
    runtime: str = typer.Option(
        "auto", "--runtime", "-r", help="auto|onnxruntime|openvino|tensorrt|coreml (auto: by file extension)."
    ),
    device: str = typer.Option(
        None,
        "--device",
        "-d",
        help="Device inside the runtime: CPU, GPU, NPU ... (default: CPU; GPU for TensorRT).",
    ),
    warmup: int = typer.Option(10, "--warmup", help="Untimed runs after the cold first inference."),
    iters: int = typer.Option(None, "--iters", "-n", help="Timed runs per artifact (default 100)."),
    seconds: float = typer.Option(None, "--seconds", "-t", help="Time the artifacts for S seconds in total."),
    batch: int = typer.Option(
        None, "--batch", "-b", help="Batch size (the artifact's batch dim must allow it)."
    ),
    threads: int = typer.Option(
        None, "--threads", help="CPU threads the runtime may use, 1-1024 (default: its own)."
    ),
    per_layer: bool = typer.Option(False, "--per-layer", help="Add the runtime's per-layer breakdown."),
    layer_runs: int = typer.Option(
        20, "--layer-runs", help="Profiled inferences the per-layer medians are taken over."
    ),
    hint: str = typer.Option("latency", "--hint", help="OpenVINO performance hint: latency|throughput|none."),
    infer_precision: str = typer.Option(
        None,
        "--infer-precision",
        help="OpenVINO precision of non-quantized ops: f32|bf16|f16 (default: device's).",
    ),
    shape: list[str] = typer.Option(None, "--shape", help="Input shape NAME=D0xD1x... (repeatable)."),
    json_out: Path = typer.Option(None, "--json", help="Write the full report (schema v1) as JSON."),
    plot: Path = typer.Option(None, "--plot", help="Write latency distributions / per-layer bars (PNG)."),
    list_devices: bool = typer.Option(
        False, "--list-devices", help="Show the runtimes and devices here, then exit."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing --json/--plot files."),
) -> None:
    """Profile artifacts on this machine: cold start, latency statistics, memory, MACs vs peak, per-layer.

    Several artifacts are timed interleaved (A B A B ...) and reported side by side with ratios to the first.
    Ctrl-C stops the timing and prints what was measured so far.
    """
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from edgeattn.cli._common import console, transient_progress, write_json
    from edgeattn.profile import list_devices as _list_devices
    from edgeattn.profile import plot_report, profile_artifacts, render_devices, render_table

    _check_outputs(json_out, plot, force, _inputs(artifacts or []))
    if list_devices:
        if artifacts:
            raise EdgeAttnError("--list-devices takes no ARTIFACT; run it alone, then profile the artifacts")
        rows = _list_devices()
        render_devices(rows, console)
        if json_out:
            write_json(json_out, {"runtimes": rows})
        return
    if not artifacts:
        raise EdgeAttnError("give at least one ARTIFACT to profile (or --list-devices)")
    shapes = _parse_shapes(shape)
    labels = {"load": "loading", "warmup": "warm-up", "timed": "timed runs", "layers": "per-layer"}
    bar = transient_progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
    )
    tasks: dict[str, int] = {}

    def progress(phase: str, done: float, total: float) -> None:
        if not tasks:  # opened at the first step of work: profile_artifacts' checks of settings and paths print alone
            bar.start()
        if phase not in tasks:
            tasks[phase] = bar.add_task(labels.get(phase, phase), total=total)
        bar.update(tasks[phase], completed=done, total=total)

    try:
        report = profile_artifacts(
            artifacts,
            runtime=runtime,
            device=device,
            warmup=warmup,
            iters=iters,
            seconds=seconds,
            batch=batch,
            threads=threads,
            per_layer=per_layer,
            shapes=shapes,
            hint=hint,
            infer_precision=infer_precision,
            layer_runs=layer_runs,
            progress=progress,
        )
    finally:
        if tasks:
            bar.stop()
    render_table(report, console)
    _warn_failed_parity(report)
    if json_out:
        write_json(json_out, report)
        console.print(f"wrote {json_out}")
    if plot:
        plot_report(report, plot)
        console.print(f"wrote {plot}")
    if report.interrupted:
        console.print("[red]interrupted: the figures above are what was measured before Ctrl-C[/]")
        raise typer.Exit(130)


def _check_outputs(json_out: Path | None, plot: Path | None, force: bool, inputs: list[Path]) -> None:
    """Refuse, before measuring, outputs that cannot be written or would be lost: a path that cannot be
    written, an input (``--force`` is for old reports, never inputs), an existing file without ``--force``,
    ``--json`` and ``--plot`` naming one file, a plot format matplotlib cannot write."""
    from edgeattn.profile.plot import check_plot_path

    for out, flag in ((json_out, "--json"), (plot, "--plot")):
        if out is not None:
            check_report_path(out, flag, force, inputs)
    if json_out is not None and plot is not None and json_out.resolve() == plot.resolve():
        raise EdgeAttnError(f"--json and --plot name the same file '{json_out}'; give each its own")
    if plot is not None:
        check_plot_path(plot)


def _inputs(artifacts: list[Path]) -> list[Path]:
    """The files the artifacts are read from: each artifact (a file, or a folder such as an .mlpackage), an
    OpenVINO IR's ``.bin`` and an ONNX model's external-data files."""
    files = list(artifacts)
    for art in artifacts:
        if art.suffix.lower() == ".xml":
            files.append(art.with_suffix(".bin"))
        elif art.suffix.lower() == ".onnx" and art.is_file():
            files += [art.parent / name for name in _external_data(art)]
    return files


def _external_data(onnx_path: Path) -> set[str]:
    """The external-data file names an ONNX model's tensors point to (none where it cannot be read: profiling
    it reports that)."""
    try:
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable model is reported by the profiler itself
        return set()
    tensors = list(model.graph.initializer) + [
        a.t for node in model.graph.node for a in node.attribute if a.HasField("t")
    ]
    return {e.value for t in tensors for e in t.external_data if e.key == "location"}


def _warn_failed_parity(report) -> None:
    """One stderr line per artifact that failed its parity gate in `edgeattn export` (timed all the same)."""
    from rich.markup import escape

    from edgeattn.cli._common import err_console

    for r in report.results:
        if r.parity_failed:
            err_console.print(
                f"[yellow]warning:[/] {escape(r.artifact)} failed its parity gate in edgeattn export (its outputs do "
                "not match the model; see report.json beside it): timed all the same",
                highlight=False,
                soft_wrap=True,
            )
