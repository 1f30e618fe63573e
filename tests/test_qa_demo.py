"""`edgeattn demo`'s report says what its sources say: parity figures against report.json's, HTML against the
Markdown, failures and Ctrl-C as such (never as a pass). The steps' heavy work is replaced by fixed results, so
these run in seconds; the real end-to-end run is ``tests/test_demo.py::test_demo_runs_end_to_end``."""

from __future__ import annotations

import html
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from edgeattn.cli import main
from edgeattn.demo import Demo, DemoSettings, StepResult, build_report, run_demo
from edgeattn.errors import MissingBackendError
from edgeattn.report import Report

QUIET = Console(file=io.StringIO())


# ---------------------------------------------------------------------------------------------- helpers
class _Tables(HTMLParser):
    """The text of every table cell of an HTML page, table by table, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def md_tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table of ``text`` as rows of cell text (separator rows dropped, ``\\|`` and entities
    undone: what a reader of the rendered table sees)."""
    tables: list[list[list[str]]] = []
    previous_was_row = False
    for line in text.splitlines():
        if line.startswith("|"):
            if not previous_was_row:
                tables.append([])
            previous_was_row = True
            if re.fullmatch(r"\|(---\|)+", line):
                continue
            cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
            tables[-1].append([html.unescape(c.strip().replace("\\|", "|")) for c in cells])
        else:
            previous_was_row = False
    return tables


def table_with(tables: list[list[list[str]]], header: str) -> list[dict[str, str]]:
    """The rows of the first table whose header has ``header``, as dicts keyed by the header."""
    table = next(t for t in tables if header in t[0])
    return [dict(zip(table[0], row, strict=True)) for row in table[1:]]


def parity(runtime: str, rel: float, cosine: float, top1: float, passed: bool = True,
           strict: bool | None = None) -> dict[str, Any]:
    """One parity check as export's ParityResult.to_dict() writes it to report.json."""
    return {"runtime": runtime, "reference": "pytorch", "n_inputs": 16, "max_abs": rel * 12.5,
            "max_abs_rel_range": rel, "max_rel": 0.5, "cosine": cosine, "top1": top1,
            "tolerance": {"max_abs": 0.05, "min_cosine": 0.995, "min_top1_agreement": 0.9}, "passed": passed,
            "failures": [] if passed else [f"max abs error {rel:.3g} of the output range > 0.05"],
            "first_diverging_node": None, "note": "", "profile_tolerance": None, "noise_floor": None,
            "passed_profile_tolerance": strict}


def export_report(tmp: Path, name: str, checks: list[dict[str, Any]]) -> dict[str, Any]:
    """report.json of one artifact, written where export writes it; returned as the demo keeps it."""
    folder = tmp / "export" / name
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx")
    rep = {"artifacts": {"onnx": str(folder / "model.onnx")}, "parity": checks,
           "parity_inputs": {"random": 8, "real": 8}, "notes": [], "trtexec": None}
    (folder / "report.json").write_text(json.dumps(rep))
    return rep


def demo_with(tmp: Path, results: dict[str, StepResult]) -> Demo:
    demo = Demo(tmp, DemoSettings.fast(), QUIET)
    demo.results = results
    demo.approx = None
    return demo


# ---------------------------------------------------------------------------------------------- report content
def test_parity_table_holds_report_json_figures_against_their_tolerances(tmp_path):
    ok = export_report(tmp_path, "onnx_int8", [parity("onnxruntime", 0.0308, 0.99733612, 1.0)])
    floor = export_report(tmp_path, "openvino_int8", [parity("openvino-cpu", 0.07, 0.9991, 0.9375, strict=False)])
    artifacts = [
        {"name": "onnx_int8", "target": "onnx", "profile": "host-cpu", "status": "passed", "report": ok,
         "artifact": ok["artifacts"]["onnx"]},
        {"name": "openvino_int8", "target": "openvino", "profile": "host-cpu", "status": "passed",
         "report": floor, "artifact": floor["artifacts"]["onnx"]},
        {"name": "coreml_fp16", "target": "coreml", "profile": "apple-a17-coreml", "status": "error",
         "detail": "coreml needs the 'coremltools' package", "report": {}, "artifact": None},
    ]
    demo = demo_with(tmp_path, {"export": StepResult("export", "ok", 1.0, data={"artifacts": artifacts})})
    md, _ = build_report(demo).write(tmp_path)
    rows = table_with(md_tables(md.read_text()), "gate")

    source = json.loads((tmp_path / "export/onnx_int8/report.json").read_text())["parity"][0]
    first = rows[0]
    # the gate bounds max_abs / range (not max_abs): the table shows that ratio next to its limit
    assert first["max abs err / output range"] == f"{source['max_abs_rel_range']:.4g} (max 0.05)"
    assert first["min cosine"] == f"{source['cosine']:.6f} (min 0.995)" == "0.997336 (min 0.995)"
    assert first["top-1 agreement (fraction)"] == "1 (min 0.9)"
    assert first["inputs"] == "16 (8 real, 8 random)" and first["gate"] == "passed"
    assert first["file"] == "export/onnx_int8/model.onnx" and (tmp_path / first["file"]).is_file()
    assert rows[1]["gate"] == "passed (within noise floor)"
    # an artifact that never reached a parity gate is not reported as passing
    assert rows[2]["gate"] == "error" and "coremltools" in rows[2]["note"]


