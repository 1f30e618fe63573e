"""Figures of a report: per-artifact latency distributions and per-layer stacked bars (by op type)."""

from __future__ import annotations

from pathlib import Path

from edgeattn.atomic import atomic_path
from edgeattn.errors import EdgeAttnError
from edgeattn.profile.schema import ProfileReport


def check_plot_path(path: str | Path) -> None:
    """Raise an :class:`EdgeAttnError` unless ``path`` is not a folder and matplotlib can write its format (by
    suffix; none = PNG).

    Called before measuring, so ``--plot lat.txt`` fails at once instead of after the timed runs.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if Path(path).is_dir():
        raise EdgeAttnError(f"--plot '{path}' is a folder; give a file name such as '{Path(path) / 'latency.png'}'")
    suffix = Path(path).suffix.lower().lstrip(".")
    formats = FigureCanvasAgg.get_supported_filetypes()
    if suffix and suffix not in formats:
        raise EdgeAttnError(
            f"--plot '{path}': matplotlib cannot write '.{suffix}' files; use one of "
            f"{', '.join('.' + f for f in sorted(formats))}"
        )


def plot_report(report: ProfileReport, path: str | Path, top_ops: int = 8) -> Path:
    """Write a PNG (or any matplotlib format, by suffix) of ``report`` atomically; returns the path.

    Left: latency distribution of every artifact (box + individual runs), with p50 and the ratio to the
    first artifact. Right (when per-layer data exists): one stacked bar per artifact, time per op type.
    """
    from matplotlib.figure import Figure  # not pyplot: the caller's backend and figure list stay untouched

    path = Path(path)
    check_plot_path(path)
    if isinstance(top_ops, bool) or not isinstance(top_ops, int) or top_ops < 0:
        raise EdgeAttnError(f"top_ops must be an integer >= 0, got {top_ops!r}")
    with_layers = any(r.layers for r in report.results)
    fig = Figure(figsize=(12 if with_layers else 7, 4.5))
    axes = fig.subplots(1, 2 if with_layers else 1, squeeze=False)
    ax = axes[0][0]
    data = [r.samples_ms or ([r.latency.p50_ms] if r.latency else [0.0]) for r in report.results]
    labels = [r.label for r in report.results]
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=20, ha="right", fontsize=8)
    for i, (r, d) in enumerate(zip(report.results, data, strict=True), start=1):
        ax.scatter([i] * len(d), d, s=3, alpha=0.3)
        if r.latency:
            ratio = f" (x{r.ratio_to_first:.2f})" if r.ratio_to_first is not None and i > 1 else ""
            ax.annotate(
                f"p50 {r.latency.p50_ms:.3f}{ratio}",
                (i, r.latency.p50_ms),
                fontsize=7,
                xytext=(6, 0),
                textcoords="offset points",
            )
    ax.set_ylabel("latency per inference (ms)")
    ax.set_title("Latency distribution" + (" (interleaved)" if report.interleaved else ""))
    if with_layers:
        ax2 = axes[0][1]
        totals: dict[str, float] = {}
        for r in report.results:
            for op, ms in (r.layers.by_op_type if r.layers else {}).items():
                totals[op] = totals.get(op, 0.0) + ms
        ops = [op for op, _ in sorted(totals.items(), key=lambda kv: -kv[1])[:top_ops]]
        bottoms = [0.0] * len(report.results)
        for op in [*ops, "other"]:
            heights = []
            for r in report.results:
                by = r.layers.by_op_type if r.layers else {}
                heights.append(
                    sum(v for k, v in by.items() if k not in ops) if op == "other" else by.get(op, 0.0)
                )
            ax2.bar(range(len(labels)), heights, bottom=bottoms, label=op)
            bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
        # the end-to-end median beside the stacked per-layer sum shows how well the layers add up
        e2e = [r.layers.end_to_end_p50_ms if r.layers else 0.0 for r in report.results]
        ax2.scatter(
            range(len(labels)), e2e, marker="_", s=900, color="black", label="end-to-end p50", zorder=3
        )
        ax2.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        ax2.set_ylabel("per-layer time per inference (ms)")
        ax2.set_title("Per-layer breakdown by op type")
        ax2.legend(fontsize=7)
    fig.suptitle(
        f"{report.system.cpu_model}, {report.settings.get('threads') or 'default'} threads", fontsize=9
    )
    fig.tight_layout()
    with atomic_path(path, suffix=path.suffix or ".png") as tmp:
        fig.savefig(tmp, dpi=120)
    return path
