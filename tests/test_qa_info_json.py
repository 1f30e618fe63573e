"""QA: `models`/`profiles` --json follow the one report-path rule; `hls` --json stays out of -o; the csim report's
test-bench summary names its per-vector output count.

Each refusal is checked by the bytes of the files it protects, the exit code 2 and the one `error:` line; each
replaced report against figures computed here independently (the profile YAML read with PyYAML, shapes by hand).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _hls_toolchain import require_toolchain
from edgeattn.fpga_hls import generate_project, run_csim

from edgeattn.cli import main
from edgeattn.models import create_model

REPO = Path(__file__).resolve().parents[1]
ZCU = REPO / "profiles" / "zcu102-hls.yaml"
OLD = b'{"old": true}\n'


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: "), err
    return err


def test_profiles_show_never_replaces_its_own_yaml(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = ZCU.read_bytes()
    Path("my.yaml").write_bytes(text)
    for extra in ([], ["--force"]):  # --force is for an old report, never for the input
        assert main(["profiles", "show", "./my.yaml", "--json", "./my.yaml", *extra]) == 2
        line = _one_error_line(capsys)
        assert line == "error: --json 'my.yaml' would overwrite the input './my.yaml'; write it elsewhere"
        assert Path("my.yaml").read_bytes() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my.yaml"]


@pytest.mark.parametrize(
    "argv",
    [
        ["profiles", "show", "zcu102-hls"],
        ["profiles", "list"],
        ["models", "list"],
        ["models", "info", "vit_tiny"],
    ],
)
def test_existing_json_needs_force(tmp_path, capsys, argv):
    old = tmp_path / "old.json"
    old.write_bytes(OLD)
    assert main([*argv, "--json", str(old)]) == 2
    assert _one_error_line(capsys) == f"error: --json '{old}' exists; pass --force to overwrite it"
    assert old.read_bytes() == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]  # no temp file left either


def test_profiles_show_force_replaces_the_report(tmp_path, capsys):
    old = tmp_path / "old.json"
    old.write_bytes(OLD)
    assert main(["profiles", "show", str(ZCU), "--json", str(old), "--force"]) == 0
    capsys.readouterr()
    got = json.loads(old.read_text())["profile"]
    want = yaml.safe_load(ZCU.read_text())
    assert got["name"] == want["name"] == "zcu102-hls"
    assert got["quant"]["weight_bits"] == want["quant"]["weight_bits"]
    assert got["quant"]["act_bits"] == want["quant"]["act_bits"]
    assert got["hls"]["clock_mhz"] == want["hls"]["clock_mhz"]


def test_profiles_list_force_replaces_the_report(tmp_path, capsys):
    old = tmp_path / "old.json"
    old.write_bytes(OLD)
    assert main(["profiles", "list", "--json", str(old), "--force"]) == 0
    capsys.readouterr()
    names = sorted(p["name"] for p in json.loads(old.read_text()))
    assert names == sorted(p.stem for p in (REPO / "profiles").glob("*.yaml"))
    assert len(names) == 7


def test_models_info_force_replaces_the_report(tmp_path, capsys):
    old = tmp_path / "old.json"
    old.write_bytes(OLD)
    assert main(["models", "info", "vit_tiny", "--img-size", "32", "--json", str(old), "--force"]) == 0
    capsys.readouterr()
    record = json.loads(old.read_text())
    assert record["name"] == "vit_tiny" and record["input_shape"] == [1, 3, 32, 32]
    net = create_model("vit_tiny", img_size=32)
    assert record["params_train"] == sum(p.numel() for p in net.parameters())


# ------------------------------------------------------------------------------------------------ hls
SMALL = ["--set", "embed_dim=32", "--set", "img_size=16", "--set", "num_heads=2", "--set", "depth=2"]


def test_hls_json_inside_the_project_is_refused(tmp_path, capsys):
    prj = tmp_path / "prj"
    target = prj / "s.json"  # a new name, not one of the project's own files
    argv = ["hls", "edge_moe_vit", "-o", str(prj), "--vectors", "1", *SMALL, "--json", str(target)]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert line == f"error: --json '{target}' is inside the output folder '{prj}'; write it elsewhere"
    assert list(tmp_path.iterdir()) == []


def test_hls_json_inside_an_existing_project_leaves_it_alone(tmp_path, capsys):
    prj = tmp_path / "prj"
    prj.mkdir()
    (prj / "project.json").write_bytes(OLD)
    argv = ["hls", "edge_moe_vit", "-o", str(prj), "--vectors", "1", *SMALL, "--force"]
    assert main([*argv, "--json", str(prj / "notes" / "s.json")]) == 2
    assert "is inside the output folder" in _one_error_line(capsys)
    assert [p.name for p in prj.iterdir()] == ["project.json"] and (prj / "project.json").read_bytes() == OLD


def test_csim_summary_names_the_per_vector_output_count(tmp_path):
    require_toolchain()
    torch.manual_seed(0)
    net = create_model("edge_moe_vit", embed_dim=32, depth=2, num_heads=2, img_size=16, patch_size=4).eval()
    prj = tmp_path / "prj"
    generate_project(net, "zcu102-hls", prj, layer=1, vectors=2)
    report = run_csim(prj)
    # one encoder layer: (16/4)^2 + 1 = 17 tokens of 32 values per vector, 2 vectors
    assert report["vectors"] == 2 and report["outputs"] == 2 * 17 * 32 == 1088
    assert report["outputs"] == np.loadtxt(prj / "tb_data/csim_results.dat", ndmin=2).size
    fields = dict(kv.split("=", 1) for kv in report["testbench_summary"].split()[1:])
    assert int(fields["outputs_per_vector"]) == 17 * 32 and int(fields["vectors"]) == 2
    assert "outputs" not in fields  # no bare per-vector figure beside the report's total
    saved = json.loads((prj / "csim_report.json").read_text())
    assert saved["testbench_summary"] == report["testbench_summary"]
