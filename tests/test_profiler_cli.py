"""`edgeattn profile` through the CLI entry: reports, JSON/plot output, --list-devices, bad input, Ctrl-C."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _profiler_models import conv_stack, to_openvino_ir

from edgeattn.cli import main
from edgeattn.errors import EdgeAttnError
from edgeattn.profile import ProfileReport, measure, profile_artifacts
from edgeattn.profile.runners import Runner

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_artifacts")
    conv_stack(d / "small.onnx", size=16, ch=16, n=2)
    to_openvino_ir(d / "small.onnx", d / "small.xml")
    return d


def test_profile_two_artifacts_writes_json_and_plot(art, tmp_path, capsys):
    out, png = tmp_path / "r" / "lat.json", tmp_path / "lat.png"
    rc = main(
        [
            "profile",
            str(art / "small.onnx"),
            str(art / "small.xml"),
            "--threads",
            "1",
            "--warmup",
            "2",
            "--iters",
            "8",
            "--per-layer",
            "--layer-runs",
            "3",
            "--json",
            str(out),
            "--plot",
            str(png),
        ]
    )
    assert rc == 0
    report = ProfileReport.model_validate(json.loads(out.read_text()))
    assert [r.runtime for r in report.results] == ["onnxruntime", "openvino"]
    assert report.interleaved and not report.interrupted
    assert all(r.latency.count == 8 and r.layers and r.layers.runs == 3 for r in report.results)
    assert report.results[0].ratio_to_first == 1.0
    assert report.results[1].ratio_to_first == pytest.approx(
        report.results[1].latency.p50_ms / report.results[0].latency.p50_ms
    )
    assert report.system.cpu_model and report.system.runtimes["openvino"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # no temp files left behind: the atomic writers' temp files are hidden (".lat.png.<random>.png"),
    # beside each output, and the JSON is in a subfolder
    assert not [p.relative_to(tmp_path) for p in tmp_path.rglob(".*")]
    text = capsys.readouterr().out
    assert "small.onnx" in text and "p50" in text and "GMAC/s" in text


def test_list_devices(tmp_path, capsys):
    out = tmp_path / "dev.json"
    assert main(["profile", "--list-devices", "--json", str(out)]) == 0
    rows = {r["runtime"]: r for r in json.loads(out.read_text())["runtimes"]}
    assert "CPU" in rows["onnxruntime"]["devices"] and "CPU" in rows["openvino"]["devices"]
    assert set(rows) == {"onnxruntime", "openvino", "tensorrt", "coreml"}
    assert "onnxruntime" in capsys.readouterr().out


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("make", "args", "code", "needle"),
    [
        (None, ["missing.onnx"], 2, "artifact not found"),
        ("garbage.onnx", [], 2, "cannot load"),
        ("garbage.xml", [], 2, "no weights file"),
        ("model.txt", [], 2, "cannot tell the runtime"),
        ("small.onnx", ["--device", "GPU"], 2, "it has: CPU"),
        ("small.xml", ["--device", "NPU"], 2, "it has: CPU"),
        ("small.onnx", ["--batch", "4"], 2, "fixed batch of 1"),
        ("small.onnx", ["--shape", "x=1x3x20x20"], 2, "cannot take input 'x' of shape [1, 3, 20, 20]"),
        ("small.onnx", ["--shape", "nonsense"], 2, "--shape"),
        (
            "small.onnx",
            ["--shape", "input=1x3x16x16"],
            2,
            "--shape names 'input', which is not an input; the artifact's inputs: x",
        ),
        (
            "small.onnx",
            ["--shape", "a=1", "--shape", "b=2"],
            2,
            "--shape names 'a', 'b', which are not inputs; the artifact's inputs: x",
        ),
        ("small.onnx", ["--iters", "3", "--seconds", "1"], 2, "not both"),
        ("small.onnx", ["--runtime", "tflite"], 2, "--runtime 'tflite' is not known"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(art, tmp_path, capsys, make, args, code, needle):
    if make is None:
        target = tmp_path / args.pop(0)
    elif (art / make).exists():
        target = art / make
    else:
        target = tmp_path / make
        target.write_bytes(b"\x00not a model\xff" * 8)
    rc = main(["profile", str(target), "--iters", "2", "--warmup", "0", *args])
    assert rc == code
    assert needle in _err(capsys)


def _no_loading(*args, **kwargs):
    raise AssertionError("a model was loaded before the settings were checked")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--seconds", "nan"], "--seconds must be a finite number > 0, got nan"),
        (["--seconds", "inf"], "--seconds must be a finite number > 0, got inf"),
        (["--seconds", "-1"], "--seconds must be a finite number > 0, got -1"),
        (["--per-layer", "--layer-runs", "-1"], "--layer-runs must be >= 1, got -1"),
        (["--per-layer", "--layer-runs", "0"], "--layer-runs must be >= 1, got 0"),
        (["--hint", "bogus"], "--hint 'bogus' is not known; choose latency, throughput, none"),
        (["--infer-precision", "f64"], "--infer-precision 'f64' is not known; choose f32, bf16, f16"),
        (["--iters", "0"], "--iters must be >= 1, got 0"),
        (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
        (["--batch", "0"], "--batch must be >= 1, got 0"),
        (["--threads", "-2"], "--threads must be >= 1, got -2"),
        (["--shape", "x=0x3"], "--shape 'x=0x3' is not NAME=D0xD1x... with dimensions >= 1"),
    ],
)
def test_bad_settings_fail_before_any_model_loads(tmp_path, monkeypatch, capsys, args, needle):
    # an ONNX artifact: --hint/--infer-precision are OpenVINO's, but a typo must not pass unnoticed
    monkeypatch.setattr(measure, "open_runner", _no_loading)
    rc = main(["profile", str(tmp_path / "m.onnx"), *args])
    assert rc == 2
    assert needle in _err(capsys)


def test_bad_settings_are_refused_by_the_python_api(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "open_runner", _no_loading)
    with pytest.raises(EdgeAttnError, match="--seconds must be a finite number"):
        profile_artifacts([tmp_path / "m.onnx"], seconds=math.nan)
    with pytest.raises(EdgeAttnError, match="--layer-runs must be >= 1"):
        profile_artifacts([tmp_path / "m.onnx"], per_layer=True, layer_runs=0)
    with pytest.raises(EdgeAttnError, match="--hint 'bogus'"):
        profile_artifacts([tmp_path / "m.onnx"], hint="bogus")
    with pytest.raises(EdgeAttnError, match="--infer-precision 'f64'"):
        profile_artifacts([tmp_path / "m.onnx"], infer_precision="f64")


def test_openvino_options_are_refused_where_no_artifact_runs_in_openvino(art, monkeypatch, capsys):
    """--hint throughput --infer-precision f16 on an ONNX Runtime artifact ran plain fp32 ONNX Runtime and recorded
    both as the run's settings."""
    for args, given in (
        (["--infer-precision", "f16"], "--infer-precision f16 applies"),
        (["--hint", "throughput", "--infer-precision", "f16"], "--hint throughput and --infer-precision f16 apply"),
    ):
        monkeypatch.setattr(measure, "open_runner", _no_loading)
        assert main(["profile", str(art / "small.onnx"), *args]) == 2
        assert _err(capsys) == f"error: {given} to OpenVINO artifacts (.xml), and none of these runs in OpenVINO"
    monkeypatch.undo()
    onnx_only = profile_artifacts([art / "small.onnx"], warmup=0, iters=2, threads=1)
    assert (onnx_only.settings["hint"], onnx_only.settings["infer_precision"]) == (None, None)
    both = profile_artifacts([art / "small.onnx", art / "small.xml"], warmup=0, iters=2, threads=1, hint="none")
    assert both.settings["hint"] == "none"  # applied to the .xml


