"""`edgeattn demo`'s output folder: ``--force`` replaces it only once the new run has ended (a stopped or crashed
run leaves it byte for byte as it was), no staging folder is left behind, summary.json's paths are relative to the
folder, and a Ctrl-C that a library turned into its own error still ends the demo with exit code 130. The steps
are stubbed, so these run in seconds."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from edgeattn.cli import main
from edgeattn.demo import Demo, DemoInterrupted, DemoSettings, run_demo
from edgeattn.errors import EdgeAttnError

QUIET = Console(file=io.StringIO())


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def old_output(parent: Path) -> Path:
    """A previous demo's output, ``parent/d``, with a nested file and a binary one."""
    out = parent / "d"
    (out / "export" / "onnx_fp32").mkdir(parents=True)
    (out / "summary.json").write_text('{"train": {"status": "ok"}}\n')
    (out / "report.md").write_text("# the good old report\n")
    (out / "export" / "onnx_fp32" / "model.onnx").write_bytes(bytes(range(256)))
    return out


def stub_steps(monkeypatch: pytest.MonkeyPatch, train=None, export=None) -> None:
    """Replace every step's work: train writes a checkpoint, export (unless given) an artifact and a trtexec line;
    qat/profile/hls return small figures."""

    def fake_train(self: Demo) -> dict[str, Any]:
        ckpt = self.out / "train" / "fp.pt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"new checkpoint")
        # the trainer's own record, with an absolute path (written under the staging folder)
        (ckpt.parent / "result.json").write_text(json.dumps({"path": str(ckpt), "note": f"saved '{ckpt}'"}))
        return {"fp_checkpoint": str(ckpt)}

    def fake_export(self: Demo) -> dict[str, Any]:
        onnx = self.out / "export" / "tensorrt_int8" / "model.onnx"
        onnx.parent.mkdir(parents=True)
        onnx.write_bytes(b"new onnx")
        report = {"artifacts": {"onnx": str(onnx)}, "parity": [], "trtexec": f"trtexec --onnx={onnx} --int8"}
        return {"artifacts": [{"name": "tensorrt_int8", "target": "tensorrt", "profile": "jetson-orin-trt10",
                               "status": "passed", "report": report, "artifact": str(onnx)}]}

    monkeypatch.setattr(Demo, "train", train or fake_train)
    monkeypatch.setattr(Demo, "qat", lambda self: {"checkpoint": self.results["train"].data["fp_checkpoint"]})
    monkeypatch.setattr(Demo, "export", export or fake_export)
    monkeypatch.setattr(Demo, "profile", lambda self: {"rows": [], "plots": []})
    monkeypatch.setattr(Demo, "hls", lambda self: {})
    monkeypatch.setattr(Demo, "_approx_plot", lambda self: setattr(self, "approx", None))
    monkeypatch.setattr("edgeattn.demo._accuracy_section", lambda rep, r: None)  # the stubs hold no figures


