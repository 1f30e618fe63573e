"""`edgeattn approx ...`: accuracy report of the softmax/GELU approximations (float and fixed point)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack, suppress
from pathlib import Path

import typer

from edgeattn.cli._common import check_report_path, console, missing_folders, transient_progress, write_json

app = typer.Typer(help="Hardware-friendly softmax and GELU approximations.", no_args_is_help=True)


@app.command("report")
def report(
    json_path: Path | None = typer.Option(None, "--json", help="Write the records as JSON to FILE."),
    plot: Path | None = typer.Option(None, "--plot", help="Write the error curves as a PNG to FILE.png."),
    bits: str | None = typer.Option(
        None,
        "--bits",
        help="Fixed-point widths: 'IN,OUT' for softmax (signed IN-bit scores with IN-8 fraction bits, OUT-bit"
        " "
        "probabilities; default 16,8) or 'IN,OUT,GIN,GOUT' adding the GELU input width (GIN-5 fraction bits) "
        "and output fraction bits (default 16,16).",
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the input distributions (>= 0)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing --json/--plot files."),
) -> None:
    """For every method: float and fixed-point error against float64 (max/mean abs, row sums, KL)."""
    from edgeattn.errors import EdgeAttnError

    if plot is not None and plot.suffix.lower() != ".png":
        raise EdgeAttnError(f"--plot must name a .png file, got {plot}")
    outputs = {flag: p for flag, p in (("--json", json_path), ("--plot", plot)) if p is not None}
    # Every output is checked before measuring, so a bad path costs nothing and writes nothing.
    for flag, p in outputs.items():
        check_report_path(p, flag, force)  # the rule of every command: an existing file only with --force
    if json_path is not None and plot is not None and json_path.resolve() == plot.resolve():
        raise EdgeAttnError(f"--json and --plot name the same file {plot}")
    try:
        from edgeattn.approx.report import parse_bits

        rb = parse_bits(bits)
    except ValueError as exc:
        raise EdgeAttnError(str(exc)) from None

    import torch
    from rich.table import Table

    from edgeattn.approx.report import build_report, plot_report, progress_steps

    torch.set_num_threads(min(2, torch.get_num_threads()))
    with transient_progress() as prog:
        task = prog.add_task("measuring approximations", total=progress_steps())
        rep = build_report(rb, seed=seed, progress=lambda: prog.advance(task))

    table = Table(
        title=f"approximation error vs float64 (softmax {rep['bits']['softmax_in']} -> "
        f"{rb.softmax_out} bits, GELU {rep['bits']['gelu_in']} -> {rb.gelu_out_frac} frac bits)"
    )
    for col in ("op", "method", "repr", "max |err|", "mean |err|", "row-sum dev", "KL"):
        table.add_column(col, justify="right" if "err" in col or col in ("KL", "row-sum dev") else "left")
    for r in rep["records"]:
        table.add_row(
            r["op"],
            r["method"],
            r["repr"],
            f"{r['max_abs_err']:.3g}",
            f"{r['mean_abs_err']:.3g}",
            f"{r['worst_row_sum_dev']:.3g}" if "worst_row_sum_dev" in r else "",
            f"{r['kl_div']:.3g}" if "kl_div" in r else "",
        )
    console.print(table)
    writers: list[tuple[Path, Callable[[Path], object]]] = []
    if plot is not None:
        writers.append((plot, lambda tmp: plot_report(rep, str(tmp))))
    if json_path is not None:
        # the curves are plot-only (numpy arrays); serialize the JSON without them
        records = {k: v for k, v in rep.items() if k != "_curves"}
        writers.append((json_path, lambda tmp: write_json(tmp, records)))
    _write_all(writers)
    if plot is not None:
        console.print(f"plot written to {plot}")
    if json_path is not None:
        console.print(f"JSON written to {json_path}")


def _write_all(writers: list[tuple[Path, Callable[[Path], object]]]) -> None:
    """Run each ``write(tmp)`` on a temporary file beside its path, then move all of them into place.

    All-or-nothing for the user: if any write fails, no output is new (the temporary files are removed, and
    so are the folders made for them); an existing file is only replaced (``--force``) once every write
    has succeeded.
    """
    from edgeattn.atomic import atomic_path

    made = [d for path, _ in writers for d in missing_folders(path.parent)]
    try:
        with ExitStack() as stack:
            for path, write in writers:
                write(stack.enter_context(atomic_path(path)))
            # leaving the stack moves each temporary file onto its path (os.replace, same folder)
    except BaseException:
        for folder in sorted(set(made), key=lambda d: len(d.parts), reverse=True):
            with suppress(OSError):  # left alone if something else has put a file there meanwhile
                folder.rmdir()
        raise

