"""`edgeattn demo`: train, quantize, export, profile and synthesize-in-simulation, then write a report."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape

from edgeattn.cli._common import console, sigterm_as_interrupt


@sigterm_as_interrupt()  # SIGTERM unwinds like Ctrl-C: exit 130, the staging folder removed, the report kept
def demo(
    output: Path = typer.Option(Path("out/demo"), "--output", "-o", help="Folder for everything the demo writes."),
    force: bool = typer.Option(
        False, "--force", help="Replace the output folder if it is not empty, once the new run has ended (a "
        "stopped run leaves it as it was and is kept beside it as NAME.partial-DATE-TIME)."),
    fast: bool = typer.Option(False, "--fast", help="Smaller run (fewer epochs and samples) for smoke tests."),
) -> None:
    """Run the whole path on digits: FP32 -> EdgeQAT -> export + parity -> profile -> HLS C-sim -> report."""
    from edgeattn.demo import DemoInterrupted, DemoSettings, run_demo
    from edgeattn.errors import EdgeAttnError

    t0 = time.perf_counter()
    settings = DemoSettings.fast() if fast else DemoSettings()
    try:
        results = run_demo(output, settings, force=force, console=console)
    except KeyboardInterrupt as exc:  # typer would end with 130 and no word; say where the partial report is
        kept = isinstance(exc, DemoInterrupted) and exc.kept_aside
        folder = exc.where if kept else output
        note = f"; the previous output in {output} is unchanged" if kept else ""
        if (folder / "summary.json").is_file():
            note += f"; {folder / 'report.md'} and summary.json say which steps ran"
        raise EdgeAttnError(f"interrupted{note}", exit_code=130) from None
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