def leftovers(parent: Path) -> list[str]:
    """Hidden staging / old folders beside the output."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------------------- --force staging
def test_force_run_replaces_the_old_output_only_at_its_end_and_leaves_no_staging(tmp_path, monkeypatch):
    out = old_output(tmp_path)
    seen: dict[str, Any] = {}

    def train_seeing_the_old_output(self: Demo) -> dict[str, Any]:
        seen["old report during the run"] = (out / "report.md").read_text()
        seen["staging"] = self.out
        return {"fp_checkpoint": "/elsewhere/fp.pt"}

    stub_steps(monkeypatch, train=train_seeing_the_old_output)
    assert main(["demo", "-o", str(out), "--force", "--fast"]) == 0
    assert seen["old report during the run"] == "# the good old report\n"
    assert seen["staging"].parent == tmp_path and seen["staging"] != out
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert not (out / "export" / "onnx_fp32").exists()  # replaced as a whole, not merged
    assert json.loads((out / "summary.json").read_text())["train"]["status"] == "ok"


def test_ctrl_c_during_a_force_run_keeps_the_old_output_and_the_partial_run_beside_it(tmp_path, monkeypatch,
                                                                                      capsys):
    out = old_output(tmp_path)
    before = snapshot(out)

    def interrupted_export(self: Demo) -> dict[str, Any]:
        raise KeyboardInterrupt

    stub_steps(monkeypatch, export=interrupted_export)
    assert main(["demo", "-o", str(out), "--force", "--fast"]) == 130
    assert snapshot(out) == before  # byte for byte
    partial = [p for p in tmp_path.iterdir() if p.name.startswith("d.partial-")]
    assert len(partial) == 1 and leftovers(tmp_path) == []
    summary = json.loads((partial[0] / "summary.json").read_text())
    assert json.loads((partial[0] / "train" / "result.json").read_text())["path"] == str(partial[0] / "train/fp.pt")
    assert {n: s["status"] for n, s in summary.items()} == {"train": "ok", "qat": "ok", "export": "interrupted",
                                                           "report": "ok"}
    assert (partial[0] / summary["train"]["data"]["fp_checkpoint"]).read_bytes() == b"new checkpoint"
    err = " ".join(capsys.readouterr().err.split())
    assert f"the previous output in {out} is unchanged" in err
    assert f"{partial[0] / 'report.md'} and summary.json say which steps ran" in err


def test_a_crashing_force_run_keeps_the_old_output(tmp_path, monkeypatch):
    out = old_output(tmp_path)
    before = snapshot(out)
    stub_steps(monkeypatch)

    def disk_full(self: Demo) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Demo, "_write_summary", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_demo(out, DemoSettings.fast(), force=True, console=QUIET)
    assert snapshot(out) == before
    partial = [p.name for p in tmp_path.iterdir() if p.name.startswith("d.partial-")]
    assert len(partial) == 1 and leftovers(tmp_path) == []


def test_an_interrupted_first_run_becomes_the_output_folder(tmp_path, monkeypatch):
    # nothing to protect: the partial run is published where the user looks for it
    stub_steps(monkeypatch, export=lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(DemoInterrupted) as info:
        run_demo(tmp_path / "d", DemoSettings.fast(), console=QUIET)
    assert info.value.where == (tmp_path / "d").resolve() and not info.value.kept_aside
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["export"]["status"] == "interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


# ---------------------------------------------------------------------------------------------- summary paths
def test_summary_paths_are_relative_to_the_output_folder_and_resolve(tmp_path, monkeypatch):
    outside = tmp_path / "shared" / "teacher.pt"  # a path outside the output folder stays absolute
    stub_steps(monkeypatch)
    monkeypatch.setattr(Demo, "hls", lambda self: {"project": str(self.out / "hls_prj"), "teacher": str(outside),
                                                   "csim": {}})
    out = tmp_path / "d"
    results = run_demo(out, DemoSettings.fast(), console=QUIET)
    summary = json.loads((out / "summary.json").read_text())

    assert summary["train"]["data"]["fp_checkpoint"] == "train/fp.pt"
    assert (out / "train" / "fp.pt").read_bytes() == b"new checkpoint"
    art = summary["export"]["data"]["artifacts"][0]
    assert art["artifact"] == art["report"]["artifacts"]["onnx"] == "export/tensorrt_int8/model.onnx"
    assert (out / art["artifact"]).read_bytes() == b"new onnx"
    assert summary["report"]["data"]["markdown"] == "report.md" and (out / "report.md").is_file()
    assert summary["report"]["data"]["html"] == "report.html" and (out / "report.html").is_file()
    assert summary["hls"]["data"]["project"] == "hls_prj"
    assert summary["hls"]["data"]["teacher"] == str(outside)
    # a command line keeps an absolute path, the final folder's, never the staging folder's
    trtexec = f"trtexec --onnx={out.resolve()}/export/tensorrt_int8/model.onnx --int8"
    assert art["report"]["trtexec"] == trtexec
    report = (out / "report.md").read_text()
    assert trtexec in report and ".tmp-" not in report and ".tmp-" not in (out / "summary.json").read_text()
    # the tools' own JSON records name the files where they are now, not in the staging folder
    final_ckpt = str(out.resolve() / "train" / "fp.pt")
    assert json.loads((out / "train" / "result.json").read_text()) == {"path": final_ckpt,
                                                                       "note": f"saved '{final_ckpt}'"}
    # what run_demo returns names files where they ended up
    assert results["train"].data["fp_checkpoint"] == str(out.resolve() / "train" / "fp.pt")


# ---------------------------------------------------------------------------------------------- swallowed Ctrl-C
@pytest.mark.parametrize("how", ["signal", "chain"])
def test_ctrl_c_that_a_library_turns_into_an_export_error_ends_the_demo_with_130(tmp_path, monkeypatch, capsys,
                                                                                 request, how):
    """``signal``: a library catches the KeyboardInterrupt and raises its own error with no trace of it (only the
    demo's SIGINT count tells); ``chain``: it raises its error while handling the KeyboardInterrupt."""
    from edgeattn import export as export_pkg

    # Python's own Ctrl-C handler, as in a terminal (pytest-xdist workers ignore SIGINT, and so does the demo then)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))

    calls: list[str] = []

    def swallowing_export(ckpt, target, profile, out_dir, precision, **kw):
        calls.append(f"{target}/{precision}")
        if how == "signal":
            try:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: Python's handler raises KeyboardInterrupt here
                time.sleep(5)
            except BaseException:  # noqa: S110 - the library under simulation swallows it
                pass
            raise EdgeAttnError("openvino: OpenVINO worker died", exit_code=5)
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise EdgeAttnError("ONNX export of FMViT failed: interrupted", exit_code=5) from None

    stub_steps(monkeypatch, export=Demo.export)  # the real export step, around the fake exporter
    monkeypatch.setattr(export_pkg, "export_model", swallowing_export)
    monkeypatch.setattr(Demo, "profile", lambda self: pytest.fail("the demo went on after Ctrl-C"))
    handler = signal.getsignal(signal.SIGINT)

    out = tmp_path / "d"
    assert main(["demo", "-o", str(out), "--fast"]) == 130
    assert calls == ["onnx/fp32"]  # stopped at once, not after the other five artifacts
    assert "interrupted" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["export"]["status"] == "interrupted" and "profile" not in summary
    assert signal.getsignal(signal.SIGINT) is handler  # the demo's counting handler is removed again
