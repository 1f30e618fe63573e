"""Latency profiler: statistics, MAC counting, runners, per-layer breakdowns, interleaving, Ctrl-C, peaks.

Artifacts are built here (onnx.helper graphs with hand-counted MACs, one torch-exported attention net,
OpenVINO IR through OpenVINO's own converter); nothing depends on the model registry or the exporter.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from _profiler_models import attention_net, conv_stack, to_openvino_ir

from edgeattn.errors import EdgeAttnError
from edgeattn.hostinfo import HostInfo
from edgeattn.openvino_core import openvino_core
from edgeattn.profile import layers as L
from edgeattn.profile import measure, system
from edgeattn.profile.macs import onnx_macs, onnx_precision, openvino_macs, openvino_precision
from edgeattn.profile.runners import Runner, open_runner, resolve_shape

ov = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """The artifacts shared by the tests of this module (built once)."""
    d = tmp_path_factory.mktemp("artifacts")
    out = {"dir": d}
    out["conv_counts"] = conv_stack(d / "conv.onnx", size=48, ch=32, n=5)
    conv_stack(d / "conv_dyn.onnx", size=16, ch=16, n=2, batch="N")
    conv_stack(d / "conv_int8.onnx", size=48, ch=32, n=5, int8=True)
    conv_stack(d / "conv_fp16.onnx", size=16, ch=16, n=2, dtype="fp16")
    to_openvino_ir(d / "conv.onnx", d / "conv.xml")
    to_openvino_ir(d / "conv_int8.onnx", d / "conv_int8.xml")
    out["attn_macs"] = attention_net(d / "attn.onnx")
    to_openvino_ir(d / "attn.onnx", d / "attn.xml")
    return out


# ---------------------------------------------------------------- statistics


def test_latency_stats_match_the_statistics_module():
    rng = np.random.default_rng(1)
    samples = list(rng.gamma(4.0, 0.5, size=257))
    s = measure.latency_stats(samples, batch=4)
    assert s.count == 257
    assert s.mean_ms == pytest.approx(statistics.fmean(samples), rel=1e-12)
    assert s.std_ms == pytest.approx(statistics.stdev(samples), rel=1e-12)
    assert s.p50_ms == pytest.approx(statistics.median(samples), rel=1e-12)
    # 'inclusive' quantiles are the linear interpolation between order statistics
    q = statistics.quantiles(samples, n=100, method="inclusive")
    assert s.p90_ms == pytest.approx(q[89], rel=1e-12)
    assert s.p99_ms == pytest.approx(q[98], rel=1e-12)
    assert (s.min_ms, s.max_ms) == (min(samples), max(samples))
    assert s.throughput == pytest.approx(4 * 1000.0 / statistics.fmean(samples))


def test_latency_stats_single_sample_has_zero_std():
    s = measure.latency_stats([2.0], batch=1)
    assert (s.std_ms, s.p50_ms, s.p99_ms, s.throughput) == (0.0, 2.0, 2.0, 500.0)


# ---------------------------------------------------------------- MACs and precision from the graph


def test_onnx_macs_equal_the_hand_count(art):
    counts = art["conv_counts"]
    # 5 convs at 48x48: 3->32 then 4 x 32->32, 3x3 kernels; grouped conv (4 groups) at stride 2; Gemm; MatMul
    hand = 48 * 48 * 32 * 9 * (3 + 4 * 32) + 24 * 24 * 32 * 8 * 9 + 32 * 10 + 10 * 6
    assert counts["macs"] == hand
    macs, unresolved = onnx_macs(onnx.load(art["dir"] / "conv.onnx"))
    assert (macs, unresolved) == (hand, 0)


def test_onnx_macs_scale_with_the_batch_given(art):
    model = onnx.load(art["dir"] / "conv_dyn.onnx")
    one, _ = onnx_macs(model, {"x": [1, 3, 16, 16]})
    three, unresolved = onnx_macs(model, {"x": [3, 3, 16, 16]})
    hand = 16 * 16 * 16 * 9 * (3 + 16) + 8 * 8 * 16 * 4 * 9 + 16 * 10 + 10 * 6
    assert (one, three, unresolved) == (hand, 3 * hand, 0)
    # unknown batch: the MAC-carrying nodes are reported as unresolved, not guessed
    _, unresolved = onnx_macs(model)
    assert unresolved > 0


def test_attention_macs_in_onnx_and_openvino_equal_the_hand_count(art):
    hand = art["attn_macs"]
    assert onnx_macs(onnx.load(art["dir"] / "attn.onnx"), {"x": [1, 3, 16, 16]}) == (hand, 0)
    # OpenVINO fuses the attention into ScaledDotProductAttention: still counted
    model = openvino_core().read_model(str(art["dir"] / "attn.xml"))
    assert openvino_macs(model) == (hand, 0)


def test_openvino_macs_equal_onnx_for_conv_and_int8(art):
    core = openvino_core()
    hand = art["conv_counts"]["macs"]
    assert openvino_macs(core.read_model(str(art["dir"] / "conv.xml")))[0] == hand
    assert openvino_macs(core.read_model(str(art["dir"] / "conv_int8.xml")))[0] == hand


def test_graph_precision_is_read_from_the_graph(art):
    d = art["dir"]
    assert onnx_precision(onnx.load(d / "conv.onnx")) == "fp32"
    assert onnx_precision(onnx.load(d / "conv_fp16.onnx")) == "fp16"
    assert onnx_precision(onnx.load(d / "conv_int8.onnx")) == "int8"
    core = openvino_core()
    assert openvino_precision(core.read_model(str(d / "conv.xml"))) == "fp32"
    assert openvino_precision(core.read_model(str(d / "conv_int8.xml"))) == "int8"


@pytest.mark.parametrize(
    ("kernel", "precision"),
    [
        ("jit_avx2_I8", "int8"),
        ("brgconv_avx512_U8", "int8"),
        ("brgconv_avx2_f32", "fp32"),
        ("brgemm_avx512_FP32", "fp32"),
        ("jit_avx512_amx_bf16_BF16", "bf16"),
        ("gemm_f16", "fp16"),
        ("Reorder", "unknown"),
    ],
)
def test_precision_from_kernel_names(kernel, precision):
    assert L.precision_from_kernel(kernel) == precision


# ---------------------------------------------------------------- per-layer parsing (hand-written inputs)


def test_ort_trace_is_read_per_run_with_medians(tmp_path):
    events = []
    # 4 model runs, 2 nodes each; run 0 is skipped as warm-up; run 2 has a stalled conv
    conv_ms, relu_ms = [9.0, 1.0, 7.0, 1.2], [0.5, 0.2, 0.3, 0.4]
    ts = 0
    for r in range(4):
        start = ts
        for name, op, dur in (("c", "Conv", conv_ms[r]), ("r", "Relu", relu_ms[r])):
            events.append(
                {
                    "cat": "Node",
                    "name": f"{name}_kernel_time",
                    "ts": ts,
                    "dur": dur * 1000,
                    "args": {
                        "op_name": op,
                        "provider": "CPUExecutionProvider",
                        "input_type_shape": [{"float": [1, 3]}],
                    },
                }
            )
            ts += dur * 1000 + 1
        events.append({"cat": "Session", "name": "model_run", "ts": start, "dur": ts - start})
        ts += 10
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps(events))
    acc = L.LayerAccumulator()
    assert L.read_ort_trace(trace, acc, skip_runs=1) == 3
    b = acc.breakdown("ort", end_to_end_p50_ms=1.5)
    by_name = {x.name: x for x in b.layers}
    assert by_name["c"].time_ms == pytest.approx(statistics.median([1.0, 7.0, 1.2]))
    assert by_name["c"].mean_ms == pytest.approx((1.0 + 7.0 + 1.2) / 3)
    assert by_name["r"].time_ms == pytest.approx(0.3)
    assert by_name["c"].precision == "fp32" and by_name["c"].kernel == "Conv (CPU)"
    assert b.total_ms == pytest.approx(1.2 + 0.3)
    assert b.sum_over_end_to_end == pytest.approx(1.5 / 1.5)
    assert b.by_op_type == pytest.approx({"Conv": 1.2, "Relu": 0.3})


def test_openvino_counter_means_undo_the_running_mean():
    """OpenVINO's counters are running means since compile; the timed runs' mean comes from two reads."""
    import datetime
    from types import SimpleNamespace

    def info(name, us, status="Status.EXECUTED"):
        return SimpleNamespace(
            node_name=name,
            node_type="Convolution",
            exec_type="jit_avx2_I8",
            status=status,
            real_time=datetime.timedelta(microseconds=us),
        )

    # conv: cold run 900 us, then 100 us per run; after 2 runs the counter reads 500, after 5 it reads 260
    before = L.openvino_counter_totals([info("conv", 500), info("fused", 0, "Status.NOT_RUN")])
    after = L.openvino_counter_totals([info("conv", (900 + 4 * 100) / 5), info("fused", 0, "Status.NOT_RUN")])
    acc = L.LayerAccumulator()
    L.add_openvino_counter_means(before, 2, after, 5, acc, "CPU")
    acc.wall_ms = [0.125]
    b = acc.breakdown("ov", end_to_end_p50_ms=0.125)
    (conv,) = b.layers  # the fused-away node is left out
    assert conv.time_ms == pytest.approx(0.100, abs=1e-6)  # not the 0.260 the last counter read says
    assert conv.precision == "int8"
    assert b.per_run_coverage == pytest.approx(0.100 / 0.125)
    with pytest.raises(ValueError):
        L.add_openvino_counter_means(before, 2, after, 2, acc, "CPU")


# ---------------------------------------------------------------- runners on real runtimes


def test_ort_profile_end_to_end_with_per_layer(art):
    report = measure.profile_artifacts(
        [art["dir"] / "conv.onnx"], threads=2, warmup=3, iters=25, per_layer=True
    )
    (r,) = report.results
    lat = r.latency
    assert lat.count == 25 == len(r.samples_ms)
    assert lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p99_ms <= lat.max_ms
    assert lat.p50_ms == pytest.approx(float(np.median(r.samples_ms)))
    assert r.ratio_to_first == 1.0 and r.cold_ms > 0 and r.load_ms > 0
    assert r.precision == "fp32" and r.runtime == "onnxruntime"
    assert r.efficiency.macs == art["conv_counts"]["macs"]
    assert r.efficiency.achieved_gmacs == pytest.approx(r.efficiency.macs / (lat.p50_ms * 1e-3) / 1e9)
    b = r.layers
    assert b is not None and b.runs == 20
    assert {x.op_type for x in b.layers} >= {"FusedConv"} or {x.op_type for x in b.layers} >= {"Conv"}
    # per-layer medians add up to the end-to-end median (target 15%, checked by the benchmark); the bounds
    # here are generous, for a shared machine (a load of 8 on 2 cores measured 0.345 and 0.383: each layer's
    # median drops the stalls that the end-to-end time keeps), yet catch double counting (2x) or unit errors.
    assert 0.2 < b.sum_over_profiled < 1.6
    assert 0.2 < b.per_run_coverage <= 1.05  # layers cannot take longer than the inference they ran in
    # end_to_end p50 comes from another time window, so a loaded CI machine (xdist neighbours) moves this ratio:
    # 1.68 once, 0.23 once. It is bounded only against unit errors (ms vs us: 1000x); the same-window figure
    # below is the real check
    assert 0.02 < b.sum_over_end_to_end < 50.0
    assert len(b.layers) and 0.2 < b.sum_over_interleaved_e2e < 1.6 and b.interleaved_e2e_ms > 0
    # the profiler's in-event cost (0 when this small model's profiled runs were not slower) came off every layer;
    # it is a few microseconds, but a loaded 2-core machine measured 0.043 ms once: the bound catches unit errors
    assert 0.0 <= b.instrumentation_ms_per_layer < 0.1
    assert b.uncorrected_total_ms >= b.total_ms
    assert sum(x.share for x in b.layers) == pytest.approx(1.0)


def test_ort_profiler_share_inside_node_events_is_measured():
    """Calibration chain of one-element Adds: part, not all and not none, of the profiler's cost is in-event."""
    import onnxruntime as ort

    from edgeattn.profile.runners import ort_profiler_inside_share

    def options(prefix=None):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        if prefix:
            so.enable_profiling = True
            so.profile_file_prefix = prefix
        return so

    share = ort_profiler_inside_share(ort, options, "CPUExecutionProvider", nodes=64, runs=20)
    assert 0.05 < share < 0.95