def test_every_artifact_is_checked_before_the_first_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "open_runner", _no_loading)
    (tmp_path / "a.onnx").touch()
    with pytest.raises(EdgeAttnError, match="artifact not found: .*b.onnx"):
        profile_artifacts([tmp_path / "a.onnx", tmp_path / "b.onnx"])


def test_json_under_a_regular_file_fails_before_measuring(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(measure, "open_runner", _no_loading)
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for flag, name in (("--json", "x.json"), ("--plot", "x.png")):
        rc = main(["profile", str(tmp_path / "m.onnx"), flag, str(afile / "sub" / name)])
        assert rc == 2
        assert f"'{afile}' is not a folder" in _err(capsys)
    assert afile.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_json_in_a_read_only_folder_fails_before_measuring(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(measure, "open_runner", _no_loading)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["profile", str(tmp_path / "m.onnx"), "--json", str(ro / "new" / "x.json")]) == 2
        assert f"folder '{ro}' is not writable" in _err(capsys)
    finally:
        ro.chmod(0o700)


def test_read_only_folder_check_uses_os_access(tmp_path, monkeypatch, capsys):
    # the same check where the tests run as root (which may write anywhere): the folder reads as not writable
    monkeypatch.setattr(measure, "open_runner", _no_loading)
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real_access(p, mode))
    assert main(["profile", str(tmp_path / "m.onnx"), "--plot", str(ro / "x.png")]) == 2
    assert f"folder '{ro}' is not writable" in _err(capsys)
    assert not (ro / "x.png").exists()


