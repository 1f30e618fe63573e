"""C simulation of the generated HLS C++ with g++ and hls4ml's ap_types: bit-exact against the golden model.

Each project needs one g++ compile (the cost of this module), so shapes are small and the sweep is the
issue's parallelism settings 1, 2 and 4 on one (MoE) encoder layer and on a whole (2-layer, dense + MoE)
tiny ViT.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _hls_toolchain import require_toolchain
from edgeattn.fpga_hls import generate_project, run_csim

from edgeattn.errors import EdgeAttnError
from edgeattn.models import create_model


def _small(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("edge_moe_vit", embed_dim=32, depth=2, num_heads=2, img_size=16, patch_size=4).eval()


@pytest.fixture(scope="module")
def layer_runs(tmp_path_factory):
    """MoE encoder layer (layer 1, 17 tokens) at P = 1, 2, 4: reports and raw outputs."""
    require_toolchain()
    root = tmp_path_factory.mktemp("hls_layer")
    out = {}
    for p in (1, 2, 4):
        prj = root / f"p{p}"
        generate_project(_small(), "zcu102-hls", prj, layer=1, vectors=3, attn_parallel=p)
        out[p] = (run_csim(prj), np.loadtxt(prj / "tb_data/csim_results.dat", ndmin=2), prj)
    return out


@pytest.mark.parametrize("p", [1, 2, 4])
def test_layer_csim_is_bit_exact_for_every_parallelism(layer_runs, p):
    report, got, prj = layer_runs[p]
    gold = np.loadtxt(prj / "tb_data/tb_golden.dat", ndmin=2)
    assert report["vectors"] == 3 and report["outputs"] == 3 * 17 * 32
    assert report["mismatches"] == 0
    assert np.array_equal(got, gold)  # checked here too, not only by the test bench
    assert report["attn_parallel"] == p
    saved = json.loads((prj / "csim_report.json").read_text())
    for key in ("mismatches", "vectors", "max_abs_err_vs_float", "cosine_vs_float"):
        assert saved[key] == report[key]
    # the fixed-point hardware vs the float PyTorch block, recomputed from the files
    ref = np.loadtxt(prj / "tb_data/tb_float.dat", ndmin=2)
    fixed = got * 2.0**-22
    assert report["max_abs_err_vs_float"] == pytest.approx(np.abs(fixed - ref).max())
    assert report["cosine_vs_float"] > 0.999


def test_reordering_does_not_change_results(layer_runs):
    outs = [layer_runs[p][1] for p in (1, 2, 4)]
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


@pytest.mark.parametrize("p", [1, 2, 4])
def test_whole_vit_csim_is_bit_exact(tmp_path, p):
    require_toolchain()
    prj = tmp_path / "vit"
    info = generate_project(_small(), "zcu102-hls", prj, layer=None, vectors=2, attn_parallel=p)
    assert info.top == "vit_top" and info.shape.moe_layers == 1 and info.shape.depth == 2
    report = run_csim(prj)
    assert report["mismatches"] == 0 and report["vectors"] == 2 and report["outputs"] == 2 * 10
    assert report["cosine_vs_float"] > 0.99


def test_4bit_quantized_layer_csim_is_bit_exact(tmp_path):
    """A W4A4 fpga-preset model: the C++ runs its 4-bit weights bit-exactly; the reference is named."""
    require_toolchain()
    from edgeattn.quant import QuantConfig, ptq

    torch.manual_seed(5)
    model = create_model("vit_tiny", img_size=16, depth=1, embed_dim=32, num_heads=2, patch_size=4).eval()
    cfg = QuantConfig.from_profile("zcu102-hls").with_bits("w4a4")
    qmodel = ptq(model, cfg, [torch.randn(8, 3, 16, 16)])
    prj = tmp_path / "q"
    info = generate_project(qmodel, "zcu102-hls", prj, layer=0, vectors=2)
    assert info.reference_bits == "W4A4"
    report = run_csim(prj)
    assert report["mismatches"] == 0 and report["outputs"] == 2 * 17 * 32
    assert report["reference"] == info.reference and report["reference_kind"] == "design"
    assert report["reference"].startswith("the W4A4 checkpoint's quantized weights with float activations")
    assert report["gate"]["passed"]  # the design's own arithmetic in float: the default gate holds
    got = np.loadtxt(prj / "tb_data/csim_results.dat", ndmin=2)
    assert np.array_equal(got, np.loadtxt(prj / "tb_data/tb_golden.dat", ndmin=2))


def test_cli_hls_csim_and_bad_input(tmp_path, capsys, monkeypatch):
    require_toolchain()
    from edgeattn.cli import main

    prj = tmp_path / "cli"
    args = [
        "hls",
        "edge_moe_vit",
        "--profile",
        "zcu102-hls",
        "-o",
        str(prj),
        "--set",
        "embed_dim=32",
        "--set",
        "img_size=16",
        "--set",
        "num_heads=2",
        "--vectors",
        "2",
        "--csim",
        "--json",
        str(tmp_path / "s.json"),
    ]
    assert main(args) == 0
    report = json.loads((prj / "csim_report.json").read_text())
    assert report["mismatches"] == 0 and report["vectors"] == 2
    assert 0 < report["approx_max_abs_err_vs_float"] < report["max_abs_err_vs_float"]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["csim"]["mismatches"] == 0 and summary["estimate"]["cycles"]["total"] > 0
    capsys.readouterr()
    # an existing project (and an existing --json file) is not overwritten without --force
    before = (tmp_path / "s.json").read_bytes()
    assert main(args) == 2
    assert "s.json' exists; pass --force to overwrite it" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "s2.json")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "s.json").read_bytes() == before and not (tmp_path / "s2.json").exists()
    # a model whose shape the templates cannot take: one line, exit 2, nothing written
    bad = tmp_path / "bad"
    assert main(["hls", "tiny_llama", "-o", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "plain pre-norm ViT" in err and len(err.strip().splitlines()) <= 3 and not bad.exists()
    # a missing compiler or missing headers: exit 4 before anything is written
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    assert main(["hls", "edge_moe_vit", "-o", str(bad), "--csim"]) == 4
    assert "no-such-compiler-xyz" in capsys.readouterr().err and not bad.exists()
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("EDGEATTN_AP_TYPES", str(tmp_path / "nowhere"))
    assert main(["hls", "edge_moe_vit", "-o", str(bad), "--csim"]) == 4
    assert "ap_fixed.h" in capsys.readouterr().err and not bad.exists()


def test_run_csim_on_a_folder_that_is_not_a_project(tmp_path):
    require_toolchain()
    with pytest.raises(EdgeAttnError, match="not an edgeattn HLS project"):
        run_csim(tmp_path)
