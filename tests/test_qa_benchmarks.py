"""The benchmarks' own arithmetic and bookkeeping, without timing anything: ``benchmarks/_timing.py`` against numpy
on a fake clock, ``benchmarks/_cli.py``'s input checks, the committed ``benchmarks/*.json`` files' derived fields
recomputed from their raw fields, and one-line errors for bad input to the scripts."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (the scripts import their helpers as top-level ``_cli`` / ``_timing``)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _committed(name: str) -> dict:
    return json.loads((BENCH / name).read_text())


@pytest.fixture(scope="module")
def timing() -> ModuleType:
    return _load("_timing")


@pytest.fixture(scope="module")
def cli() -> ModuleType:
    return _load("_cli")


# ------------------------------------------------------------------ _timing.py


class FakeClock:
    """A ``perf_counter`` that only moves when a timed function advances it, so every sample is known exactly."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def perf_counter(self) -> float:
        return self.now

    def runner(self, key: str, durations_ms: list[float]):
        """A callable that logs ``key`` and advances the clock by the next of ``durations_ms`` (cycling)."""
        state = {"i": 0}

        def run() -> None:
            self.calls.append(key)
            self.now += durations_ms[state["i"] % len(durations_ms)] / 1e3
            state["i"] += 1

        return run


def test_time_interleaved_rotates_and_its_medians_and_ratios_match_numpy(timing, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing, "time", clock)  # the module's ``time.perf_counter`` reads the fake clock
    # 4 untimed calls each (3 warm-up + 1 to size the repetitions) come first; the timed ones follow
    a_ms = [9.0, 9.0, 9.0, 9.0, 2.0, 4.0, 7.0, 1.0, 5.0]
    b_ms = [9.0, 9.0, 9.0, 9.0, 1.0, 1.0, 2.0, 4.0, 2.0]
    c_ms = [9.0] * 4 + [3.0] * 5
    runs = {"a": clock.runner("a", a_ms), "b": clock.runner("b", b_ms), "c": clock.runner("c", c_ms)}
    out = timing.time_interleaved(runs, budget_s=0.0, min_reps=5, max_reps=5)
    timed_order = clock.calls[12:]
    assert timed_order == list("abc" "bca" "cab" "abc" "bca")  # each repetition starts one key later
    for key, ms in (("a", a_ms), ("b", b_ms), ("c", c_ms)):
        assert out[key]["reps"] == 5
        assert out[key]["samples"] == pytest.approx(ms[4:], abs=1e-9)
        assert out[key]["median_ms"] == pytest.approx(float(np.median(ms[4:])), abs=1e-9)
    # the paired ratio is the median of per-repetition ratios, not a ratio of medians
    expected = float(np.median(np.array(a_ms[4:]) / np.array(b_ms[4:])))  # 2, 4, 3.5, 0.25, 2.5 -> 2.5
    assert expected == pytest.approx(2.5)
    assert timing.paired_ratio(out, "a", "b") == pytest.approx(expected)
    assert np.median(a_ms[4:]) / np.median(b_ms[4:]) == pytest.approx(2.0)  # what a ratio of medians would say


def test_time_interleaved_repetitions_follow_the_budget_within_bounds(timing, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing, "time", clock)
    one = {"x": clock.runner("x", [10.0])}  # 10 ms per repetition
    # budget / time of one repetition, truncated: 0.255 s / 10 ms -> 25
    assert timing.time_interleaved(one, budget_s=0.255, min_reps=3, max_reps=100)["x"]["reps"] == 25
    assert timing.time_interleaved(one, budget_s=10.0, min_reps=3, max_reps=40)["x"]["reps"] == 40
    assert timing.time_interleaved(one, budget_s=0.0, min_reps=7, max_reps=40)["x"]["reps"] == 7