def test_list_devices_with_artifacts_is_refused(tmp_path, monkeypatch, capsys):
    # it would list the devices and silently skip the artifacts
    monkeypatch.setattr(measure, "open_runner", _no_loading)
    assert main(["profile", "--list-devices", str(tmp_path / "m.onnx")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().startswith("error: --list-devices takes no ARTIFACT"), (out, err)
    assert len(err.strip().splitlines()) == 1


def test_list_devices_json_under_a_regular_file_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["profile", "--list-devices", "--json", str(afile / "dev.json")]) == 2
    assert "is not a folder" in _err(capsys)


def test_os_error_about_a_path_is_one_line_in_main(tmp_path, monkeypatch, capsys):
    # any command: an OSError that names a path ends as one line and exit 2, not a traceback
    import edgeattn.cli.profile as cli_profile

    def boom(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.json"))

    monkeypatch.setattr(cli_profile, "check_report_path", lambda *a, **k: None)
    monkeypatch.setattr("edgeattn.cli._common.write_json", boom)
    assert main(["profile", "--list-devices", "--json", str(tmp_path / "x.json")]) == 2
    assert _err(capsys) == f"error: cannot use '{tmp_path / 'x.json'}': Permission denied"


def test_tensorrt_engine_without_tensorrt_names_what_to_install(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here; this checks the message when it is not")
    except ImportError:
        pass
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\x00" * 64)
    assert main(["profile", str(engine)]) == 4
    assert "pip install tensorrt" in _err(capsys)


def test_coreml_on_linux_says_it_needs_macos(tmp_path, capsys):
    if platform.system() == "Darwin":
        pytest.skip("on macOS Core ML predictions run; this checks the message elsewhere")
    pytest.importorskip("coremltools")
    pkg = tmp_path / "m.mlpackage"
    pkg.mkdir()
    assert main(["profile", str(pkg)]) == 4
    assert "macOS" in _err(capsys)


def test_error_in_a_subprocess_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from edgeattn.cli import main; sys.exit(main())",
            "profile",
            str(tmp_path / "nope.xml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "artifact not found" in proc.stderr
    # checked before the progress display opens: nothing on stdout, not even the display's closing newline
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, (proc.stdout, proc.stderr)


def test_error_found_while_loading_leaves_stdout_empty(art):
    # found only once the model is loaded, inside the progress display; a display that is not on a terminal
    # is off, so it leaves no blank line in front of the error
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from edgeattn.cli import main; sys.exit(main())",
            "profile",
            str(art / "small.onnx"),
            "--batch",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "fixed batch of 1" in proc.stderr
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, (proc.stdout, proc.stderr)


class _Interrupting(Runner):
    runtime = "fake"

    def __init__(self, counter):
        super().__init__(path=None)
        self.counter, self.version, self.input_shapes = counter, "0", {"x": [1]}

    def run(self):
        self.counter.append(1)
        if len(self.counter) > 12:
            raise KeyboardInterrupt


def test_ctrl_c_prints_and_saves_partial_results(tmp_path, monkeypatch, capsys):
    counter: list[int] = []
    monkeypatch.setattr(measure, "open_runner", lambda *a, **k: _Interrupting(counter))
    out = tmp_path / "partial.json"
    (tmp_path / "a.onnx").write_bytes(b"")  # the CLI checks that the file exists; the runner is faked
    rc = main(["profile", str(tmp_path / "a.onnx"), "--warmup", "2", "--iters", "100", "--json", str(out)])
    assert rc == 130
    data = json.loads(out.read_text())
    assert data["interrupted"] is True and data["results"][0]["latency"]["count"] == 12 - 3
    assert "interrupted" in capsys.readouterr().out


def test_artifact_that_failed_its_parity_gate_is_timed_with_one_warning(art, tmp_path, capsys):
    failed = tmp_path / "model.FAILED_PARITY.onnx"
    shutil.copy(art / "small.onnx", failed)
    out = tmp_path / "r.json"
    args = ["profile", str(failed), str(art / "small.onnx"), "--threads", "1", "--warmup", "1", "--iters", "3"]
    assert main([*args, "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"warning: {failed} failed its parity gate in edgeattn export (its outputs do not match the model; see "
        "report.json beside it): timed all the same"
    ]
    report = ProfileReport.model_validate(json.loads(out.read_text()))
    assert [r.parity_failed for r in report.results] == [True, False]
    assert all(r.latency.count == 3 for r in report.results)  # timed all the same