def test_html_shows_the_same_tables_as_the_markdown(tmp_path):
    rep = Report("t <&> t")
    rep.section("s").table(["a|b", "<bool>", "c"], [["x & y", "line\nbreak", 0.99999994], [None, True, 1234567]])
    md, page = rep.write(tmp_path)
    parser = _Tables()
    parser.feed(page.read_text())
    assert parser.tables == md_tables(md.read_text())
    assert parser.tables[0] == [["a|b", "<bool>", "c"], ["x & y", "line break", "1"], ["-", "yes", "1,234,567"]]
    assert "<title>t &lt;&amp;&gt; t</title>" in page.read_text()


def test_missing_backend_fails_the_export_step_and_the_rest_is_still_profiled(tmp_path, monkeypatch, capsys):
    from edgeattn.export.report import ExportReport

    from edgeattn import export as export_pkg

    def fake_export(ckpt, target, profile, out_dir, precision, **kw):
        if target == "openvino":
            raise MissingBackendError("openvino needs the 'openvino' package (pip install edgeattn[openvino])")
        out_dir.mkdir(parents=True)
        return ExportReport(model="fmvit_t", target=target, precision=precision, profile={"name": profile},
                            out_dir=str(out_dir), artifacts={"onnx": str(out_dir / "model.onnx")},
                            parity=[parity("onnxruntime", 0.01, 0.9999, 1.0)])

    profiled: list[str] = []
    monkeypatch.setattr(export_pkg, "export_model", fake_export)
    monkeypatch.setattr(Demo, "train", lambda self: {"fp_checkpoint": "fp.pt"})
    monkeypatch.setattr(Demo, "qat", lambda self: {"checkpoint": "model.pt"})
    monkeypatch.setattr(Demo, "profile", lambda self: profiled.append("yes") or {"rows": [], "plots": []})
    monkeypatch.setattr(Demo, "hls", lambda self: {})
    monkeypatch.setattr(Demo, "_approx_plot", lambda self: setattr(self, "approx", None))
    monkeypatch.setattr("edgeattn.demo._accuracy_section", lambda rep, r: None)  # train/qat hold no figures here

    assert main(["demo", "-o", str(tmp_path / "d"), "--fast"]) == 1
    summary = json.loads((tmp_path / "d/summary.json").read_text())
    assert summary["export"]["status"] == "failed" and profiled == ["yes"]
    assert summary["export"]["detail"] == ("2 of 6 artifacts did not pass: openvino_fp32 (error), "
                                           "openvino_int8 (error)")
    rows = table_with(md_tables((tmp_path / "d/report.md").read_text()), "gate")
    gates = {row["artifact"]: row["gate"] for row in rows}
    assert gates == {"onnx_fp32": "passed", "onnx_int8": "passed", "openvino_fp32": "error",
                     "openvino_int8": "error", "coreml_fp16": "passed", "tensorrt_int8": "passed"}
    assert "did not complete: export" in capsys.readouterr().out


def test_csim_mismatch_fails_the_hls_step_and_keeps_its_figures(tmp_path, monkeypatch):
    import edgeattn.fpga_hls as hls_pkg
    import edgeattn.quant.train as trainer

    csim = {"vectors": 4, "mismatches": 3, "max_abs_err_vs_float": 0.25, "cosine_vs_float": 0.9991234}
    info = SimpleNamespace(path=tmp_path / "d" / "hls_prj", estimate={}, golden_vs_float={})
    monkeypatch.setattr(trainer, "run", lambda cfg, force: {"fp32": 87.5, "status": "done"})
    monkeypatch.setattr("edgeattn.demo._load", lambda path: (None, {}))
    monkeypatch.setattr(hls_pkg, "generate_project", lambda *a, **k: info)
    monkeypatch.setattr(hls_pkg, "run_csim", lambda path: dict(csim))
    monkeypatch.setattr(Demo, "train", lambda self: (_ for _ in ()).throw(RuntimeError("not this test")))
    monkeypatch.setattr(Demo, "_approx_plot", lambda self: setattr(self, "approx", None))

    results = run_demo(tmp_path / "d", DemoSettings.fast(), console=QUIET)
    assert results["hls"].status == "failed"
    assert results["hls"].detail == "C simulation: 3 outputs differ from the golden model over 4 vectors"
    report = (tmp_path / "d/report.md").read_text()
    row = table_with(md_tables(report), "mismatches vs golden")[0]
    assert (row["C-sim vectors"], row["mismatches vs golden"], row["cosine vs float"]) == ("4", "3", "0.999123")
    assert "**The HLS step failed: C simulation: 3 outputs differ" in report
    assert "trained on digits to 87.5% top-1" in report