def test_paired_ratio_refuses_unpaired_samples(timing):
    data = {"a": {"samples": [1.0, 2.0, 3.0]}, "b": {"samples": [1.0, 2.0]}}
    with pytest.raises(ValueError):
        timing.paired_ratio(data, "a", "b")


# ------------------------------------------------------------------ _cli.py


def test_cli_value_checks(cli):
    assert cli.positive_int("3") == 3
    assert cli.nonneg_float("0") == 0.0
    for bad in ("0", "-2", "x", "1.5"):
        with pytest.raises(Exception, match="integer >= 1"):
            cli.positive_int(bad)
    for bad in ("-1", "nan", "inf", "x"):
        with pytest.raises(Exception, match="number >= 0"):
            cli.nonneg_float(bad)
    assert cli.int_list("0, 3,,12", "--seeds") == [0, 3, 12]
    with pytest.raises(cli.BenchError, match="--seeds takes comma-separated integers"):
        cli.int_list("1,two", "--seeds")


def test_cli_output_and_previous_json_checks(cli, tmp_path):
    with pytest.raises(cli.BenchError, match="is a directory"):
        cli.check_out(tmp_path, "--out")
    assert cli.check_out(tmp_path / "new" / "r.json", "--out") == tmp_path / "new" / "r.json"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    bad = tmp_path / "bad.json"
    bad.write_text("{half")
    with pytest.raises(cli.BenchError, match="cannot be read as JSON"):
        cli.read_json(bad, "--out")
    bad.write_text("[1, 2]")
    with pytest.raises(cli.BenchError, match="JSON list"):
        cli.read_json(bad, "--out")
    assert cli.command_line(["/x/benchmarks/qat.py", "--out", "a b.json"]) == (
        "python benchmarks/qat.py --out 'a b.json'"
    )


