"""The accelerator's weights in DDR and its one shared MAC unit.

- the generated C++ has one non-template ``mac_linear``, limited to one instance in each top, and reads the
  weights through an ``m_axi`` port: ``weights.h`` holds no weight matrix, ``tb_data/weights.dat`` holds every one;
- the estimate's weight-word count (its own formula) equals the packed image's size;
- a non-square MAC array with a head wider than a buffer row (the head runs in passes) is bit-exact in C
  simulation, and so is every weight read back from the image by the documented layout;
- the test bench names the first output that differs, runs the first N vectors when asked (cosim), and a short
  weight image stops it with one line.
"""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
import torch
from _hls_toolchain import header_ints, project_bias, project_weight, require_toolchain
from edgeattn.fpga_hls import estimate_model, generate_project, run_csim

from edgeattn.device_profile import load_profile
from edgeattn.errors import EdgeAttnError
from edgeattn.models import create_model

W_FRAC = 14  # ap_fixed<16,2> weights of zcu102-hls
A_FRAC = 22  # ap_fixed<32,10> activations


def _small(seed: int = 0, **kw):
    torch.manual_seed(seed)
    args = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 16, "patch_size": 4, **kw}
    return create_model("edge_moe_vit", **args).eval()


def _define(prj, name: str) -> int:
    return int(re.search(rf"#define {name} (\d+)", (prj / "firmware/parameters.h").read_text()).group(1))


def _rounded(tensor, frac: int) -> np.ndarray:
    return np.round(tensor.detach().double().numpy() * 2.0**frac).astype(np.int64)


