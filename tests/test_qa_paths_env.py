"""Where commands run: a full disk, executable outputs, non-ASCII staging paths, '~' in a config, Tcl options.

Each case was found by a QA sweep: a full disk ended in a traceback (torch's "enforce fail ... unexpected pos", or an
OSError naming no file); build/csim.exe lost its execute bit on publishing; the demo's profiler JSON kept the
deleted staging folder when the output path was not ASCII; `output_dir: ~/x` in a YAML made a folder named "~";
a mistyped build_prj.tcl option ran the whole Vitis flow."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from edgeattn.errors import EdgeAttnError


def test_a_full_disk_during_a_checkpoint_write_is_one_line(tmp_path, monkeypatch):
    import torch
    from edgeattn.quant import checkpoint

    def full(obj, f):  # what torch's zip writer raises when the disk fills
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1889152 vs 1889040")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(EdgeAttnError, match=r"^cannot write '.*x\.pt': \[enforce fail .* bytes free on its disk\)$"):
        checkpoint.atomic_torch_save({"a": 1}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []  # no temp file left


def test_a_write_error_naming_no_file_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import edgeattn.export as export_pkg

    from edgeattn.cli import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # file.write() gives no filename

    monkeypatch.setattr(export_pkg, "export_model", full)
    code = main(["export", "vit_tiny", "-t", "onnx", "-p", "host-cpu", "-o", str(tmp_path / "o"), "--img-size", "32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: cannot write the output: No space left on device (the artifacts are not published)"]


def test_publishing_keeps_an_executable_file_executable(tmp_path):
    from edgeattn.atomic import current_umask, publish_modes

    (tmp_path / "build").mkdir()
    exe, data = tmp_path / "build" / "csim.exe", tmp_path / "build" / "out.dat"
    for f in (exe, data):
        f.write_text("x")
    os.chmod(exe, 0o700)
    os.chmod(data, 0o600)
    publish_modes(tmp_path)
    mask = current_umask()
    assert stat.S_IMODE(exe.stat().st_mode) == 0o777 & ~mask and os.access(exe, os.X_OK)
    assert stat.S_IMODE(data.stat().st_mode) == 0o666 & ~mask


def test_the_demo_rebases_raw_utf8_paths_in_json(tmp_path):
    from edgeattn.demo import _rebase_files

    old, new = tmp_path / ".démo out.tmp-abc", tmp_path / "démo out"
    old.mkdir()
    (old / "raw.json").write_text(json.dumps({"artifact": f"{old}/m.xml"}, ensure_ascii=False), encoding="utf-8")
    (old / "escaped.json").write_text(json.dumps({"artifact": f"{old}/m.xml"}), encoding="utf-8")
    _rebase_files(old, old, new)
    for name in ("raw.json", "escaped.json"):
        assert json.loads((old / name).read_text(encoding="utf-8")) == {"artifact": f"{new}/m.xml"}, name


def test_a_config_home_path_is_expanded(monkeypatch, tmp_path):
    from edgeattn.quant.train import TrainConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = TrainConfig.parse({"output_dir": "~/runs/a", "fp_checkpoint": "~/fp.pt"}, "test")
    assert cfg.output_dir == str(tmp_path / "runs" / "a") and cfg.fp_checkpoint == str(tmp_path / "fp.pt")
    assert TrainConfig.parse({"output_dir": "runs/~a"}, "test").output_dir == "runs/~a"


STUBS = "".join(
    f"proc {name} {{args}} {{ puts \"{name} $args\" }}\n"
    for name in ("open_project", "set_top", "add_files", "open_solution", "set_part", "create_clock",
                 "config_interface", "csim_design", "csynth_design", "cosim_design", "export_design")
)


def _run_build_script(tmp_path: Path, argv: str) -> subprocess.CompletedProcess:
    """build_prj.tcl (placeholders filled) under tclsh with every Vitis command stubbed to print its arguments."""
    from importlib import resources

    tcl = resources.files("edgeattn.fpga_hls").joinpath("templates/build_prj.tcl").read_text(encoding="utf-8")
    script = tmp_path / "run.tcl"
    script.write_text(STUBS + tcl.replace("@PROJECT@", "p").replace("@TOP@", "t").replace("@PART@", "x")
                      .replace("@PERIOD_NS@", "3.333").replace("@MODEL@", "m"))
    return subprocess.run(["tclsh", str(script), *argv.split()], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("tclsh") is None, reason="tclsh is not installed (the Tcl check needs it)")
@pytest.mark.parametrize(
    ("argv", "code", "ran"),
    [
        ("", 0, ["csim_design", "csynth_design", "cosim_design", "export_design"]),
        ("cosim=0 export=0", 0, ["csim_design", "csynth_design"]),
        ("synth=0", 1, []),  # hls4ml's key, not ours: refused, not a full run
        ("cosim=no", 1, []),
        ("csim=1,cosim=0", 1, []),
    ],
)
def test_build_script_options(tmp_path, argv, code, ran):
    proc = _run_build_script(tmp_path, argv)
    assert proc.returncode == code, proc.stderr
    steps = [line.split()[0] for line in proc.stdout.splitlines() if line.endswith("_design") or "_design " in line]
    assert steps == ran
    if code:
        assert "unknown option" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(shutil.which("tclsh") is None, reason="tclsh is not installed (the Tcl check needs it)")
@pytest.mark.parametrize(
    ("argv", "code", "cosim"),
    [
        ("", 0, "cosim_design -argv 1"),  # cosim of a whole model takes minutes per vector: one by default
        ("cosim_vectors=3 export=0", 0, "cosim_design -argv 3"),
        ("cosim_vectors=all", 0, "cosim_design"),
        ("cosim_vectors=0", 1, None),
        ("cosim_vectors=two", 1, None),
        ("cosim_vectors", 1, None),
    ],
)
def test_build_script_cosim_vectors(tmp_path, argv, code, cosim):
    proc = _run_build_script(tmp_path, argv)
    assert proc.returncode == code, proc.stderr
    lines = [line.strip() for line in proc.stdout.splitlines() if line.startswith("cosim_design")]
    assert lines == ([cosim] if cosim else [])
    if code:
        assert "unknown option" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_second_qat_run_on_a_folder_in_use_is_refused(tmp_path):
    """Two runs on one -o (the second with --force) used to interleave: fp.pt from one, state.pt and metrics.json
    from the other, both exit 0. The running one holds a lock on the folder; the second is refused."""
    import fcntl

    from _tiny_runs import tiny_cfg
    from edgeattn.quant.train import TrainConfig, run

    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)  # what a running qat holds
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(EdgeAttnError, match="is in use by another edgeattn qat run"):
            run(TrainConfig.parse(tiny_cfg(out)), progress=False, force=True)
        assert list(out.iterdir()) == []
    finally:
        os.close(fd)
    missing = tmp_path / "new"  # a folder made for a run that then fails validation is not left behind
    with pytest.raises(ValueError, match="depth must be a positive integer"):  # refused before any training
        run(TrainConfig.parse(tiny_cfg(missing, model_kwargs={"depth": 0})), progress=False)
    assert not missing.exists()