def test_ort_trace_reader_subtracts_the_event_overhead(tmp_path):
    events = [
        {"cat": "Node", "name": "a_kernel_time", "ts": 10, "dur": 5, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "b_kernel_time", "ts": 20, "dur": 1, "args": {"op_name": "Relu"}},
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 30},
    ]
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps(events))
    acc = L.LayerAccumulator()
    assert L.read_ort_trace(trace, acc, event_overhead_ms=0.002) == 1
    times = {x.name: x.time_ms for x in acc.breakdown("ort", 0.01).layers}
    assert times == pytest.approx({"a": 0.003, "b": 0.0})  # floored at zero, never negative


def test_openvino_per_layer_shows_int8_kernels_for_a_qdq_graph(art):
    report = measure.profile_artifacts(
        [art["dir"] / "conv.xml", art["dir"] / "conv_int8.xml"], threads=2, warmup=2, iters=10, per_layer=True
    )
    fp32, int8 = report.results
    assert report.interleaved and int8.precision == "int8"
    convs8 = [x for x in int8.layers.layers if x.op_type == "Convolution"]
    assert convs8 and all(x.precision == "int8" for x in convs8), [(x.name, x.kernel) for x in convs8]
    assert all("8" in x.kernel for x in convs8)  # e.g. brgconv_avx512_I8 / jit_avx2_I8
    convs32 = [x for x in fp32.layers.layers if x.op_type == "Convolution"]
    assert convs32 and not any(x.precision == "int8" for x in convs32)
    assert int8.layers.by_precision["int8"] > 0
    assert int8.efficiency.peak_precision == "int8"
    for r in (fp32, int8):  # node times cannot add up to more than the runs they were measured in
        assert r.layers.runs == 20  # the default layer runs
        # generous bounds (a 0.4 ms model on a loaded 2-core CI machine: one stall moves a mean a lot; a CI run with
        # two more pytest workers beside it measured a coverage of 0.19) that still catch the running-mean
        # misreading (>1.3 after a slow first run) and lost layers (~0)
        assert 0.1 < r.layers.per_run_coverage <= 1.05, r.layers.per_run_coverage
        assert 0.1 < r.layers.sum_over_interleaved_e2e < 1.6, r.layers.sum_over_interleaved_e2e


