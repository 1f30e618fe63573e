"""`-o DIR --force` replaces DIR as a whole: a command must refuse a DIR that holds one of its own inputs.

`edgeattn export run1/fp.pt -o run1 --force` once deleted the checkpoint it had just exported (and
`-p cfg/my.yaml -o cfg --force` the profile): every input named by path is checked before any work, and the
folder and its files are left as they were.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from edgeattn.export import export_all
from edgeattn.quant.checkpoint import save_checkpoint

from edgeattn.cli import main
from edgeattn.errors import EdgeAttnError
from edgeattn.models import create_model

PROFILES = Path(__file__).resolve().parents[1] / "profiles"
FAST = ["--precision", "fp32", "--n-inputs", "2", "--force"]


def _checkpoint(path: Path) -> Path:
    kwargs = {"img_size": 32, "num_classes": 10}
    save_checkpoint(path, create_model("vit_tiny", **kwargs), {"model": "vit_tiny", "model_kwargs": kwargs})
    return path


def _refused(capsys, argv: list[str], folder: Path, label: str, held: Path) -> None:
    before = sorted(p.name for p in folder.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: output folder '{folder}' holds {label} '{held}', which this command reads; replacing the folder "
        "would delete it: name another folder\n"
    )
    assert sorted(p.name for p in folder.iterdir()) == before and held.is_file()


def test_export_refuses_an_output_folder_holding_its_checkpoint(tmp_path, capsys):
    run = tmp_path / "run1"
    pt = _checkpoint(run / "fp.pt")
    _refused(capsys, ["export", str(pt), "-t", "onnx", "-p", "host-cpu", "-o", str(run), *FAST], run,
             "the model checkpoint", pt)  # fmt: skip
    args = ["export", "vit_tiny", "--checkpoint", str(pt), "-t", "onnx", "-p", "host-cpu", "-o", str(run), *FAST]
    _refused(capsys, args, run, "the checkpoint", pt)


def test_export_and_hls_refuse_an_output_folder_holding_their_profile(tmp_path, capsys):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    mine = cfg / "my.yaml"
    shutil.copy(PROFILES / "host-cpu.yaml", mine)
    args = ["export", "vit_tiny", "-t", "onnx", "-p", str(mine), "--img-size", "32", "-o", str(cfg), *FAST]
    _refused(capsys, args, cfg, "the profile", mine)
    shutil.copy(PROFILES / "zcu102-hls.yaml", cfg / "hls.yaml")
    args = ["hls", "vit_tiny", "-p", str(cfg / "hls.yaml"), "-o", str(cfg), "--force"]
    _refused(capsys, args, cfg, "the profile", cfg / "hls.yaml")
    args = ["hls", "vit_tiny", "--checkpoint", str(mine), "-o", str(cfg), "--force"]  # refused before it is read
    _refused(capsys, args, cfg, "the checkpoint", mine)


def test_export_all_refuses_a_target_folder_holding_the_checkpoint(tmp_path):
    pt = _checkpoint(tmp_path / "out" / "onnx" / "fp.pt")
    with pytest.raises(EdgeAttnError, match="output folder '.*onnx' holds the model checkpoint '.*fp.pt'"):
        export_all(str(pt), tmp_path / "out", ["onnx"], force=True, precision="fp32", n_inputs=2)
    assert pt.is_file()


def test_an_input_beside_the_output_folder_is_fine(tmp_path, capsys):
    """A checkpoint next to (not inside) the output folder is no reason to refuse."""
    pt = _checkpoint(tmp_path / "fp.pt")
    out = tmp_path / "out"
    args = ["export", str(pt), "-t", "onnx", "-p", "host-cpu", "-o", str(out), *FAST]
    assert main(args) == 0, capsys.readouterr().err
    assert (out / "model.onnx").is_file() and pt.is_file()