def test_run_cli_prints_one_line_and_returns_2(cli, capsys):
    def bad() -> None:
        raise cli.BenchError("--out 'x' is a directory")

    assert cli.run_cli(bad) == 2
    assert capsys.readouterr().err == "error: --out 'x' is a directory\n"
    assert cli.run_cli(lambda: None) == 0
    with pytest.raises(SystemExit) as exc:
        cli.Parser(prog="b.py").parse_args(["--nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("b.py: error: unrecognized arguments: --nope")


def test_profiler_alternate_swaps_order_and_pairs_rounds():
    prof = _load("profiler")
    order: list[str] = []
    a_vals = iter([(2.0, 1.9), (4.0, 3.0), (3.0, 2.5), (10.0, 2.0)])
    b_vals = iter([(1.0, 0.9), (1.0, 0.8), (2.0, 1.5), (4.0, 1.0)])

    def a() -> tuple[float, float]:
        order.append("a")
        return next(a_vals)

    def b() -> tuple[float, float]:
        order.append("b")
        return next(b_vals)

    res = prof.alternate(a, b, rounds=4)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    pa, pb = np.array([2.0, 4.0, 3.0, 10.0]), np.array([1.0, 1.0, 2.0, 4.0])
    assert res["ratio"] == pytest.approx(float(np.median(pa) / np.median(pb)))  # 3.5 / 1.5
    assert res["ratio_paired"] == pytest.approx(float(np.median(pa / pb)))  # 2, 4, 1.5, 2.5 -> 2.25
    assert res["ratio_of_minimums"] == pytest.approx(1.9 / 0.8)
    assert res["within_10pct"] is False


# ------------------------------------------------------------------ committed JSON: derived fields vs raw fields


def test_reparam_json_ratios_and_targets_follow_from_its_figures():
    d = _committed("reparam.json")
    for name, rec in d["models"].items():
        if not rec.get("timed", True):
            assert "latency_ms" not in rec
            continue
        lat = rec["latency_ms"]
        for rt in ("onnxruntime", "openvino"):
            # train / deploy: > 1 means the deploy form is faster (medians rounded to 4 decimals, ratio to 3)
            assert rec["speedup_of_medians"][rt] == pytest.approx(lat[f"{rt}/train"] / lat[f"{rt}/deploy"], abs=2e-3)
            s = rec["speedup_deploy_vs_train"][rt]
            assert d["targets"]["deploy_never_slower"][name][rt] == (s >= 1.0)
            assert d["targets"]["deploy_not_slower_within_2pct_noise"][name][rt] == (s >= 0.98)
        assert d["targets"]["max_rel_diff_below_1e-5"][name] == (rec["max_rel_diff"] < 1e-5)
        assert rec["macs_deploy"] <= rec["macs_train"] and rec["params_deploy"] <= rec["params_train"]
    fm = d["fmvit_t_vs_mobilenetv2"]
    lat = fm["latency_ms"]
    assert fm["fmvit_t_over_mobilenetv2_of_medians"] == pytest.approx(lat["fmvit_t"] / lat["mobilenetv2"], abs=2e-3)
    assert d["targets"]["fmvit_t_not_slower_than_mobilenetv2_openvino"] == (fm["fmvit_t_over_mobilenetv2"] <= 1.0)
    rep = d["rep3x3_vs_plain_conv"]
    for rt, r in rep["deploy_over_plain"].items():
        assert d["targets"]["rep3x3_within_5pct_of_plain_conv"][rt] == (r <= 1.05)
    # the published parameter formulas, recomputed: ULSAM 2m conv weights, 2m*H*W FLOPs; ELA C*(C/g)*k + 2C
    ul = d["param_costs"]["ulsam"]
    assert ul["published_conv_weights"] == 2 * ul["m"] and ul["published_flops_14x14"] == 2 * ul["m"] * 14 * 14
    table = {"T": (5, 1), "B": (7, 1), "S": (5, 8), "L": (7, 8)}
    for key, v in d["param_costs"]["ela"].items():
        version, c = key.split("@C=")
        k, cpg = table[version]
        assert v["published"] == int(c) * cpg * k + 2 * int(c)


def test_export_json_speedups_follow_from_the_latencies():
    d = _committed("export.json")
    seen = 0
    for name in ("conv_stack_7x3x3", "fmvit_t"):
        for variant, rec in d["openvino_int8_vs_fp32"][name].items():
            # FP32 / INT8 (> 1: INT8 faster), both medians rounded to 3 decimals
            assert rec["int8_speedup_of_medians"] == pytest.approx(rec["fp32_ms"] / rec["int8_ms"], abs=5e-3), variant
            assert rec["int8_all_i8_kernels"] == (not rec["int8_f32_compute_nodes"])
            seen += 1
    assert seen == 6
    for run in [d["all_targets"], *d.get("all_targets_other_torch_threads", [])]:
        assert set(run["targets"]) == {"onnx", "tensorrt", "openvino", "coreml"}
        assert all(t["passed"] and t["parity_inputs"] == run["n_inputs"] for t in run["targets"].values())
        assert run["total_seconds"] < run["goal_seconds"]


def test_grad_spikes_json_summaries_follow_from_its_steps():
    d = _committed("grad_spikes.json")
    assert d
    for key, entry in d.items():
        steps = entry["steps"]
        assert [s["step"] for s in steps] == list(range(1, len(steps) + 1)), key
        total = np.array([s["grad_total"] for s in steps])
        assert entry["steps_over_1e3"] == int((total > 1e3).sum())
        assert entry["median_grad_total"] == pytest.approx(float(np.median(total)))
        for field, agg in (
            ("median_grad_distribution_without_small_rows", np.median),
            ("max_grad_distribution_without_small_rows", np.max),
            ("max_grad_distribution_row_floor", np.max),
            ("max_grad_task", np.max),
        ):
            source = field.split("_", 1)[1]  # the per-step field it aggregates
            assert entry[field] == pytest.approx(float(agg([s[source] for s in steps]))), (key, field)
        for s in steps:  # rows that are exactly zero are also under the 1e-3 floor
            assert all(z <= m for z, m in zip(s["zero_logit_rows"], s["small_logit_rows"], strict=True))


def test_profile_json_agreement_overhead_and_per_layer_summary_recomputed():
    d = _committed("profile.json")
    for group in ("agreement", "overhead"):
        for th, sec in d[group].items():
            entries = [sec] if group == "overhead" else [v for v in sec.values() if isinstance(v, dict)]
            for e in entries:
                prof = np.array(e["profiler_p50_min_ms_per_round"])
                ref = np.array(e["reference_p50_min_ms_per_round"])
                assert e["profiler_median_ms"] == pytest.approx(float(np.median(prof[:, 0])))
                assert e["ratio"] == pytest.approx(float(np.median(prof[:, 0]) / np.median(ref[:, 0])))
                assert e["ratio_of_minimums"] == pytest.approx(float(prof[:, 1].min() / ref[:, 1].min()))
                assert e["within_10pct"] == (abs(e["ratio"] - 1) <= 0.10)
                if group == "overhead":
                    assert e["added_fraction"] == pytest.approx(e["ratio"] - 1), th
    for runtime, summ in d["per_layer_summary"].items():
        vals = [
            row["per_layer_sum_over_interleaved_e2e"]
            for entry in d["models"].values()
            if isinstance(entry.get(runtime), list)
            for row in entry[runtime]
            if row.get("per_layer_sum_over_interleaved_e2e") is not None
        ]
        assert summ["artifacts"] == len(vals)
        assert summ["sum_over_interleaved_e2e_median"] == pytest.approx(float(np.median(vals)))
        assert summ["sum_over_interleaved_e2e_min"] == min(vals) and summ["sum_over_interleaved_e2e_max"] == max(vals)
        assert summ["within_15pct"] == sum(abs(v - 1) <= 0.15 for v in vals)


def test_hls_json_estimates_add_up():
    d = _committed("hls.json")
    for row in d["csim"]:
        assert row["csim_total_s"] == pytest.approx(row["compile_s"] + row["run_s"], abs=1e-3)
        assert row["outputs"] == d["tokens"] * d["dim"] * row["vectors"]
    for key, est in d["estimate"].items():
        for part in ("cycles", "dsp", "bram18k") if not key.startswith("whole_model") else ("dsp", "bram18k"):
            parts = {k: v for k, v in est[part].items() if k != "total"}
            assert est[part]["total"] == sum(parts.values()), (key, part)
        assert est["latency_us"] == pytest.approx(est["cycles"]["total"] / 300.0)  # 300 MHz
        assert est["efficiency"] == pytest.approx(est["dsp_floor_us"] / est["latency_us"])
    # whole model (its "arithmetic"): 4 layers of qkv, proj, attention, layernorm, residual; 2 dense and 2 MoE MLPs;
    # patch embedding and head once
    c = d["estimate"]["whole_model_p4"]["cycles"]
    per_layer = c["qkv"] + c["proj"] + c["attention"] + c["layernorm"] + c["residual"]
    assert c["total"] == 4 * per_layer + 2 * c["mlp_dense"] + 2 * c["mlp_moe"] + c["patch_embed"] + c["head"]


def test_approx_json_ratios_are_against_exact():
    d = _committed("approx.json")
    ops = {r["op"] for r in d["results"]}
    assert ops == {"softmax", "gelu"}
    for r in d["results"]:
        if r["method"] == "exact":
            assert r["torch_ratio_vs_exact"] == 1.0 and r["ort_ratio_vs_exact"] == 1.0
        assert r["torch_ms"] > 0 and r["ort_ms"] > 0 and r["reps"] >= 10
        if "ort_samples_ms" in r:  # files written since the samples are kept
            assert r["ort_ms"] == pytest.approx(float(np.median(r["ort_samples_ms"])))


def test_qat_json_seed_summaries_match_their_rows():
    """every ``seed_summary`` entry recomputed from the per-seed sections with the benchmark's own code."""
    qat = _load("qat")
    d = _committed("qat.json")
    for key in ("fp_epochs_5", "fp_epochs_20", "fp_epochs_20_seeds_0-9", "fp_epochs_20_seeds_10-19"):
        stored = d["seed_summary"][key]
        only = None
        if "_seeds_" in key:
            first, last = key.rsplit("_", 1)[1].split("-")
            only = list(range(int(first), int(last) + 1))
        payload = json.loads(json.dumps(d))
        qat._seed_summary(payload, stored["config"], only=only)
        again = json.loads(json.dumps(payload["seed_summary"][key]))  # int seed keys -> str, as stored
        for bits in ("w8a8", "w4a8", "w4a4"):
            for method in ("fp32", "ptq_best", "plain_qat", "edgeqat", "edgeqat_no_entropy"):
                if method in stored.get(bits, {}):
                    assert again[bits][method]["mean"] == pytest.approx(stored[bits][method]["mean"]), (key, bits)
                    by_seed = list(again[bits][method]["by_seed"].values())  # math.fsum: not the code's fmean
                    assert stored[bits][method]["mean"] == pytest.approx(math.fsum(by_seed) / len(by_seed))


def test_qat_json_main_summary_matches_its_rows():
    d = _committed("qat.json")
    rows, fp, summary = d["vision"]["rows"], d["vision"]["fp32"], d["summary"]
    for bits in ("w8a8", "w4a8", "w4a4"):
        e, q = rows[f"edgeqat-{bits}"]["value"], rows[f"qat-{bits}"]["value"]
        best_ptq = max(rows[f"ptq-minmax-{bits}"]["value"], rows[f"ptq-percentile-{bits}"]["value"])
        assert summary[f"vision_{bits}_edgeqat_drop_points"] == pytest.approx(fp - e)
        assert summary[f"vision_{bits}_edgeqat_minus_plain_qat_points"] == pytest.approx(e - q)
        assert summary[f"vision_{bits}_edgeqat_beats_best_ptq"] == (e > best_ptq)


# ------------------------------------------------------------------ scripts: bad input is one line, exit 2


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("qat.py", ["--only", "language", "--seeds", "1"], "error: --seeds repeats the vision table"),
        ("profiler.py", ["--skip", "model"], "error: --skip: unknown section(s) model"),
        ("approx.py", ["--threads", "0"], "approx.py: error: argument --threads: expected an integer >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(script, args, message, tmp_path):
    out = tmp_path / "out.json"
    flag = "--json" if script == "approx.py" else "--out"
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args, flag, str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "Warning" not in ln and "warnings.warn" not in ln]
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert not out.exists()


def test_qat_refuses_to_replace_an_existing_table_without_resume_or_force(tmp_path):
    out = tmp_path / "qat.json"
    out.write_text('{"vision": {"rows": {"kept": {}}}}')
    proc = subprocess.run(
        [sys.executable, str(BENCH / "qat.py"), "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "exists: --resume adds to its rows, --force replaces it" in proc.stderr
    assert json.loads(out.read_text()) == {"vision": {"rows": {"kept": {}}}}  # untouched


# ------------------------------------------------------------------ QA sweep fixes: refusals, kept sections, seeds


def _run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=120, cwd=BENCH.parent
    )


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if "Warning" not in ln and "warnings.warn" not in ln]


def test_check_out_refuses_an_existing_file_unless_forced(cli, tmp_path):
    out = tmp_path / "r.json"
    assert cli.check_out(out, "--json", force=False) == out  # a new file is fine either way
    out.write_text("{}")
    with pytest.raises(cli.BenchError, match=r"--json '.*r.json' exists: --force replaces it"):
        cli.check_out(out, "--json", force=False)
    assert cli.check_out(out, "--json", force=True) == out
    assert cli.check_out(out, "--json") == out  # default: the merging scripts (profiler, grad_spikes) read it first


@pytest.mark.parametrize(
    ("script", "flag", "args"),
    [
        ("hls.py", "--json", ["--quick"]),
        ("approx.py", "--json", ["--budget", "0"]),
        ("reparam.py", "--out", ["--models", "mobilenetv2", "--budget-scale", "0.05"]),
        ("export.py", "--out", ["--img-size", "32", "--isa", ""]),
    ],
)
def test_quick_runs_refuse_to_replace_an_existing_json(script, flag, args, tmp_path):
    out = tmp_path / "committed.json"
    out.write_text('{"kept": 1}')
    proc = _run_script(script, *args, flag, str(out))
    assert proc.returncode == 2, proc.stderr
    lines = _error_lines(proc)
    assert lines == [f"error: {flag} '{out}' exists: --force replaces it (quick checks: write to /tmp)"], proc.stderr
    assert json.loads(out.read_text()) == {"kept": 1}


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("export.py", ["--skip-latency", "--skip-all-targets"], "error: --skip-latency and --skip-all-targets"),
        ("export.py", ["--isa", "FOO"], "error: --isa 'FOO' is not a oneDNN ISA; choose one of SSE41, AVX, AVX2,"),
        ("profiler.py", ["--skip", "models,agreement,overhead"], "error: --skip: every section"),
    ],
)
def test_runs_with_nothing_valid_to_measure_are_refused(script, args, message, tmp_path):
    out = tmp_path / "previous.json"
    out.write_text('{"models": {"kept": 1}, "command": "python benchmarks/x.py"}')
    force = ["--force"] if script == "export.py" else []  # export.py: even where it may replace the file
    proc = _run_script(script, *args, "--out", str(out), *force)
    assert proc.returncode == 2, proc.stderr
    lines = _error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert json.loads(out.read_text()) == {"models": {"kept": 1}, "command": "python benchmarks/x.py"}


