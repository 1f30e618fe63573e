"""The profile and export Python APIs as a notebook calls them (QA sweep of the Python API): a wrong type or
value is one EdgeAttnError naming the argument before any model loads (an ``iters`` of NaN timed forever, a
string ``iters`` failed inside the timing loop), summary statistics refuse samples they cannot summarise, and a
plot leaves the caller's matplotlib backend alone."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from rich.console import Console

from edgeattn.errors import EdgeAttnError
from edgeattn.profile import measure, plot_report, profile_artifacts, render_table
from tests._profiler_models import conv_stack


def _no_loading(*args, **kwargs):
    raise AssertionError("a model was loaded before the settings were checked")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"iters": math.nan}, "--iters must be an integer, got nan"),  # timed forever: done >= nan is never true
        ({"iters": math.inf}, "--iters must be an integer, got inf"),
        ({"iters": "5"}, "--iters must be an integer, got '5'"),
        ({"iters": 2.5}, "--iters must be an integer, got 2.5"),
        ({"iters": True}, "--iters must be an integer, got True"),
        ({"warmup": 2.5}, "--warmup must be an integer, got 2.5"),
        ({"seconds": "1"}, "--seconds must be a finite number > 0, got '1'"),
        ({"turn_ms": math.nan}, "turn_ms must be a finite number > 0, got nan"),
        ({"turn_ms": 0}, "turn_ms must be a finite number > 0, got 0"),
        ({"turn_ms": -5.0}, "turn_ms must be a finite number > 0, got -5.0"),
        ({"per_layer": True, "layer_runs": 1.5}, "--layer-runs must be an integer, got 1.5"),
        ({"batch": "2"}, "--batch must be an integer, got '2'"),
        ({"threads": "2"}, "--threads must be an integer, got '2'"),
        ({"shapes": [1, 3, 32, 32]}, "shapes must map input names to dims"),
        ({"progress": 3}, "progress must be a function"),
    ],
)
def test_bad_profiling_arguments_are_refused_before_loading(tmp_path, monkeypatch, kwargs, needle):
    monkeypatch.setattr(measure, "open_runner", _no_loading)
    with pytest.raises(EdgeAttnError) as err:
        profile_artifacts(tmp_path / "m.onnx", **kwargs)
    assert needle in str(err.value)


@pytest.mark.parametrize("paths", [3, [Path("m.onnx"), 3]])
def test_an_artifact_that_is_not_a_path_is_refused(monkeypatch, paths):
    monkeypatch.setattr(measure, "open_runner", _no_loading)
    with pytest.raises(EdgeAttnError, match="must be a|must be an artifact path"):
        profile_artifacts(paths)


def test_latency_stats_takes_an_array_and_refuses_what_it_cannot_summarise():
    samples = [1.0, 2.0, 4.0, 8.0]
    from_list, from_array = measure.latency_stats(samples, 2), measure.latency_stats(np.array(samples), 2)
    assert from_array == from_list
    assert from_list.mean_ms == pytest.approx(3.75) and from_list.throughput == pytest.approx(2 * 1000 / 3.75)
    assert from_list.p90_ms == pytest.approx(np.percentile(samples, 90))
    for bad in ([1.0, math.nan], [1.0, -2.0], [], "12", [[1.0, 2.0]]):
        with pytest.raises(ValueError, match="samples_ms"):
            measure.latency_stats(bad, 1)
    for batch in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch must be an integer >= 1"):
            measure.latency_stats(samples, batch)


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    d = tmp_path_factory.mktemp("api_artifact")
    conv_stack(d / "small.onnx", size=8, ch=4, n=1)
    return profile_artifacts(d / "small.onnx", iters=3, warmup=1, threads=1, per_layer=True, layer_runs=2)


def test_plot_report_leaves_the_callers_matplotlib_backend_alone(small_report, tmp_path):
    before = matplotlib.get_backend()
    matplotlib.use("pdf")  # e.g. a notebook's inline backend; plot_report switched every caller to Agg
    try:
        assert plot_report(small_report, tmp_path / "lat.png").stat().st_size > 0
        assert matplotlib.get_backend() == "pdf"
        with pytest.raises(EdgeAttnError, match="top_ops must be an integer >= 0, got -1"):
            plot_report(small_report, tmp_path / "other.png", top_ops=-1)
        assert not (tmp_path / "other.png").exists()
    finally:
        matplotlib.use(before)


def test_approx_plot_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    from edgeattn.approx.report import plot_report as approx_plot

    x = np.linspace(-4, 4, 9)
    report = {
        "_curves": {m: {"float": (x, np.abs(x) * 1e-4), "fixed": (x, np.abs(x) * 1e-3)} for m in ("exact", "tanh")},
        "records": [{"op": "softmax", "method": "online", "repr": r, "max_abs_err": 1e-4} for r in ("float", "fixed")],
        "bits": {"softmax_in": "ap_fixed<16,6>", "softmax_out_bits": 8},
    }
    before = matplotlib.get_backend()
    matplotlib.use("pdf")
    try:
        approx_plot(report, str(tmp_path / "approx.png"))
        assert (tmp_path / "approx.png").stat().st_size > 0 and matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)


def test_render_table_refuses_a_negative_layer_count(small_report):
    console = Console(record=True, width=200)
    render_table(small_report, console=console, top_layers=1)
    assert "top 1 layers" in console.export_text()
    with pytest.raises(EdgeAttnError, match="top_layers must be an integer >= 0, got -1"):
        render_table(small_report, console=Console(record=True), top_layers=-1)


# ------------------------------------------------------------------------------------------------ export API
class _Tiny(torch.nn.Module):
    input_size = (3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.head = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"model_kwargs": {"img_size": 64}}, "model_kwargs go with a registry model name, not an in-memory module"),
        ({"seed": -1}, "seed must be an integer in 0..4294967295, got -1"),
        ({"seed": 2**32}, "seed must be an integer in 0..4294967295, got 4294967296"),
        ({"cache": []}, "cache must be a dict or None, got []"),
        ({"out_dir": 3}, "out_dir must be a path (str or Path), got 3"),
        ({"out_dir": None}, "out_dir must be a path (str or Path), got None"),
    ],
)
def test_bad_export_arguments_are_one_line_and_write_nothing(tmp_path, kwargs, needle):
    from edgeattn.export import export_model

    args = {"out_dir": tmp_path / "out", "precision": "fp32", "n_inputs": 2, **kwargs}
    with pytest.raises(EdgeAttnError) as err:
        export_model(_Tiny(), "onnx", "host-cpu", **args)
    assert needle in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"seed": -1}, "seed must be an integer in 0..4294967295"), ({"out_dir": 3}, "out_dir must be a path")],
)
def test_export_all_checks_the_same_arguments(tmp_path, kwargs, needle):
    from edgeattn.export import export_all

    args = {"out_dir": tmp_path / "out", "precision": "fp32", "n_inputs": 2, **kwargs}
    with pytest.raises(EdgeAttnError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        export_all(_Tiny(), args.pop("out_dir"), ["onnx"], **args)
    assert list(tmp_path.iterdir()) == []
