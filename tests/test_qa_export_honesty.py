"""QA sweep: export says what it did not do.

Core ML refuses the flags it does not honour (no ONNX, a static batch), says on the console and in ``notes`` that
Core ML itself never ran off macOS, and a TensorRT lint error names target, node and profile and keeps every
finding in report.json (and ``--json``) instead of removing the output folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from edgeattn.export import api
from edgeattn.export.lint import LintFinding
from edgeattn.export.report import ExportReport, LintFailure, ParityFailure

from edgeattn.cli import main
from edgeattn.errors import EdgeAttnError

PROFILES = Path(__file__).resolve().parents[1] / "profiles"
COREML_NOTE = (
    "coreml runs only on macOS: Core ML itself did not run here; the parity gate used the numpy MIL reference "
    "evaluator of the saved mlprogram, and on-device numeric parity awaits a macOS run"
)


class WorkStarted(Exception):
    """Raised in place of the model's resolution: the export got past its argument checks."""


def _no_work(*args, **kwargs):
    raise WorkStarted


def _profile_copy(tmp_path: Path, name: str, section: str, key: str, value) -> Path:
    """A copy of ``profiles/<name>.yaml`` with ``section.key`` set to ``value``."""
    data = yaml.safe_load((PROFILES / f"{name}.yaml").read_text())
    data[section][key] = value
    path = tmp_path / f"{name}-edited.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------------------ Core ML: flags it does not honour
@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (
            ["--dynamic-batch"],
            "error: --dynamic-batch does not apply to --target coreml (a static batch; set it with --batch)",
        ),
        (["--opset", "17"], "error: --opset applies to --target onnx, tensorrt or openvino only, not coreml"),
        (
            ["--exporter", "dynamo"],
            "error: --exporter dynamo applies to --target onnx, tensorrt or openvino only, not coreml",
        ),
    ],
)
def test_coreml_refuses_flags_it_does_not_honour(tmp_path, capsys, monkeypatch, flags, line):
    # old code: the flags were dropped silently and the run went on (here: to the model's resolution)
    monkeypatch.setattr("edgeattn.export.api.resolve_model", _no_work)
    out = tmp_path / "o"
    args = ["export", "tiny_llama", "-t", "coreml", "-p", "apple-a17-coreml", "-o", str(out), "--n-inputs", "4"]
    code = main([*args, *flags])
    err = capsys.readouterr().err
    assert (code, err.strip().splitlines()) == (2, [line])
    assert not out.exists()


def test_export_all_gives_coreml_no_onnx_settings(tmp_path, monkeypatch):
    """Several targets: the ONNX-only settings go to the ONNX targets, Core ML runs without them; Core ML alone
    refuses them like export_model."""
    seen: dict[str, dict] = {}

    def record(model, target, profile, out, **kw):
        seen[target] = {k: kw.get(k) for k in ("opset", "exporter", "dynamic_batch")}
        return ExportReport(model=model, target=target, precision="fp32", profile={}, out_dir=str(out))

    monkeypatch.setattr(api, "export_model", record)
    onnx_only = {"opset": 17, "exporter": "dynamo", "dynamic_batch": True}
    api.export_all("tiny_llama", tmp_path / "a", ["onnx", "coreml"], n_inputs=4, **onnx_only)
    assert seen == {
        "onnx": {"opset": 17, "exporter": "dynamo", "dynamic_batch": True},
        "coreml": {"opset": None, "exporter": "torchscript", "dynamic_batch": False},
    }
    with pytest.raises(EdgeAttnError, match=r"^--opset applies to --target onnx, tensorrt or openvino only, not core"):
        api.export_all("tiny_llama", tmp_path / "b", ["coreml"], opset=17, n_inputs=4)


# ------------------------------------------------------------------------------ Core ML: the stand-in is named
def test_coreml_says_core_ml_itself_did_not_run(tmp_path, capsys, monkeypatch):
    from edgeattn.export import coreml_target

    monkeypatch.setattr(coreml_target, "coreml_prediction_available", lambda: False)  # as on any non-macOS host
    prof = _profile_copy(tmp_path, "apple-a17-coreml", "export", "dynamic_batch", True)
    out = tmp_path / "cm"
    code = main(["export", "tiny_llama", "-t", "coreml", "-p", str(prof), "-o", str(out), "--n-inputs=4", "--batch=2"])
    stdout = capsys.readouterr().out
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    dyn_note = "the profile's dynamic_batch does not apply to Core ML: a static batch of 2"
    assert report["notes"] == [dyn_note, COREML_NOTE]
    assert stdout.count(COREML_NOTE) == 1  # the console line
    assert report["settings"]["batch"] == 2 and report["settings"]["dynamic_batch"] is False
    assert report["inputs"][0]["shape"] == [2, 128]
    gate = report["parity"][0]
    assert gate["runtime"] == "coreml-mil-reference" and gate["passed"]
    assert gate["cosine"] > 0.9999  # FP16 compute of a tiny float model against the float32 torch reference