def test_help_descriptions_are_whole_sentences(cli):
    assert cli.description("\nFirst line\n  goes on.\n\nSecond paragraph.\n") == "First line goes on."
    for script, ending in (
        ("hls.py", "as the widths shrink, and the analytical estimate."),
        ("reparam.py", "Writes medians and ratios measured side by side to JSON."),
    ):
        text = " ".join(_run_script(script, "-h").stdout.split())
        assert ending in text, text


def test_export_keeps_a_skipped_section_with_the_command_that_measured_it():
    export = _load("export")
    committed = _committed("export.json")
    run_by = {"command": "python benchmarks/export.py --skip-latency --force", "started_utc": "t", "host": "h"}
    result = {"command": run_by["command"], "all_targets": {"new": 1}, "sections_run_by": {"all_targets": run_by}}
    export.keep_skipped(result, committed, ["openvino_int8_vs_fp32"])
    assert result["all_targets"] == {"new": 1}
    assert result["openvino_int8_vs_fp32"] == committed["openvino_int8_vs_fp32"]  # the figures docs/export.md quotes
    # written before sections_run_by: the section's own command names the run that measured it
    assert result["sections_run_by"]["openvino_int8_vs_fp32"] == {
        "command": committed["openvino_int8_vs_fp32"]["command"]
    }
    assert result["sections_from_previous_run"] == ["openvino_int8_vs_fp32"]
    # the other way round: both all_targets keys are kept, and a recorded sections_run_by entry wins
    again = {"command": "c2", "openvino_int8_vs_fp32": {"x": 2}, "sections_run_by": {"openvino_int8_vs_fp32": {}}}
    previous = {**result, "sections_run_by": {"all_targets": run_by}, "all_targets_other_torch_threads": [{"o": 1}]}
    export.keep_skipped(again, previous, ["all_targets"])
    assert again["all_targets"] == {"new": 1} and again["all_targets_other_torch_threads"] == [{"o": 1}]
    assert again["sections_run_by"]["all_targets"] == run_by
    # a file whose run kept the section itself cannot say who measured it; a missing section stays missing
    older = {"command": "c0", "all_targets": {"a": 1}, "sections_from_previous_run": ["all_targets"]}
    fresh = {"sections_run_by": {}}
    export.keep_skipped(fresh, older, ["all_targets", "openvino_int8_vs_fp32"])
    assert fresh["sections_run_by"]["all_targets"]["command"].startswith("not recorded")
    assert "openvino_int8_vs_fp32" not in fresh and fresh["sections_from_previous_run"] == ["all_targets"]


