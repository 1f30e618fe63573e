"""Two runs to one new output folder must not both succeed: without ``--force`` the later publish never replaces a
folder that appeared while it worked; it fails in one line, leaves the other run's files as they were and removes
its own staging folder. ``--force`` still replaces; a pre-existing empty folder is still taken, as the start checks
allow. The other run is simulated by creating OUT between staging and publishing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edgeattn.atomic import OutputTakenError, staging_dir
from edgeattn.errors import EdgeAttnError

OTHER = {"report.json": b'{"run": "the other one"}\n', "sub/model.onnx": bytes(range(256)) * 3}


def _write_other_run(out: Path) -> dict[str, str]:
    """Publish a finished 'other run' at ``out`` the way the commands do (its own staging folder, renamed); its
    files' SHA-256 digests."""
    with staging_dir(out) as tmp:
        for name, data in OTHER.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
    return _digests(out)


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _expected_digests() -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in OTHER.items()}


def _no_staging_left(parent: Path) -> None:
    left = [p.name for p in parent.iterdir() if p.name.startswith(".")]
    assert left == [], left


def _taken(out: Path, how: str = "created") -> str:
    return f"output folder '{out}' was {how} by another run while this one worked; rerun with --force to replace it"


# ---------------------------------------------------------------------------------------------- the atomic layer
def test_later_run_fails_and_leaves_the_other_runs_folder(tmp_path):
    out = tmp_path / "OUT"
    with pytest.raises(OutputTakenError) as info, staging_dir(out, replace=False) as mine:
        (mine / "report.json").write_text("this run\n")
        other = _write_other_run(out)  # the other run finishes first
    assert str(info.value) == _taken(out)
    assert info.value.exit_code == 2 and isinstance(info.value, EdgeAttnError)
    assert other == _expected_digests() == _digests(out)  # byte for byte, nothing of this run mixed in
    _no_staging_left(tmp_path)


def test_an_empty_folder_made_meanwhile_is_not_replaced_either(tmp_path):
    # a plain POSIX rename(dir, empty_dir) succeeds: the no-replace publish must not
    out = tmp_path / "OUT"
    with pytest.raises(OutputTakenError, match="was created by another run"), staging_dir(out, replace=False) as mine:
        (mine / "a.txt").write_text("x")
        out.mkdir()
        marker = out.stat().st_ino
    assert out.is_dir() and list(out.iterdir()) == [] and out.stat().st_ino == marker
    _no_staging_left(tmp_path)


def test_a_file_made_meanwhile_is_not_replaced(tmp_path):
    out = tmp_path / "OUT"
    with pytest.raises(OutputTakenError, match="was created by another run"), staging_dir(out, replace=False):
        out.write_bytes(b"someone's file")
    assert out.read_bytes() == b"someone's file"
    _no_staging_left(tmp_path)


def test_a_preexisting_empty_folder_is_taken_unless_filled_meanwhile(tmp_path):
    out = tmp_path / "OUT"
    out.mkdir()  # the start checks of export and demo let an empty folder through without --force
    with staging_dir(out, replace=False) as mine:
        (mine / "r.txt").write_text("mine\n")
    assert _digests(out) == {"r.txt": hashlib.sha256(b"mine\n").hexdigest()}

    again = tmp_path / "AGAIN"
    again.mkdir()
    with pytest.raises(OutputTakenError) as info, staging_dir(again, replace=False) as mine:
        (mine / "r.txt").write_text("mine\n")
        (again / "theirs.txt").write_bytes(b"theirs")  # the same folder, no longer empty
    assert str(info.value) == _taken(again, "filled")
    assert _digests(again) == {"theirs.txt": hashlib.sha256(b"theirs").hexdigest()}
    _no_staging_left(tmp_path)


def test_replace_still_replaces_a_folder_made_meanwhile(tmp_path):
    out = tmp_path / "OUT"
    with staging_dir(out, replace=True) as mine:  # --force; also the default, for callers not yet passing it
        (mine / "r.txt").write_text("mine\n")
        _write_other_run(out)
    assert _digests(out) == {"r.txt": hashlib.sha256(b"mine\n").hexdigest()}
    _no_staging_left(tmp_path)


# ---------------------------------------------------------------------------------------------- a real command
@pytest.fixture
def other_run_mid_export(monkeypatch):
    """While the export works in its staging folder, another run publishes ``OUT``."""
    from edgeattn.export import api

    real = api._run_onnx_based
    outs: list[Path] = []

    def racing(job):
        real(job)
        outs.append(job.stage.parent / job.stage.name.split(".tmp-")[0].lstrip("."))
        _write_other_run(outs[-1])

    monkeypatch.setattr(api, "_run_onnx_based", racing)
    return outs


