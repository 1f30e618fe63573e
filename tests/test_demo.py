"""`edgeattn demo`: the whole path runs and leaves a report; a failing step does not stop the others."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from edgeattn.cli import main
from edgeattn.demo import Demo, DemoSettings, run_demo

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([str(BIN / "edgeattn"), "demo", "--fast", "-o", str(out)], capture_output=True,
                            text=True, timeout=1500, env={**os.environ, "COLUMNS": "120"})
    summary = json.loads((out / "summary.json").read_text())
    statuses = {name: step["status"] for name, step in summary.items()}
    assert statuses == dict.fromkeys(("train", "qat", "export", "profile", "hls", "report"), "ok"), (
        statuses, result.stdout[-4000:])
    assert result.returncode == 0

    train, qat = summary["train"]["data"], summary["qat"]["data"]
    assert 0 <= train["fp32"] <= 100 and 0 <= qat["qat"] <= 100
    assert train["reparam_max_abs_err"] < 1e-4 and train["deploy_params"] < train["train_params"]

    artifacts = {a["name"]: a for a in summary["export"]["data"]["artifacts"]}
    assert set(artifacts) == {"onnx_fp32", "onnx_int8", "openvino_fp32", "openvino_int8", "coreml_fp16",
                              "tensorrt_int8"}
    for name, art in artifacts.items():
        assert art["status"] == "passed", (name, art.get("detail"))
        assert art["report"]["parity"], name  # every artifact was checked in some runtime
    assert "trtexec" in artifacts["tensorrt_int8"]["report"]["trtexec"]

    rows = summary["profile"]["data"]["rows"]
    assert {(r["runtime"], r["precision"]) for r in rows} == {
        ("onnxruntime", "FP32"), ("onnxruntime", "INT8"), ("openvino", "FP32"), ("openvino", "INT8")}
    assert all(r["p50_ms"] > 0 for r in rows)

    csim = summary["hls"]["data"]["csim"]
    assert csim["mismatches"] == 0 and csim["vectors"] >= 1
    assert csim["cosine_vs_float"] > 0.99

    report = (out / "report.md").read_text()
    for heading in ("Accuracy per stage", "Parity per artifact", "Latency on this machine",
                    "softmax and GELU", "FPGA"):
        assert heading in report
    assert "Not available" not in report
    html = (out / "report.html").read_text()
    assert "<table>" in html and "<img" in html
    for image in ("approx_errors.png", "latency_onnxruntime.png", "latency_openvino.png"):
        assert (out / image).stat().st_size > 1000


def test_failing_step_is_reported_and_dependants_skipped(tmp_path, monkeypatch):
    def broken_train(self):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(Demo, "train", broken_train)
    monkeypatch.setattr(Demo, "hls", lambda self: {"csim": {}, "project": "p"})
    monkeypatch.setattr(Demo, "_approx_plot", lambda self: setattr(self, "approx", None))
    results = run_demo(tmp_path / "d", DemoSettings.fast(), console=Console(file=io.StringIO()))
    statuses = {name: r.status for name, r in results.items()}
    assert statuses == {"train": "failed", "qat": "skipped", "export": "skipped", "profile": "skipped",
                        "hls": "ok", "report": "ok"}
    assert results["train"].detail == "RuntimeError: simulated failure"
    assert "needs step 'train'" in results["qat"].detail
    assert "simulated failure" in (tmp_path / "d" / "demo.log").read_text()
    report = (tmp_path / "d" / "report.md").read_text()
    assert "| Train fmvit_t on digits (FP32) and reparameterize | failed |" in report
    assert "Not available: the training step did not complete." in report


def test_demo_refuses_a_non_empty_output_without_force(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user data")
    assert main(["demo", "-o", str(tmp_path)]) == 2
    assert "use --force" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "user data"


@pytest.mark.parametrize("out", [".", ".."])
def test_demo_force_never_deletes_the_working_directory(user_cwd, capsys, out):
    assert main(["demo", "-o", out, "--force", "--fast"]) == 2
    assert "working directory" in capsys.readouterr().err
    assert (user_cwd / "keep.txt").read_text() == "user data"


def test_demo_force_through_a_link_replaces_the_target_folder_only(user_cwd, capsys, monkeypatch):
    # -o LINK --force used to rmtree the link itself (an OSError traceback); the link's folder is what is replaced
    target = user_cwd / "real"
    target.mkdir()
    (target / "old.txt").write_text("old demo")
    (user_cwd / "link").symlink_to(target)
    ran = {}
    monkeypatch.setattr(Demo, "run", lambda self: ran.update(out=self.out, final=self.final) or {})
    run_demo(user_cwd / "link", DemoSettings(), force=True, console=Console(file=io.StringIO()))
    # the run is staged beside the link's target folder, then replaces it
    assert ran["final"] == target.resolve() and ran["out"].parent == target.resolve().parent
    assert target.is_dir() and not (target / "old.txt").exists() and not ran["out"].exists()
    assert (user_cwd / "link").is_symlink() and (user_cwd / "keep.txt").read_text() == "user data"