# ------------------------------------------------------------------------------ TensorRT: lint errors are kept
def test_tensorrt_lint_error_names_node_and_profile_and_keeps_every_finding(tmp_path, capsys):
    # brevitas' default unsigned softmax output: one QuantizeLinear + one DequantizeLinear per attention block,
    # 4 blocks in tiny_llama -> 8 errors (old code: exit 5, "(+7 more)", output folder removed, no node/profile)
    prof = _profile_copy(tmp_path, "jetson-orin-trt10", "quant", "softmax_signed", False)
    out, summary = tmp_path / "trt", tmp_path / "summary.json"
    code = main(
        ["export", "tiny_llama", "-t", "tensorrt", "-p", str(prof), "-o", str(out), "--n-inputs=4", f"--json={summary}"]
    )
    captured = capsys.readouterr()
    node0 = "/blocks/blocks.0/attn/attn_quant/act_quant/export_handler/QuantizeLinear"
    msg = (
        "unsigned int8 (uint8 zero point) is not allowed inside a TensorRT graph; use signed int8 "
        "(quant.act_signed / quant.softmax_signed)"
    )
    assert code == 5
    assert captured.err.strip().splitlines() == [
        f"error: tensorrt: {msg} [unsigned] at node {node0} (QuantizeLinear), profile 'jetson-orin-trt10' (+7 more); "
        f"every finding in {out / 'report.json'} (lint)"
    ]
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]  # the report, no artifact TensorRT rejects
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging folder left
    report = json.loads((out / "report.json").read_text())
    assert json.loads(summary.read_text()) == report
    assert report["passed"] is False and report["artifacts"] == {}
    expected = [
        (f"/blocks/blocks.{b}/attn/attn_quant/act_quant/export_handler/{op}", op)
        for b in range(4)
        for op in ("QuantizeLinear", "DequantizeLinear")
    ]
    errors = [f for f in report["lint"] if f["severity"] == "error"]
    assert [(f["rule"], f["node"], f["op_type"]) for f in errors] == [("unsigned", *e) for e in expected]
    notes = [n for n in report["notes"] if n.startswith("tensorrt lint error")]
    assert notes == [
        f"tensorrt lint error (unsigned): {msg} at node {node} ({op}), profile 'jetson-orin-trt10'"
        for node, op in expected
    ]
    assert " ".join(captured.out.split()).count("tensorrt lint error (unsigned):") == 8  # printed, [..] not eaten
    assert report["parity"][0]["runtime"] == "onnxruntime-noopt"  # the ONNX itself matched torch


def test_lint_line_names_each_thing_once():
    f = LintFinding("zero-point", "error", "n1", "QuantizeLinear", "zero point must be 0")
    assert f.line("p") == "zero point must be 0 [zero-point] at node n1 (QuantizeLinear), profile 'p'"
    msg = "op Foo (node n2) is not supported (profile 'p', TensorRT 10.x)"
    op = LintFinding("op-support", "error", "n2", "Foo", msg)
    assert op.line("p") == "op Foo (node n2) is not supported (profile 'p', TensorRT 10.x) [op-support]"
    assert f.line("p", rule=False) == "zero point must be 0 at node n1 (QuantizeLinear), profile 'p'"


def test_export_all_keeps_the_lint_exit_code(tmp_path, monkeypatch):
    def lint_fails(model, target, profile, out, **kw):
        report = ExportReport(model=model, target=target, precision="int8", profile={}, out_dir=str(out))
        if target == "tensorrt":
            raise LintFailure("tensorrt: bad", report)
        return report

    monkeypatch.setattr(api, "export_model", lint_fails)
    with pytest.raises(ParityFailure, match=r"^1 of 2 targets failed their gates; first: tensorrt: bad$") as exc:
        api.export_all("tiny_llama", tmp_path, ["onnx", "tensorrt"], n_inputs=4)
    assert exc.value.exit_code == 5 and set(exc.value.reports) == {"onnx", "tensorrt"}
