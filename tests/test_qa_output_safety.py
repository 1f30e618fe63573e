"""No command overwrites its own inputs; one rule for an output file that exists; nothing left behind.

- ``--json``/``--plot`` naming an input (data, config, checkpoint, profiled artifact and its sidecars) is refused,
  with or without ``--force``: exit 2, one ``error:`` line, the input's bytes unchanged.
- ``--json`` onto an existing file needs ``--force`` in every command.
- a read-only parent of ``-o`` is named in the user's words, not by an internal temporary folder.
- SIGTERM unwinds like Ctrl-C: exit 130 and no hidden ``.NAME.tmp-*`` folder left.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeattn.cli import main

EXPORT = ["-t", "onnx", "-p", "host-cpu"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(capsys, argv: list[str], *protected: Path) -> str:
    """Run ``argv``; assert exit 2, one ``error:`` line, and ``protected`` byte for byte unchanged; the line."""
    before = [_digest(p) for p in protected]
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert [_digest(p) for p in protected] == before
    return lines[0]


@pytest.fixture
def text_data(tmp_path) -> Path:
    data = tmp_path / "data_copy.txt"
    data.write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    return data


# ---------------------------------------------------------------------------------------------- D1: qat inputs
def test_qat_json_may_not_replace_its_data_config_or_fp_checkpoint(tmp_path, capsys, text_data):
    base = ["qat", "--model", "tiny_llama", "--data", str(text_data), "--epochs", "0", "--fp-epochs", "0"]
    out = ["-o", str(tmp_path / "run")]
    line = _refused(capsys, [*base, *out, "--json", str(text_data)], text_data)
    assert line == f"error: --json '{text_data}' would overwrite the input '{text_data}'; write it elsewhere"
    _refused(capsys, [*base, *out, "--json", str(text_data), "--force"], text_data)  # --force is not for inputs

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("epochs: 0\n")
    assert "the input" in _refused(capsys, [*base, *out, "--config", str(cfg), "--json", str(cfg)], cfg)

    ckpt = tmp_path / "fp.pt"
    ckpt.write_bytes(b"not read before the refusal")
    argv = [*base, *out, "--fp-checkpoint", str(ckpt), "--json", str(ckpt)]
    assert "the input" in _refused(capsys, argv, ckpt)


def test_qat_json_may_not_land_inside_an_image_folder(tmp_path, capsys):
    images = tmp_path / "imgs"
    (images / "cat").mkdir(parents=True)
    argv = ["qat", "--model", "vit_tiny", "--data", str(images), "-o", str(tmp_path / "run")]
    line = _refused(capsys, [*argv, "--json", str(images / "cat" / "r.json")])
    assert f"would overwrite the input '{images}'" in line
    assert sorted(p.name for p in images.rglob("*")) == ["cat"]


# ---------------------------------------------------------------------------------------------- D2: export
def test_export_json_may_not_replace_the_checkpoint_or_land_in_the_output(tmp_path, capsys):
    run = tmp_path / "o_e0"
    run.mkdir()
    model, result = run / "model.pt", run / "result.json"
    model.write_bytes(b"checkpoint bytes")
    result.write_text('{"model": "tiny_llama"}\n')
    out = tmp_path / "x_j"
    for target in (model, result):  # the checkpoint, and the qat run's file beside it
        argv = ["export", str(model), *EXPORT, "-o", str(out), "--json", str(target), "--force"]
        assert "would overwrite the input" in _refused(capsys, argv, model, result)
    argv = ["export", "mobilenetv2", *EXPORT, "-o", str(out), "--checkpoint", str(model), "--json", str(model)]
    _refused(capsys, argv, model)
    line = _refused(capsys, ["export", "mobilenetv2", *EXPORT, "-o", str(out), "--json", str(out / "r.json")])
    assert line == f"error: --json '{out / 'r.json'}' is inside the output folder '{out}'; write it elsewhere"
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- D3: profile
def _onnx_with_external_data(folder: Path) -> tuple[Path, Path]:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [w],
    )
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph), str(path), save_as_external_data=True, location="weights.dat",
              size_threshold=0)  # fmt: skip
    return path, folder / "weights.dat"


def test_profile_outputs_may_not_replace_the_artifact_or_its_sidecars(tmp_path, capsys):
    onnx_path, data = _onnx_with_external_data(tmp_path)
    xml, bin_ = tmp_path / "m.xml", tmp_path / "m.bin"
    xml.write_text("<net/>")
    bin_.write_bytes(b"\0" * 64)
    files = (onnx_path, data, xml, bin_)
    for art, target in ((onnx_path, onnx_path), (onnx_path, data), (xml, xml), (xml, bin_)):
        for flag in ("--json", "--plot"):
            argv = ["profile", str(art), "-n", "5", flag, str(target), "--force"]
            line = _refused(capsys, argv, *files)
            assert "would overwrite the input" in line, line


# ---------------------------------------------------------------------------------------------- hls inputs, seed
def test_hls_json_may_not_replace_the_checkpoint_or_profile(tmp_path, capsys):
    ckpt, prof = tmp_path / "w.pt", tmp_path / "prof.yaml"
    ckpt.write_bytes(b"weights")
    prof.write_text("name: mine\n")
    prj = str(tmp_path / "prj")
    argv = ["hls", "edge_moe_vit", "-o", prj, "--checkpoint", str(ckpt), "--json", str(ckpt), "--force"]
    assert "would overwrite the input" in _refused(capsys, argv, ckpt)
    argv = ["hls", "edge_moe_vit", "-o", prj, "-p", str(prof), "--json", str(prof), "--force"]
    assert "would overwrite the input" in _refused(capsys, argv, prof)
    metrics = tmp_path / "metrics.json"  # the qat run's file beside its checkpoint
    metrics.write_text('{"history": []}\n')
    argv = ["hls", "edge_moe_vit", "-o", prj, "--checkpoint", str(ckpt), "--json", str(metrics), "--force"]
    assert "would overwrite the input" in _refused(capsys, argv, ckpt, metrics)


def test_hls_refuses_a_negative_seed(tmp_path, capsys):
    line = _refused(capsys, ["hls", "edge_moe_vit", "-o", str(tmp_path / "p"), "--seed", "-1"])
    assert line == "error: --seed must be between 0 and 4294967295, got -1"
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------------------------------------- D7: one rule
@pytest.mark.parametrize(
    "argv",
    [
        ["qat", "--model", "vit_tiny", "--epochs", "0", "--fp-epochs", "0", "-o", "{tmp}/run"],
        ["export", "mobilenetv2", *EXPORT, "--img-size", "32", "-o", "{tmp}/ex"],
        ["hls", "edge_moe_vit", "-o", "{tmp}/prj"],
        ["profile", "{tmp}/missing.onnx"],
        ["approx", "report"],
    ],
    ids=["qat", "export", "hls", "profile", "approx"],
)
def test_json_onto_an_existing_file_needs_force_everywhere(tmp_path, capsys, argv):
    old = tmp_path / "old.json"
    old.write_text('{"kept": true}\n')
    argv = [a.format(tmp=tmp_path) for a in argv]
    line = _refused(capsys, [*argv, "--json", str(old)], old)
    assert line == f"error: --json '{old}' exists; pass --force to overwrite it"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]  # nothing else written


def test_hls_json_with_force_replaces_the_old_file(tmp_path, capsys):
    old = tmp_path / "old.json"
    old.write_text('{"kept": true}\n')
    assert main(["hls", "edge_moe_vit", "-o", str(tmp_path / "prj"), "--vectors", "1", "--json", str(old),
                 "--force"]) == 0  # fmt: skip
    assert '"kept"' not in old.read_text() and (tmp_path / "prj" / "project.json").is_file()


# ---------------------------------------------------------------------------------------------- D9: read-only parent
@pytest.fixture
def immutable_dir(tmp_path):
    """A folder no one may create files in, root included (``chattr +i``), made mutable again afterwards."""
    if shutil.which("chattr") is None or os.geteuid() != 0:
        pytest.skip("needs root and chattr to make a folder read-only for root")
    ro = tmp_path / "RO"
    ro.mkdir()
    if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem does not support chattr +i")
    yield ro
    subprocess.run(["chattr", "-i", str(ro)], check=True)


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["export", "mobilenetv2", *EXPORT, "--img-size", "32"], "ex"),
        (["hls", "edge_moe_vit"], "hls"),
    ],
    ids=["export", "hls"],
)
def test_read_only_parent_is_named_in_the_users_words(immutable_dir, capsys, argv, name):
    out = immutable_dir / name
    line = _refused(capsys, [*argv, "-o", str(out)])
    # the words of `edgeattn qat` and `edgeattn profile` (os.access tells for an immutable folder, root included)
    assert line == f"error: output folder '{out}': folder '{immutable_dir}' is not writable", line
    assert ".tmp-" not in line and list(immutable_dir.iterdir()) == []


def test_staging_dir_checks_the_parent_first(immutable_dir):
    from edgeattn.atomic import make_staging_dir, staging_dir
    from edgeattn.errors import EdgeAttnError

    words = r"^output folder '.*/RO/x': folder '.*/RO' is not writable$"
    with pytest.raises(EdgeAttnError, match=words):
        make_staging_dir(immutable_dir / "x")
    with pytest.raises(EdgeAttnError, match=words), staging_dir(immutable_dir / "x"):
        pass


# ---------------------------------------------------------------------------------------------- D10: SIGTERM
def test_sigterm_during_export_exits_130_and_leaves_no_staging_folder(tmp_path):
    out = tmp_path / "ex"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    run_cli = "import sys; from edgeattn.cli import main; sys.exit(main())"
    cmd = [sys.executable, "-c", run_cli, "export", "mobilenetv2", *EXPORT, "--img-size", "32",
           "--n-inputs", "2", "-o", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob(".ex.tmp-*")):  # the export is under way in its staging folder
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "the export never started staging"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode()
    assert rc == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no hidden .ex.tmp-*, no half-written ex


def test_sigterm_acts_as_ctrl_c_and_the_old_handler_comes_back():
    from edgeattn.cli._common import sigterm_as_interrupt

    old = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is old