@pytest.mark.parametrize("step", ["train", "qat"])
def test_ctrl_c_in_the_trainer_ends_the_demo_with_130_and_says_so(tmp_path, monkeypatch, capsys, step):
    # the trainer turns Ctrl-C into a flag and returns status 'interrupted': the demo used to go on as if done
    import edgeattn.quant.train as trainer

    def fake_run(cfg, force):
        if Path(cfg.output_dir).name == step:
            return {"status": "interrupted"}
        return {"fp32": 50.0, "ptq": 40.0, "fp_checkpoint": "fp.pt", "status": "done"}

    hls_ran: list[bool] = []
    monkeypatch.setattr(trainer, "run", fake_run)
    monkeypatch.setattr("edgeattn.demo._load", lambda path: (None, {}))
    monkeypatch.setattr("edgeattn.demo._reparam_summary", lambda model, size: {
        "train_params": 2, "deploy_params": 1, "train_modules": 2, "deploy_modules": 1, "reparam_max_abs_err": 0.0})
    monkeypatch.setattr(Demo, "hls", lambda self: hls_ran.append(True) or {})
    monkeypatch.setattr(Demo, "_approx_plot", lambda self: setattr(self, "approx", None))

    out = tmp_path / "d"
    assert main(["demo", "-o", str(out), "--fast"]) == 130
    assert "interrupted" in capsys.readouterr().err and not hls_ran
    summary = json.loads((out / "summary.json").read_text())
    assert summary[step]["status"] == "interrupted"
    assert [n for n in ("train", "qat", "export", "profile", "hls") if n in summary] == (
        ["train"] if step == "train" else ["train", "qat"])
    assert f"The demo was interrupted (Ctrl-C) during step '{step}'" in (out / "report.md").read_text()


def _profiled(paths: list[str], p50s: list[float]) -> Any:
    """A ProfileReport as profile_artifacts returns it: one result per artifact, ratios to the first."""
    from edgeattn.profile.measure import latency_stats
    from edgeattn.profile.schema import ArtifactResult, Efficiency, ProfileReport, SystemRecord

    system = SystemRecord(cpu_model="cpu", isa_flags=[], physical_cores=2, logical_cores=2, clock_ghz=3.0,
                          clock_source="test", system="Linux", machine="x86_64", gpus=[], runtimes={},
                          python="3.11", hostname="h")
    results = []
    for path, p50 in zip(paths, p50s, strict=True):
        stats = latency_stats([p50 * 0.9, p50, p50 * 1.3], 1)
        results.append(ArtifactResult(
            artifact=path, label=Path(path).name, runtime="onnxruntime", runtime_version="1", device="cpu",
            precision="int8" if "int8" in path else "fp32", input_shapes={"x": [1, 3, 32, 32]}, load_ms=1.0,
            cold_ms=2.0, warmup=5, latency=stats, ratio_to_first=stats.p50_ms / p50s[0],
            efficiency=Efficiency(macs=10**6, achieved_gmacs=1e6 / (stats.p50_ms * 1e-3) / 1e9,
                                  fraction_of_peak=0.01), rss_after_load_mb=1.0))
    return ProfileReport(created_utc="now", system=system, settings={}, interleaved=True, peak_rss_mb=1.0,
                         results=results)


def test_latency_rows_match_the_profilers_json_and_speed_up_is_fp32_over_int8(tmp_path, monkeypatch):
    import edgeattn.profile as profile_pkg

    artifacts = [{"name": n, "target": "onnx", "profile": "host-cpu", "status": "passed", "report": {},
                  "artifact": str(tmp_path / f"{n}.onnx")} for n in ("onnx_fp32", "onnx_int8")]
    monkeypatch.setattr(profile_pkg, "profile_artifacts", lambda paths, **kw: _profiled(paths, [2.0, 0.8]))
    monkeypatch.setattr(profile_pkg, "plot_report", lambda report, path: Path(path).write_bytes(b"png"))
    demo = demo_with(tmp_path, {"export": StepResult("export", "ok", data={"artifacts": artifacts})})
    assert demo.step("profile", demo.profile).status == "ok"
    md, _ = build_report(demo).write(tmp_path)

    source = json.loads((tmp_path / "latency_onnxruntime.json").read_text())["results"]
    fp32, int8 = (res["latency"]["p50_ms"] for res in source)
    rows = table_with(md_tables(md.read_text()), "speed-up vs FP32 (p50)")
    assert [(r["precision"], r["p50 ms"], r["timed runs"]) for r in rows] == [
        ("FP32", f"{fp32:.4g}", "3"), ("INT8", f"{int8:.4g}", "3")]
    assert rows[1]["speed-up vs FP32 (p50)"] == f"{fp32 / int8:.4g}" == "2.5"  # INT8 is 2.5x faster, not 0.4
    assert "`latency_onnxruntime.json`" in md.read_text()
    assert "![latency_onnxruntime.png](latency_onnxruntime.png)" in md.read_text()
