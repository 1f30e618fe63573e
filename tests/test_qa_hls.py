"""QA of `edgeattn hls`: what a user meets beyond the happy path.

- ``--csim --force`` publishes the new project only after its C simulation ran: a Ctrl-C or a compile failure
  leaves the previous project as it was; a simulation that differs from the golden model is published (for
  debugging), counted exactly (checked against a golden model we tamper with) and exits 1.
- the compiler's whole process group dies on a timeout or an interrupt (``cc1plus`` is a grandchild);
- ``--parallel`` is held to the profile schema's range; a design over the DSP/BRAM budget says so;
- ``--json`` cannot overwrite the project it summarises;
- the estimate's arithmetic for a non-square MAC array, checked against numbers worked out by hand;
- the weights header at other widths, checked against numpy rounding of the torch weights.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _hls_toolchain import header_ints, project_bias, project_weight, require_toolchain
from edgeattn.fpga_hls import HLSFormats, LayerShape, estimate, estimate_model, generate_project
from edgeattn.fpga_hls import csim as csim_mod
from edgeattn.fpga_hls import generator as gen_mod

from edgeattn.cli import main
from edgeattn.device_profile import load_profile
from edgeattn.errors import EdgeAttnError
from edgeattn.models import create_model

SMALL = ["--set", "embed_dim=32", "--set", "img_size=16", "--set", "num_heads=2", "--set", "depth=2"]



def _hls_args(prj: Path, *extra: str) -> list[str]:
    return ["hls", "edge_moe_vit", "-o", str(prj), *SMALL, "--vectors", "2", *extra]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _staging_left(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".")]


def test_csim_force_keeps_the_old_project_until_the_simulation_ran(tmp_path, monkeypatch, capsys):
    require_toolchain()
    prj = tmp_path / "prj"
    assert main(_hls_args(prj, "--seed", "1")) == 0
    old = _snapshot(prj)
    capsys.readouterr()

    # Ctrl-C during the C simulation: exit 130, the old project byte for byte, no staging folder, no summary
    def interrupted(staged, **_k):
        assert (staged / "project.json").is_file() and staged.parent == tmp_path  # the complete staged project
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr("edgeattn.fpga_hls.run_csim", interrupted)
    old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # a test worker may ignore SIGINT
    summary = tmp_path / "s.json"
    try:
        assert main(_hls_args(prj, "--force", "--csim", "--json", str(summary))) == 130
    finally:
        signal.signal(signal.SIGINT, old_handler)
    assert _snapshot(prj) == old and _staging_left(tmp_path) == [] and not summary.exists()
    monkeypatch.undo()

    # a compiler that fails (`false` exits 1): one line, exit 3, the old project unchanged
    monkeypatch.setenv("CXX", "false")
    capsys.readouterr()
    assert main(_hls_args(prj, "--force", "--csim")) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"g++ failed on {prj}:" in err and "Traceback" not in err
    assert _snapshot(prj) == old and _staging_left(tmp_path) == []
    monkeypatch.delenv("CXX")

    # a golden model that is off by one LSB in output 0 of every vector: the real g++ simulation finds exactly
    # those outputs, the project is published for debugging, exit 1
    true_layer = gen_mod.G.encoder_layer
    truth: list[np.ndarray] = []

    def off_by_one(x, *args, **kwargs):
        y = true_layer(x, *args, **kwargs)
        truth.append(y.copy())
        y[0, 0] += 1
        return y

    monkeypatch.setattr(gen_mod.G, "encoder_layer", off_by_one)
    assert main(_hls_args(prj, "--force", "--csim", "--json", str(summary))) == 1
    assert "differs from the golden model in 2 outputs" in capsys.readouterr().err
    report = json.loads((prj / "csim_report.json").read_text())
    assert report["mismatches"] == 2 and report["vectors"] == 2 and report["outputs"] == 2 * 17 * 32
    assert report["project"] == str(prj.resolve())  # the published folder, not the staging one
    got = np.loadtxt(prj / "tb_data/csim_results.dat", ndmin=2).astype(np.int64)
    assert np.array_equal(got, np.stack(truth).reshape(2, -1))  # g++ == the untampered golden model
    assert json.loads(summary.read_text())["csim"]["mismatches"] == 2
    assert _snapshot(prj) != old and _staging_left(tmp_path) == []


def test_compiler_process_group_dies_on_timeout(tmp_path):
    pid_file = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pid_file}; wait"
    with pytest.raises(Exception, match="timed out"):
        csim_mod._run(["sh", "-c", script], timeout=1.0)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{child}/stat").read_text().split()[2]
        except FileNotFoundError:
            break
        if state == "Z":  # killed, waiting to be reaped by init
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        pytest.fail("the grandchild process outlived the timeout")


def test_parallel_is_held_to_the_profile_range_and_budget_is_checked(tmp_path, capsys):
    for bad in ("0", "65", "1000"):
        prj = tmp_path / f"p{bad}"
        assert main(_hls_args(prj, "--parallel", bad)) == 2
        err = capsys.readouterr().err
        assert "must be >= 1 and <= 64" in err and err.count("\n") == 1 and not prj.exists()
    with pytest.raises(EdgeAttnError, match="<= 64"):
        estimate_model("edge_moe_vit", "zcu102-hls", attn_parallel=65)
    # P = 64 on the small model at 32 px (65 tokens, so every slot can be busy; head_dim 16): MAC 16x16x2 = 512,
    # q.k 64*16*2 = 2048, A.V 64*16*2 = 2048, exp 2*64*(2+1+1) = 512, GELU 16, LayerNorm 16 lanes * (e*e 29x29: 4
    # + d*inv 33x35: 4 + yn*gamma 26x32: 2) = 160: 5296 DSPs > 2520
    prj = tmp_path / "p64"
    assert main(_hls_args(prj, "--parallel", "64", "--set", "img_size=32")) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "does not fit the profile's budget: DSP 5296 of 2520" in out
    est = json.loads((prj / "project.json").read_text())["estimate"]
    assert est["dsp"]["total"] == 5296 and est["fits"] is False and est["budget"] == {"dsp": 2520, "bram18k": 1824}


def test_json_cannot_overwrite_the_project(tmp_path, capsys):
    prj = tmp_path / "prj"
    # the project's own files and a new name beside them alike: -o is replaced as a whole
    for target in (prj, prj / "project.json", prj / "tb_data" / "s.json", prj / "build_prj.tcl", prj / "s.json"):
        assert main(_hls_args(prj, "--json", str(target))) == 2
        err = capsys.readouterr().err
        assert "is inside the output folder" in err and err.count("\n") == 1
        assert not prj.exists() and _staging_left(tmp_path) == []
    # beside the project folder is fine
    assert main(_hls_args(prj, "--json", str(tmp_path / "summary.json"))) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["path"] == str(prj) and (prj / "project.json").is_file()


def test_checkpoint_errors_name_the_problem(tmp_path, capsys):
    assert main(_hls_args(tmp_path / "a", "--checkpoint", str(tmp_path))) == 2
    assert "is a folder, not a file" in capsys.readouterr().err
    wrong = tmp_path / "wrong.pt"
    torch.save({"not_a_key": torch.zeros(1)}, wrong)
    assert main(_hls_args(tmp_path / "b", "--checkpoint", str(wrong))) == 2
    err = capsys.readouterr().err
    n_keys = len(create_model("edge_moe_vit", embed_dim=32, img_size=16, num_heads=2, depth=2).state_dict())
    assert f"{n_keys} missing key(s)" in err and "1 unexpected key(s), e.g. 'not_a_key'" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_estimate_for_a_non_square_mac_array_matches_hand_arithmetic():
    prof = load_profile("zcu102-hls")
    hls = prof.hls.model_copy(update={"mac_rows": 5, "mac_cols": 7, "attn_parallel": 3, "clock_mhz": 250.0})
    fmt = HLSFormats(act_width=24, act_int=8, weight_width=12, weight_int=2, prob_frac=10, gelu_table_frac=12)
    est = estimate(LayerShape(tokens=17, dim=32, heads=2, hidden=128), hls, fmt)
    # linear(17,IN,OUT) = ceil(OUT/7) * (7 bias + 64 DDR latency + t*7 weight column + 17 drain + t*(7 + 17 + 6)),
    # t = ceil(IN/5): 88 + 37t; qkv 14*(88+37*7) = 14*347 = 4858, proj 5*347 = 1735; steps (6-1)*(17+3) + 2 + 17 =
    # 119, attention 2*(2*(119+8)+42) = 592; LayerNorm 2*17*(3*7 + isqrt 23 + divider 16+24+2) = 2924 (LN_F 16,
    # var 46 bits: layernorm_widths); residual 2*17*5 = 170; MLP 19*347 + 5 + 5*(88+37*26) = 11848; the layer's
    # input and output copies 2*17*32 = 1088
    assert est["cycles"] == {
        "qkv": 4858, "proj": 1735, "attention": 592, "layernorm": 2924, "residual": 170,
        "mlp_dense": 11848, "mlp_moe": 0, "io": 1088, "total": 23215,
    }  # fmt: skip
    # 24x12-bit MAC: 1 DSP; q.k 24x24: 2; A.V 10x24: 1; exp 25x25 + 2 x 17x25: 4; LayerNorm per lane e*e 25x25: 2,
    # d*inv 25 x 35 (34-bit unsigned inv): 2, yn*gamma 20x24: 2
    assert est["dsp"] == {
        "mac_array": 35, "attention_qk": 96, "attention_av": 48, "softmax_exp": 24, "gelu": 7,
        "layernorm": 30, "total": 240,
    }  # fmt: skip
    # buffers 17 x max(3*32, 128, 7) = 128 wide in min(lcm(5, 7, 16), 128) = 128 banks of 17 x 24 bits: one
    # block each, 3 buffers (x, a, b; no MoE) = 384; accumulators 7 banks of 17 x 64 bits (2 x 36 wide) = 14;
    # scores 3 banks of ceil(289/3) = 97 x 16 bits = 3; stats 17 x 64 bits = 2; parameters: 4 LayerNorm ROMs of
    # 32 in 5 banks (20) + 4*32 + 128 + 32 = 288 biases x 24 bits (1) = 21; the weight column: ceil(128/5)*7 = 182
    # words of 5*12 = 60 bits, 2 blocks 36 wide
    assert est["bram18k"] == {
        "activations": 384, "mac_accumulator": 14, "weight_column": 2, "scores": 3, "softmax_stats": 2,
        "parameters": 21, "total": 426,
    }  # fmt: skip
    # weights: qkv 14*7*7 + proj 5*7*7 + fc1 19*7*7 + fc2 5*26*7 = 686 + 245 + 931 + 910 = 2772 words of 5 x 12 bits
    assert est["ddr"]["weight_words"] == 2772 and est["ddr"]["weight_bytes"] == 2772 * 60 // 8
    assert est["ddr"]["peak_gb_s"] == pytest.approx(60 * 250e6 / 8 / 1e9)
    macs = 17 * 32 * 96 + 17 * 32 * 32 + 2 * 2 * 17 * 17 * 16 + 2 * 17 * 32 * 128
    assert est["macs"] == macs == 227392
    assert est["latency_us"] == pytest.approx(23215 / 250)
    assert est["dsp_floor_us"] == pytest.approx(macs * 1 / 2520 / 250)


def test_weight_column_holds_the_widest_linear_input_not_the_buffer_row(tmp_path):
    """D=24, hidden 36, patch 4x4x3 = 48 on a 3x33 MAC array: the buffer row is 3D = 72 (QKV's output), but no
    linear layer reads more than 48 inputs, so the column holds ceil(48/3) * 33 = 528 words (it was sized from the
    row: ceil(72/3) * 33 = 792). The whole ViT then runs bit-exactly in C simulation."""
    require_toolchain()
    from edgeattn.fpga_hls import run_csim
    from edgeattn.fpga_hls.estimate import buffer_width, weight_column_words

    prof = load_profile("zcu102-hls")
    prof = prof.model_copy(update={"hls": prof.hls.model_copy(update={"mac_rows": 3, "mac_cols": 33})})
    torch.manual_seed(0)
    kwargs = {"embed_dim": 24, "num_heads": 2, "img_size": 16, "depth": 2, "mlp_ratio": 1.5}
    net = create_model("edge_moe_vit", **kwargs).eval()
    prj = tmp_path / "wcol"
    info = generate_project(net, prof, prj, layer=None, vectors=2)
    shape = info.shape
    assert (shape.dim, shape.hidden, shape.patch_dim) == (24, 36, 48) and buffer_width(shape, prof.hls) == 72
    assert weight_column_words(shape, prof.hls) == 528
    assert "#define EA_WCOL_WORDS 528" in (prj / "firmware/parameters.h").read_text()
    assert run_csim(prj)["mismatches"] == 0
    # a dense layer whose fc2 input (hidden 128) is the widest: ceil(128/5) * 7 = 182 words
    assert weight_column_words(LayerShape(tokens=17, dim=32, heads=2, hidden=128), prof.hls.model_copy(
        update={"mac_rows": 5, "mac_cols": 7})) == 182


def test_weight_image_at_other_widths_holds_the_rounded_torch_weights(tmp_path):
    torch.manual_seed(0)
    net = create_model("edge_moe_vit", embed_dim=32, depth=2, num_heads=2, img_size=16, patch_size=4).eval()
    fmt = HLSFormats(act_width=24, act_int=8, weight_width=12, weight_int=2)
    prj = tmp_path / "w"
    generate_project(net, "zcu102-hls", prj, layer=1, vectors=1, formats=fmt)
    block = net.blocks[1]
    experts = len(block.mlp.experts)

    def rounded(tensor, frac: int) -> np.ndarray:
        return np.round(tensor.detach().double().numpy() * 2.0**frac).astype(np.int64)

    # weights (DDR image): round half to even of w * 2^10 (ap_fixed<12,2>); biases and gamma: * 2^16 (ap_fixed<24,8>)
    for name, tensor, index in [
        ("qkv", block.attn.qkv.weight, 0),
        ("proj", block.attn.proj.weight, 0),
        ("gate", block.mlp.gates[block.mlp.task].weight, 0),
        *[("efc1", e.fc1.weight, i) for i, e in enumerate(block.mlp.experts)],
        *[("efc2", e.fc2.weight, i) for i, e in enumerate(block.mlp.experts)],
    ]:
        expect = rounded(tensor, 10)
        assert np.array_equal(project_weight(prj, name, expect.shape, index), expect), (name, index)
    assert np.array_equal(project_bias(prj, "qkv", 96), rounded(block.attn.qkv.bias, 16))
    assert np.array_equal(project_bias(prj, "efc2", 32, experts - 1), rounded(block.mlp.experts[-1].fc2.bias, 16))
    assert np.array_equal(header_ints(prj, "ln2_g"), rounded(block.norm2.weight, 16))
    # tb_float.dat holds the torch block's outputs exactly (run_csim's reference), for the same seeded images
    images = torch.randn(1, *net.input_size, generator=torch.Generator().manual_seed(0))
    seen = {}
    block.register_forward_hook(lambda _m, _a, out: seen.setdefault("out", out))
    with torch.no_grad():
        net(images)
    ref = np.loadtxt(prj / "tb_data/tb_float.dat", ndmin=2)
    assert np.array_equal(ref, seen["out"].double().numpy().reshape(1, -1))
    params = (prj / "firmware/parameters.h").read_text()
    for line in ("EA_ACT_W 24", "EA_ACT_I 8", "EA_W_W 12", "EA_W_I 2", "EA_LAYER 0"):
        assert f"#define {line}" in params
    meta = json.loads((prj / "project.json").read_text())
    assert meta["formats"]["weight_width"] == 12 and meta["layer"] == 1


def test_a_profile_name_outside_ascii_makes_a_one_line_ascii_comment(tmp_path):
    # a non-ASCII profile name once failed with "'ascii' codec can't encode"; a newline would start a new line
    prof = load_profile("zcu102-hls").model_copy(update={"name": "Prüfstand\n#define EA_DIM 1"})
    torch.manual_seed(0)
    net = create_model("edge_moe_vit", embed_dim=32, depth=2, num_heads=2, img_size=16, patch_size=4).eval()
    generate_project(net, prof, tmp_path / "u", layer=0, vectors=1)
    lines = (tmp_path / "u/firmware/parameters.h").read_bytes().decode("ascii").splitlines()
    assert "// Profile Pr\\xfcfstand #define EA_DIM 1: xczu9eg-ffvb1156-2-e at 300 MHz." in lines
    assert [ln for ln in lines if ln.startswith("#define EA_DIM ")] == ["#define EA_DIM 32"]


def test_force_does_not_delete_a_folder_that_is_not_a_project(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(_hls_args(mine, "--force")) == 2
    err = capsys.readouterr().err
    assert "not an HLS project folder" in err and err.count("\n") == 1
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and _staging_left(tmp_path) == []
    # an empty folder is replaced
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(_hls_args(empty, "--force")) == 0 and (empty / "project.json").is_file()
