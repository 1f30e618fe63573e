"""Output paths that cannot be written are refused before any work, by every command that writes one.

``/proc`` is the unwritable folder here because it refuses new files to root as well: permission bits (and
``os.access``) say yes to root, so only a real write tells, and that is what is checked.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgeattn.atomic import check_writable_folder, write_text_atomic
from edgeattn.cli import main
from edgeattn.errors import EdgeAttnError

PROC = Path("/proc")
needs_proc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not PROC.is_dir(), reason="needs Linux /proc as an unwritable folder"
)


def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_writable_folder_passes_and_leaves_nothing(tmp_path):
    check_writable_folder(tmp_path / "a" / "b", "out")  # missing folders: probed in tmp_path, none created
    check_writable_folder(tmp_path, "out")
    assert list(tmp_path.iterdir()) == []


def test_a_file_in_the_way_is_not_a_folder(tmp_path):
    (tmp_path / "f").write_text("keep")
    with pytest.raises(EdgeAttnError, match=r"^out: '.*f' is not a folder$"):
        check_writable_folder(tmp_path / "f" / "sub", "out")
    assert (tmp_path / "f").read_text() == "keep"


@needs_proc
def test_a_folder_that_refuses_files_is_refused():
    with pytest.raises(EdgeAttnError, match=r"^--json 'x': cannot write in '/proc' \("):
        check_writable_folder(PROC / "edgeattn-test", "--json 'x'")


@needs_proc
@pytest.mark.parametrize(
    "argv",
    [
        ["qat", "--model", "vit_tiny", "--epochs", "0", "--fp-epochs", "0"],
        ["export", "mobilenetv2", "--target", "onnx", "--profile", "host-cpu", "--img-size", "32"],
        ["hls", "edge_moe_vit", "--profile", "zcu102-hls"],
    ],
    ids=["qat", "export", "hls"],
)
def test_unwritable_json_fails_before_any_work(tmp_path, capsys, argv):
    out = tmp_path / "out"
    assert main([*argv, "-o", str(out), "--json", "/proc/edgeattn-test.json"]) == 2
    assert "--json '/proc/edgeattn-test.json': cannot write in '/proc'" in _one_line(capsys)
    assert not out.exists() and capsys.readouterr().out == ""


@needs_proc
def test_qat_output_directory_that_cannot_be_written_is_refused(capsys):
    assert main(["qat", "--model", "vit_tiny", "-o", "/proc/edgeattn-run"]) == 2
    assert "output directory '/proc/edgeattn-run': cannot write in '/proc'" in _one_line(capsys)


def test_qat_output_directory_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert main(["qat", "--model", "vit_tiny", "-o", str(target)]) == 2
    assert "exists and is not a folder" in _one_line(capsys)
    assert target.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_atomic_write_that_cannot_start_names_the_path_asked_for(tmp_path):
    (tmp_path / "f").write_text("keep")
    target = tmp_path / "f" / "x.json"  # its folder would have to be where a file is
    with pytest.raises(EdgeAttnError, match=r"^cannot write '.*f/x\.json': "):
        write_text_atomic(target, "{}")
    assert (tmp_path / "f").read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


@needs_proc
@pytest.mark.parametrize("command", [["models", "list"], ["profiles", "list"]])
def test_listing_commands_name_the_json_path_they_cannot_write(capsys, command):
    assert main([*command, "--json", "/proc/edgeattn-test.json"]) == 2
    # checked before any work, as export/profile/hls do: the flag, the path and the folder it cannot write in
    assert _one_line(capsys).startswith("error: --json '/proc/edgeattn-test.json': cannot write in '/proc'")