def test_ctrl_c_after_two_openvino_artifacts_is_an_interrupt_not_a_crash(art):
    """OpenVINO's CPU plugin leaves a dangling alternate signal stack when two plugins go away first-in first-out;
    the next signal then crashed the process (exit -11). One shared Core keeps one plugin. In a fresh interpreter,
    since a crash would take the test runner down with it."""
    code = textwrap.dedent(
        f"""
        import signal
        from edgeattn.profile import measure
        measure.profile_artifacts([{str(art["dir"] / "conv.xml")!r}, {str(art["dir"] / "conv_int8.xml")!r}],
                                  threads=1, warmup=1, iters=3)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            print("interrupted")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "interrupted", (out.returncode, out.stderr[-2000:])


def test_openvino_runs_onnx_too_and_reports_settings(art):
    r = open_runner(art["dir"] / "conv.onnx", runtime="openvino", threads=1)
    try:
        assert r.runtime == "openvino" and r.input_shapes == {"x": [1, 3, 48, 48]}
        assert r.settings["INFERENCE_NUM_THREADS"] == "1"
        assert r.settings["PERFORMANCE_HINT"].upper().endswith("LATENCY")
        r.run()
    finally:
        r.close()


def test_batch_is_applied_to_a_dynamic_batch_and_scales_macs(art):
    report = measure.profile_artifacts([art["dir"] / "conv_dyn.onnx"], batch=3, warmup=1, iters=3, threads=1)
    (r,) = report.results
    hand = 16 * 16 * 16 * 9 * (3 + 16) + 8 * 8 * 16 * 4 * 9 + 16 * 10 + 10 * 6
    assert r.input_shapes == {"x": [3, 3, 16, 16]}
    assert r.efficiency.macs == 3 * hand
    assert r.latency.throughput == pytest.approx(3 * 1000.0 / r.latency.mean_ms)


def test_resolve_shape_rules():
    assert resolve_shape("x", [None, 3, 8], 4, None, "a") == [4, 3, 8]
    assert resolve_shape("x", [None, 3, 8], None, None, "a") == [1, 3, 8]
    assert resolve_shape("x", [1, None], None, [1, 7], "a") == [1, 7]
    with pytest.raises(EdgeAttnError, match="fixed batch of 1"):
        resolve_shape("x", [1, 3], 2, None, "a")
    with pytest.raises(EdgeAttnError, match="--shape x="):
        resolve_shape("x", [1, None], None, None, "a")
    with pytest.raises(EdgeAttnError, match=r"cannot take input 'x' of shape \[1, 4\]"):
        resolve_shape("x", [1, 3], None, [1, 4], "a")


# ---------------------------------------------------------------- interleaving and Ctrl-C (fake runners)


class _Fake(Runner):
    """Records the order of calls; raises KeyboardInterrupt on call number ``stop_at`` (shared counter)."""

    runtime = "fake"

    def __init__(self, name, log, stop_at=None):
        super().__init__(path=None)
        self.name, self.log, self.stop_at = name, log, stop_at
        self.version, self.input_shapes = "0", {"x": [1]}

    def run(self):
        if self.stop_at is not None and len(self.log) + 1 >= self.stop_at:
            raise KeyboardInterrupt
        self.log.append(self.name)


def test_interleave_alternates_in_blocks_and_stops_at_iters():
    log = []
    a, b = _Fake("A", log), _Fake("B", log)
    samples, interrupted = measure.interleave([a, b], iters=5, seconds=None, block=[2, 1])
    assert not interrupted and [len(s) for s in samples] == [5, 5]
    assert "".join(log) == "AAB" + "AAB" + "A" + "B" + "B" + "B"


def test_interleave_by_seconds_runs_whole_rounds():
    log = []
    samples, _ = measure.interleave(
        [_Fake("A", log), _Fake("B", log)], iters=None, seconds=1e-6, block=[1, 1]
    )
    assert "".join(log) == "AB" and [len(s) for s in samples] == [1, 1]


def test_ctrl_c_keeps_what_was_measured(monkeypatch, tmp_path):
    log: list[str] = []
    # 2 artifacts: 2 cold runs + 2x2 warm-up = 6 calls, then the timed runs; Ctrl-C on call 6 + 7
    runners = iter([_Fake("A", log, stop_at=6 + 7), _Fake("B", log, stop_at=6 + 7)])
    monkeypatch.setattr(measure, "open_runner", lambda *a, **k: next(runners))
    paths = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    for path in paths:  # profile_artifacts checks every path exists before loading any (the loader is faked)
        path.touch()
    # turn_ms tiny: turns of one run each, A B A B ...
    report = measure.profile_artifacts(paths, warmup=2, iters=50, per_layer=True, turn_ms=1e-9)
    assert report.interrupted
    assert [r.latency.count if r.latency else 0 for r in report.results] == [3, 3]
    assert "".join(log[6:]) == "ABABAB"
    assert all(r.layers is None for r in report.results)  # per-layer skipped after Ctrl-C


def test_rss_after_load_is_read_before_the_cold_inference(monkeypatch, tmp_path):
    # A stand-in for the process's RSS: loading adds 10 MiB, the cold first inference 100 MiB more (lazy arenas).
    rss = [500.0]

    class _Allocating(_Fake):
        def run(self):
            if not self.log:
                rss[0] += 100.0
            super().run()

    def load(*args, **kwargs):
        rss[0] += 10.0
        return _Allocating("A", [])

    monkeypatch.setattr(system, "current_rss_mb", lambda: rss[0])
    monkeypatch.setattr(measure, "open_runner", load)
    (tmp_path / "a.onnx").touch()  # checked to exist before loading; the loader is faked
    report = measure.profile_artifacts([tmp_path / "a.onnx"], warmup=1, iters=2)
    r = report.results[0]
    assert (r.rss_after_load_mb, r.rss_after_cold_mb) == (10.0, 110.0)


# ---------------------------------------------------------------- system and peak


def _host(flags, vnni, cores=4, machine="x86_64"):
    return HostInfo(
        system="Linux",
        machine=machine,
        cpu_model="test",
        physical_cores=cores,
        logical_cores=cores,
        isa_flags=flags,
        has_vnni=vnni,
        has_amx=False,
        runtimes={},
        matching_profile="host-cpu",
        recommended_weight_bits=8,
    )


def test_peak_formula_per_isa_and_precision(monkeypatch):
    monkeypatch.setattr(system, "peak_clock_ghz", lambda: (3.0, "test"))
    avx2 = _host(["avx2", "fma"], vnni=False)
    assert system.peak_gmacs("fp32", host=avx2)[0] == pytest.approx(2 * 8 * 1 * 4 * 3.0)  # 192
    assert system.peak_gmacs("int8", host=avx2)[0] == pytest.approx(2 * 8 * 2 * 4 * 3.0)  # no VNNI: 2/lane
    assert system.peak_gmacs("fp32", threads=2, host=avx2)[0] == pytest.approx(2 * 8 * 2 * 3.0)
    avx512 = _host(["avx2", "avx512f", "avx512_vnni", "avx512_bf16"], vnni=True)
    peak, formula = system.peak_gmacs("int8", host=avx512)
    assert peak == pytest.approx(2 * 16 * 4 * 4 * 3.0)
    assert formula.startswith("2 FMA x 16 lanes x 4 MAC/lane (int8) x 4 cores x 3.000 GHz")
    assert system.peak_gmacs("bf16", host=avx512)[0] == pytest.approx(2 * 16 * 2 * 4 * 3.0)


def test_measured_clock_is_plausible():
    clock = system.measured_clock_ghz()
    if clock is None:
        pytest.skip("no C compiler to time the add chain")
    from edgeattn.hostinfo import cpu_clock_ghz

    nominal = cpu_clock_ghz()
    assert 0.3 < clock < 7.0
    if nominal:  # turbo runs above nominal, power saving below; never by more than ~3x
        assert nominal / 3 < clock < nominal * 3


def test_system_record_and_memory():
    rec = system.system_record()
    assert rec.logical_cores >= 1 and rec.runtimes["onnxruntime"]
    assert system.peak_rss_mb() >= system.current_rss_mb() * 0.9 > 0


def test_labels_are_the_shortest_distinguishing_path_tails():
    from edgeattn.profile.measure import _label

    fp32, int8 = Path("/o/export/openvino_fp32/model.xml"), Path("/o/export/openvino_int8/model.xml")
    assert _label([fp32, int8]) == ["openvino_fp32/model.xml", "openvino_int8/model.xml"]
    assert _label([Path("a.onnx"), Path("b.onnx")]) == ["a.onnx", "b.onnx"]
