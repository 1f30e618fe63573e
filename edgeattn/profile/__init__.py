"""On-device latency profiler: ``edgeattn profile``.

Python API::

    from edgeattn.profile import profile_artifacts, render_table, plot_report
    report = profile_artifacts(["model.onnx", "model_int8.xml"], threads=2, iters=200, per_layer=True)
    render_table(report)            # rich tables on the console
    plot_report(report, "lat.png")  # latency distributions + per-layer stacked bars

Modules: :mod:`~edgeattn.profile.runners` (the runner interface and ``open_runner``; one module per runtime:
:mod:`~edgeattn.profile.ort_runner`, :mod:`~edgeattn.profile.openvino_runner`,
:mod:`~edgeattn.profile.tensorrt_runner`, :mod:`~edgeattn.profile.coreml_runner`), :mod:`~edgeattn.profile.measure`
(timing loop, statistics, interleaving), :mod:`~edgeattn.profile.layers` (per-layer breakdown in one schema),
:mod:`~edgeattn.profile.macs` (MACs counted from the graph), :mod:`~edgeattn.profile.system` (host and peak),
:mod:`~edgeattn.profile.schema` (pydantic result models), :mod:`~edgeattn.profile.plot`,
:mod:`~edgeattn.profile.report` (terminal tables).
"""

from __future__ import annotations

from edgeattn.profile.measure import latency_stats, profile_artifacts
from edgeattn.profile.plot import plot_report
from edgeattn.profile.report import render_devices, render_table
from edgeattn.profile.runners import list_devices, open_runner
from edgeattn.profile.schema import ArtifactResult, LatencyStats, LayerBreakdown, LayerRecord, ProfileReport

__all__ = [
    "ArtifactResult",
    "LatencyStats",
    "LayerBreakdown",
    "LayerRecord",
    "ProfileReport",
    "latency_stats",
    "list_devices",
    "open_runner",
    "plot_report",
    "profile_artifacts",
    "render_devices",
    "render_table",
]
