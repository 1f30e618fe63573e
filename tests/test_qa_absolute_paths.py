"""Paths recorded in result.json and project.json are absolute: a run given a relative -o used to record it as
typed ("runs/x"), which names nothing once the reader is in another folder and the run's working folder is not
recorded anywhere."""

from __future__ import annotations

import json
import os

import torch
from _tiny_runs import tiny_cfg
from edgeattn.fpga_hls import generate_project

from edgeattn.models import create_model


def test_qat_result_records_absolute_paths(tmp_path, monkeypatch):
    from edgeattn.quant.train import TrainConfig, run

    monkeypatch.chdir(tmp_path)
    result = run(TrainConfig.parse(tiny_cfg("runs/x")), progress=False)
    saved = json.loads((tmp_path / "runs/x/result.json").read_text())
    assert saved["output_dir"] == str(tmp_path / "runs/x") == result["output_dir"]
    assert saved["fp_checkpoint"] == str(tmp_path / "runs/x/fp.pt")
    assert saved["checkpoint"] == str(tmp_path / "runs/x/model.pt")
    for key in ("output_dir", "fp_checkpoint", "checkpoint"):
        assert os.path.exists(saved[key]), key


def test_hls_project_json_records_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    net = create_model("edge_moe_vit", embed_dim=32, depth=2, num_heads=2, img_size=16, patch_size=4).eval()
    generate_project(net, "zcu102-hls", "prj", layer=0, vectors=1)
    assert json.loads((tmp_path / "prj/project.json").read_text())["path"] == str(tmp_path / "prj")