def test_export_isa_is_checked_against_onednn_names():
    export = _load("export")
    assert export.check_isa(" avx2 ") == "AVX2" and export.check_isa("") is None
    with pytest.raises(export.BenchError, match="--isa 'AVX3' is not a oneDNN ISA"):
        export.check_isa("AVX3")


def test_grad_spikes_seed_comes_from_the_checkpoint_and_a_mismatch_is_refused(tmp_path):
    import torch
    from edgeattn.quant.checkpoint import save_checkpoint

    ckpt = tmp_path / "fp.pt"
    meta = {"model": "none", "model_kwargs": {}, "split": {"seed": 3, "img_size": 32, "in_chans": 3}}
    save_checkpoint(ckpt, torch.nn.Linear(2, 2), meta)
    spikes = _load("grad_spikes")
    assert spikes.checkpoint_seed(str(ckpt), None) == 3
    assert spikes.checkpoint_seed(str(ckpt), 3) == 3
    out = tmp_path / "g.json"
    proc = _run_script("grad_spikes.py", "--fp-checkpoint", str(ckpt), "--seed", "4", "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert _error_lines(proc) == [
        f"error: --seed 4 does not match --fp-checkpoint '{ckpt}', trained on the split of seed 3; leave --seed "
        "out or pass 3"
    ]
    assert not out.exists()
    save_checkpoint(ckpt, torch.nn.Linear(2, 2), {"model": "none", "model_kwargs": {}})  # an older checkpoint
    assert spikes.checkpoint_seed(str(ckpt), 5) == 5
    with pytest.raises(spikes.BenchError, match="does not record its split seed: pass --seed"):
        spikes.checkpoint_seed(str(ckpt), None)


