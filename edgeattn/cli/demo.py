"""`edgeattn demo`: train, quantize, export, profile and synthesize-in-simulation, then write a report."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape

from edgeattn.cli._common import console


def demo(
    output: Path = typer.Option(Path("out/demo"), "--output", "-o", help="Folder for everything the demo writes."),
    force: bool = typer.Option(False, "--force", help="Replace the output folder if it is not empty."),
    fast: bool = typer.Option(False, "--fast", help="Smaller run (fewer epochs and samples) for smoke tests."),
) -> None:
    """Run the whole path on digits: FP32 -> EdgeQAT -> export + parity -> profile -> HLS C-sim -> report."""
    from edgeattn.demo import DemoSettings, run_demo
    from edgeattn.errors import EdgeAttnError

    t0 = time.perf_counter()
    settings = DemoSettings.fast() if fast else DemoSettings()
    try:
        results = run_demo(output, settings, force=force, console=console)
    except KeyboardInterrupt:  # typer would end with 130 and no word; say where the partial report is
        written = (output / "summary.json").is_file()
        where = f"; {output / 'report.md'} and summary.json say which steps ran" if written else ""
        raise EdgeAttnError(f"interrupted{where}", exit_code=130) from None
    failed = [name for name, r in results.items() if r.status != "ok"]
    console.rule("[bold]summary")
    for name, r in results.items():
        colour = {"ok": "green", "skipped": "yellow"}.get(r.status, "red")
        console.print(f"[{colour}]{r.status:>7}[/]  {name:<8} {r.seconds:6.1f} s  {escape(r.detail)}")
    written = results.get("report") is not None and results["report"].status == "ok"
    where = f"Report: [bold]{output / 'report.html'}[/] (and report.md)" if written else "No report was written."
    console.print(f"Total {time.perf_counter() - t0:.0f} s. {where} Step figures: {output / 'summary.json'}")
    if failed:
        console.print(f"[red]{len(failed)} step(s) did not complete:[/] {', '.join(failed)} (exit code 1)")
        raise typer.Exit(code=1)