def test_one_mac_unit_reads_every_weight_from_ddr(tmp_path):
    net = _small()
    prj = tmp_path / "p"
    generate_project(net, "zcu102-hls", prj, layer=None, vectors=1)
    mac = (prj / "firmware/ea/ea_mac.h").read_text()
    assert len(re.findall(r"void mac_linear\(", mac)) == 1 and not re.search(r"template\s*<", mac)
    top = (prj / "firmware/edgeattn_top.cpp").read_text()
    for fn in ("encoder_layer_top", "vit_top"):
        body = top[top.index(f"void {fn}(") :]
        body = body[: body.index("\n}\n")]
        assert "#pragma HLS INTERFACE mode=m_axi port=wmem offset=slave bundle=gmem2" in body, fn
        assert "#pragma HLS ALLOCATION function instances=ea::mac_linear limit=1" in body, fn
        assert "#pragma HLS ALLOCATION function instances=ea::layernorm limit=1" in body, fn
    # weights.h: parameters and offsets only; every weight is in the image
    weights_h = (prj / "firmware/weights.h").read_text()
    assert not re.search(r"\b(qkv|proj|fc1|fc2|gate|efc1|efc2|patch|head)_w\[", weights_h)
    words = _define(prj, "EA_WEIGHT_WORDS")
    assert len((prj / "tb_data/weights.dat").read_text().splitlines()) == words + 1
    readme = " ".join((prj / "README.md").read_text().split())
    assert f"`wmem` holds {words} words of 256 bits ({words * 32} bytes)" in readme
    assert "`vit_top`: image (C x H x W act_t) on gmem0, logits on gmem1; `wmem` (the weights) on gmem2" in readme
    # the matrices the design runs (task 0's gates and head), each padded to whole 16 x 16 tiles
    mats = [net.patch_embed.weight.flatten(1), net.head.weight]
    for b in net.blocks:
        mats += [b.attn.qkv.weight, b.attn.proj.weight]
        if hasattr(b.mlp, "experts"):
            mats += [b.mlp.gates[0].weight] + [m.weight for e in b.mlp.experts for m in (e.fc1, e.fc2)]
        else:
            mats += [b.mlp.fc1.weight, b.mlp.fc2.weight]
    assert words == sum(-(-w.shape[0] // 16) * -(-w.shape[1] // 16) * 16 for w in mats)
    # the layer-1 MoE experts and the head, read back by the documented layout
    block = net.blocks[1]
    for e, expert in enumerate(block.mlp.experts):
        w = _rounded(expert.fc2.weight, W_FRAC)
        assert np.array_equal(project_weight(prj, "efc2", w.shape, index=e), w), e
    head = _rounded(net.head.weight, W_FRAC)
    assert np.array_equal(project_weight(prj, "head", head.shape), head)
    assert np.array_equal(project_bias(prj, "head", head.shape[0]), _rounded(net.head.bias, A_FRAC))
    assert header_ints(prj, "head_w_off").size == 1


@pytest.mark.parametrize("layer", [None, 0, 1])
def test_estimate_counts_the_words_the_image_holds(tmp_path, layer):
    net = _small()
    prj = tmp_path / "p"
    info = generate_project(net, "zcu102-hls", prj, layer=layer, vectors=1)
    ddr = info.estimate["ddr"]
    assert ddr["weight_words"] == _define(prj, "EA_WEIGHT_WORDS")
    assert ddr["word_bits"] == 16 * 16 and ddr["weight_bytes"] == ddr["weight_words"] * 32
    assert ddr["peak_gb_s"] == pytest.approx(256 * 300e6 / 8 / 1e9)
    assert ddr["average_gb_s"] == pytest.approx(ddr["weight_bytes"] / (info.estimate["latency_us"] * 1e3))
    assert estimate_model(net, "zcu102-hls", layer=layer)["ddr"] == ddr


def test_non_square_mac_and_a_head_wider_than_a_buffer_row_are_bit_exact(tmp_path):
    require_toolchain()
    prof = load_profile("zcu102-hls")
    hls = prof.hls.model_copy(update={"mac_rows": 5, "mac_cols": 7, "attn_parallel": 3})
    net = _small(3, num_classes=150)
    prj = tmp_path / "p"
    generate_project(net, prof.model_copy(update={"hls": hls}), prj, layer=None, vectors=2)
    width = _define(prj, "EA_BUF_W")
    assert width == 128 and width < 150  # the MLP's hidden width; the head runs in passes of 18 * 7 = 126 classes
    report = run_csim(prj)
    assert report["mismatches"] == 0 and report["outputs"] == 2 * 150
    got = np.loadtxt(prj / "tb_data/csim_results.dat", ndmin=2)
    assert np.array_equal(got, np.loadtxt(prj / "tb_data/tb_golden.dat", ndmin=2))
    assert report["cosine_vs_float"] > 0.99
    # the same layout at 5 x 7 tiles: a partial last tile in both directions
    qkv = _rounded(net.blocks[0].attn.qkv.weight, W_FRAC)
    assert np.array_equal(project_weight(prj, "qkv", qkv.shape), qkv)


def test_testbench_names_the_first_mismatch_and_refuses_a_short_weight_image(tmp_path):
    require_toolchain()
    prj = tmp_path / "p"
    generate_project(_small(), "zcu102-hls", prj, layer=0, vectors=2)
    golden = prj / "tb_data/tb_golden.dat"
    rows = np.loadtxt(golden, ndmin=2, dtype=np.int64)
    want = rows[1, 3] + 1
    rows[1, 3] = want
    rows[1, 5] += 1
    np.savetxt(golden, rows, fmt="%d")
    report = run_csim(prj)
    assert report["mismatches"] == 2
    assert f"first_mismatch=vector1[3] got={want - 1} want={want}" in report["testbench_summary"]
    # an argument limits the vectors (build_prj.tcl's cosim_vectors): vector 0 matches
    exe = prj / "build/csim.exe"
    one = subprocess.run([str(exe), "1"], cwd=prj, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0 and "EDGEATTN_CSIM vectors=1 outputs_per_vector=544 mismatches=0" in one.stdout
    for bad in ("0", "x", "2x"):
        proc = subprocess.run([str(exe), bad], cwd=prj, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "positive number of vectors" in proc.stdout, bad

    image = prj / "tb_data/weights.dat"
    image.write_text("\n".join(image.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(EdgeAttnError, match=r"error=weights.dat is short") as err:
        run_csim(prj)
    assert "\n" not in str(err.value)
