"""Terminal tables (rich) for a :class:`~edgeattn.profile.schema.ProfileReport` and for ``--list-devices``."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from edgeattn.errors import EdgeAttnError
from edgeattn.profile.schema import ProfileReport

_SHORT = {"onnxruntime": "ort", "openvino": "ov", "tensorrt": "trt", "coreml": "coreml"}


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _g(x: float | None) -> str:
    """Four significant digits, without switching to exponent notation for latencies."""
    if x is None:
        return "-"
    return f"{x:.{max(0, 3 - len(str(int(abs(x)))))}f}" if abs(x) >= 1 else f"{x:.4f}"


def print_whole_table(console: Console, table: Table, natural: bool = False) -> None:
    """Print ``table`` no narrower than its minimum width (its widest number or word per column) or, with
    ``natural``, its natural width (one line per row), even where that is wider than ``console``.

    Below its minimum width rich would crop numbers to "8213.…" or drop a column's values; on a narrow console (80
    columns when stdout is a pipe) the table is printed wider instead, every figure whole. ``Console.print(width=)``
    never goes past the console's own width, so the console's width is raised for this one table.
    """
    measured = console.measure(table, options=console.options.update_width(10**4))
    need = measured.maximum if natural else measured.minimum
    if need <= console.width:
        console.print(table, crop=False)
        return
    saved = console._width  # None: detected from the terminal on each print, as before
    console.width = need
    try:
        console.print(table, crop=False)
    finally:
        console._width = saved


def render_table(report: ProfileReport, console: Console | None = None, top_layers: int = 12) -> None:
    """Print the side-by-side latency table, the efficiency table and (if measured) the ``top_layers`` slowest
    layers of each artifact."""
    if isinstance(top_layers, bool) or not isinstance(top_layers, int) or top_layers < 0:
        raise EdgeAttnError(f"top_layers must be an integer >= 0, got {top_layers!r}")
    console = console or Console()
    s = report.system
    console.print(
        f"[bold]{s.cpu_model}[/] | {s.physical_cores} cores | clock {_f(s.clock_ghz, '.2f')} GHz | "
        f"ISA {' '.join(s.isa_flags)}",
        highlight=False,
    )
    busy = [x for x in (s.load_average[:1] + report.load_average_end[:1]) if x > 0.75 * s.logical_cores]
    if busy:
        console.print(
            f"[yellow]machine busy: load average {max(busy):.1f} on {s.logical_cores} cores; expect noise, "
            "compare ratios of interleaved artifacts rather than absolute times[/]"
        )
    n = sorted({r.latency.count for r in report.results if r.latency})
    title = f"Latency per inference (ms), n={'/'.join(map(str, n)) or 0}" + (
        " interleaved" if report.interleaved else ""
    )
    if report.interrupted:
        title += " - [red]INTERRUPTED, partial results[/]"
    t = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1))
    t.add_column("artifact / runtime", overflow="fold", min_width=12, max_width=20)
    for col in ("mean", "std", "min", "p50", "p90", "p99", "inf/s", "x 1st"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in report.results:
        lat = r.latency
        t.add_row(
            f"{r.label}\n[dim]{_SHORT.get(r.runtime, r.runtime)}/{r.device} {r.precision}[/]",
            _g(lat and lat.mean_ms),
            _g(lat and lat.std_ms),
            _g(lat and lat.min_ms),
            _g(lat and lat.p50_ms),
            _g(lat and lat.p90_ms),
            _g(lat and lat.p99_ms),
            _g(lat and lat.throughput),  # 4 significant digits: a slow model's 0.217/s is not "0"
            _f(r.ratio_to_first, ".2f"),
        )
    print_whole_table(console, t)
    console.print(
        "runtimes: " + ", ".join(sorted({f"{r.runtime} {r.runtime_version}" for r in report.results})),
        highlight=False,
    )
    e = Table(
        title="Start-up (ms), memory (MiB) and compute (MACs / p50 vs arithmetic peak)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    e.add_column("artifact", overflow="fold", min_width=12, max_width=24)
    for col in ("load", "cold", "+RSS\nload", "+RSS\ncold", "GMACs", "GMAC/s", "peak", "%peak"):
        e.add_column(col, justify="right", no_wrap=True)  # a number is never cut to "12.…"
    for r in report.results:
        ef = r.efficiency
        e.add_row(
            r.label,
            _f(r.load_ms, ".0f"),
            _f(r.cold_ms, ".2f"),
            _f(r.rss_after_load_mb, ".1f"),
            _f(r.rss_after_cold_mb, ".1f"),
            _f(ef.macs / 1e9 if ef.macs else None, ".4f"),
            _f(ef.achieved_gmacs, ".1f"),
            f"{_f(ef.peak_gmacs, '.0f')} {ef.peak_precision}",  # peak GMAC/s at the compute precision
            _f(ef.fraction_of_peak * 100 if ef.fraction_of_peak is not None else None, ".1f"),
        )
    print_whole_table(console, e)
    for r in report.results:
        if r.efficiency.note:
            console.print(f"[yellow]{r.label}: {r.efficiency.note}[/]", highlight=False)
    console.print(f"peak RSS of the process: {report.peak_rss_mb:.0f} MiB", highlight=False)
    for r in report.results:
        if r.layers is None:
            continue
        b = r.layers
        lt = Table(
            title=f"{r.label}: top {top_layers} layers ({b.source}); sum {b.total_ms:.3f} ms = "
            f"{b.sum_over_end_to_end:.2f} x end-to-end p50"
            + (
                f" ({b.sum_over_interleaved_e2e:.2f} x unprofiled runs interleaved with the profiled ones)"
                if b.sum_over_interleaved_e2e
                else ""
            )
            + (f", per-run coverage {b.per_run_coverage:.2f}" if b.per_run_coverage else "")
            + (
                f"; profiler cost {b.instrumentation_ms_per_layer * 1e3:.2f} us per layer subtracted"
                if b.instrumentation_ms_per_layer
                else ""
            ),
            box=box.SIMPLE_HEAD,
        )
        lt.add_column("layer", overflow="fold", max_width=30)
        lt.add_column("op", overflow="fold", max_width=16)
        lt.add_column("kernel", overflow="fold", max_width=24)
        for col in ("prec", "ms", "%"):
            lt.add_column(col, justify="right" if col in ("ms", "%") else "left", no_wrap=True)
        for layer in sorted(b.layers, key=lambda x: -x.time_ms)[:top_layers]:
            lt.add_row(
                layer.name[-60:],
                layer.op_type,
                layer.kernel,
                layer.precision,
                f"{layer.time_ms:.4f}" + ("~" if layer.estimated else ""),
                f"{layer.share * 100:.1f}",
            )
        print_whole_table(console, lt)
        console.print(
            "time by precision: " + ", ".join(f"{k} {v:.3f} ms" for k, v in b.by_precision.items()),
            highlight=False,
        )


def render_devices(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """Print the ``--list-devices`` table."""
    console = console or Console()
    t = Table(title="Runtimes and devices on this machine")
    for col in ("runtime", "version", "devices", "note"):
        t.add_column(col)
    for row in rows:
        t.add_row(
            row["runtime"],
            row["version"] or "[red]not installed[/]",
            ", ".join(row["devices"]) or "-",
            row["note"],
        )
    console.print(t)