def test_reparam_train_form_keeps_random_batchnorm_that_onnxruntime_computes(tmp_path):
    """A seeded random BatchNorm stays a BatchNormalization node in the train form's ONNX, and ONNX Runtime's output
    matches the BatchNorm formula computed in float64."""
    import onnx
    import onnxruntime as ort
    import torch
    from torch import nn

    reparam = _load("reparam")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)).eval()
    assert reparam.randomize_batchnorm(model, seed=0) == 1
    bn = model[1]
    twin = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)).eval()
    reparam.randomize_batchnorm(twin, seed=0)
    assert torch.equal(bn.running_var, twin[1].running_var) and torch.equal(bn.bias, twin[1].bias)  # seeded
    assert not torch.allclose(bn.running_var, torch.ones(4)) and not torch.allclose(bn.running_mean, torch.zeros(4))
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / "train.onnx"
    reparam._export(model, x, path, keep_batchnorm=True)
    assert [n.op_type for n in onnx.load(str(path)).graph.node] == ["Conv", "BatchNormalization"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    conv = copy.deepcopy(model[0]).double()
    with torch.no_grad():
        y = conv(x.double())
        mean, var, w, b = (t.double().view(1, -1, 1, 1) for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias))
        want = ((y - mean) / torch.sqrt(var + bn.eps) * w + b).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    folded = tmp_path / "folded.onnx"
    reparam._export(model, x, folded)  # the exporter's optimizer folds the BatchNorm away
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(folded)).graph.node}