EXPORT = ["export", "mobilenetv2", "-t", "onnx", "-p", "host-cpu", "--img-size", "32", "--n-inputs", "2"]


def test_cli_export_race_fails_with_exit_6_and_one_line(tmp_path, capsys, other_run_mid_export):
    from edgeattn.cli import main

    out = tmp_path / "ex"
    code = main([*EXPORT, "-o", str(out)])
    err = capsys.readouterr().err
    assert other_run_mid_export == [out]
    assert code == 6, err
    assert err.strip().splitlines() == [f"error: {_taken(out)}"], err
    assert _digests(out) == _expected_digests()
    _no_staging_left(tmp_path)


def test_export_api_with_force_replaces_the_other_runs_folder(tmp_path, other_run_mid_export):
    from edgeattn.export import export_model

    out = tmp_path / "ex"
    report = export_model(
        "mobilenetv2", "onnx", "host-cpu", out, n_inputs=2, force=True, model_kwargs={"img_size": 32}
    )
    assert report.passed
    files = _digests(out)
    assert "report.json" in files and files["report.json"] != _expected_digests()["report.json"]
    assert "sub/model.onnx" not in files and any(name.endswith(".onnx") for name in files)
    _no_staging_left(tmp_path)


def test_demo_race_fails_and_keeps_the_other_runs_folder(tmp_path, monkeypatch):
    from edgeattn import demo as demo_mod

    out = tmp_path / "demo"

    def quick_run(self):  # stands in for the whole demo: writes its summary; the other run publishes to ``out``
        (self.out / "summary.json").write_text("{}\n")
        if self.final == out:
            _write_other_run(out)
        return {}

    monkeypatch.setattr(demo_mod.Demo, "run", quick_run)
    with pytest.raises(OutputTakenError) as info:
        demo_mod.run_demo(out)
    assert str(info.value) == _taken(out)
    assert _digests(out) == _expected_digests()
    _no_staging_left(tmp_path)

    alone = tmp_path / "alone"  # no race: published as before
    assert demo_mod.run_demo(alone) == {}
    assert _digests(alone) == {"summary.json": hashlib.sha256(b"{}\n").hexdigest()}


def test_a_crashed_demo_keeps_its_partial_run_aside_when_another_run_took_the_folder(tmp_path, monkeypatch):
    from edgeattn import demo as demo_mod

    out = tmp_path / "demo"

    def crash(self):
        (self.out / "summary.json").write_text("{}\n")
        _write_other_run(out)
        raise RuntimeError("step crashed")

    monkeypatch.setattr(demo_mod.Demo, "run", crash)
    with pytest.raises(RuntimeError, match="step crashed"):
        demo_mod.run_demo(out)
    assert _digests(out) == _expected_digests()  # the other run's folder, not this run's partial one
    kept = [p.name for p in tmp_path.iterdir() if p.name.startswith("demo.partial-")]
    assert len(kept) == 1 and _digests(tmp_path / kept[0]) == {"summary.json": hashlib.sha256(b"{}\n").hexdigest()}
    _no_staging_left(tmp_path)


def test_hls_project_race_is_refused_and_force_still_replaces(tmp_path, monkeypatch):
    import torch
    from edgeattn.fpga_hls import generate_project
    from edgeattn.fpga_hls import generator as gen_mod

    from edgeattn.models import create_model

    torch.manual_seed(0)
    net = create_model("edge_moe_vit", embed_dim=32, depth=2, num_heads=2, img_size=16, patch_size=4).eval()
    out = tmp_path / "prj"
    write = gen_mod.write_project

    def racing(dst, *args, **kwargs):
        write(dst, *args, **kwargs)
        if not out.exists():
            out.mkdir()
            (out / "project.json").write_text("the other run\n")

    monkeypatch.setattr(gen_mod, "write_project", racing)
    with pytest.raises(OutputTakenError) as info:
        generate_project(net, "zcu102-hls", out, layer=0, vectors=1)
    assert str(info.value) == _taken(out) and info.value.exit_code == 2
    assert [p.name for p in out.iterdir()] == ["project.json"]
    assert (out / "project.json").read_text() == "the other run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prj"]  # no staging folder left
    generate_project(net, "zcu102-hls", out, layer=0, vectors=1, force=True)
    assert (out / "tb_data/weights.dat").is_file()
