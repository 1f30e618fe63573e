"""`edgeattn demo`: train, quantize, export, profile and synthesize-in-simulation, then write a report."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from edgeattn.cli._common import console


def demo(
    output: Path = typer.Option(Path("out/demo"), "--output", "-o", help="Folder for everything the demo writes."),
    force: bool = typer.Option(False, "--force", help="Replace the output folder if it is not empty."),
    fast: bool = typer.Option(False, "--fast", help="Smaller run (fewer epochs and samples) for smoke tests."),
) -> None:
    """Run the whole path on digits: FP32 -> EdgeQAT -> export + parity -> profile -> HLS C-sim -> report."""
    from edgeattn.demo import DemoSettings, run_demo

    t0 = time.perf_counter()
    settings = DemoSettings.fast() if fast else DemoSettings()
    results = run_demo(output, settings, force=force, console=console)
    failed = [name for name, r in results.items() if r.status != "ok"]
    console.rule("[bold]summary")
    for name, r in results.items():
        colour = {"ok": "green", "failed": "red", "skipped": "yellow"}[r.status]
        console.print(f"[{colour}]{r.status:>7}[/]  {name:<8} {r.seconds:6.1f} s  {r.detail}")
    console.print(f"Total {time.perf_counter() - t0:.0f} s. Report: [bold]{output / 'report.html'}[/] "
                  f"(and report.md)")
    if failed:
        raise typer.Exit(code=1)
