"""The fixed-point golden model, the edge_moe_vit model, the estimator and the generator (no compiler needed).

References are independent: float64 numpy/torch math, hand-computed integers, the approx spec's functions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _hls_toolchain import project_weight
from edgeattn.fpga_hls import HLSFormats, LayerShape, estimate, estimate_model, generate_project
from edgeattn.fpga_hls import golden as G
from edgeattn.fpga_hls.estimate import dsp_per_mult
from edgeattn.fpga_hls.extract import layer_params

from edgeattn.device_profile import load_profile
from edgeattn.errors import EdgeAttnError
from edgeattn.models import create_model
from edgeattn.models.edge_moe_vit import MoEMlp

FMT = HLSFormats()  # zcu102-hls defaults: ap_fixed<32,10> activations, ap_fixed<16,2> weights


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_formats_follow_the_profile():
    p = load_profile("zcu102-hls")
    fmt = HLSFormats.from_profile(p.hls)
    assert (fmt.act_width, fmt.act_frac, fmt.weight_frac, fmt.score_frac, fmt.prob_frac) == (
        32,
        22,
        14,
        10,
        8,
    )
    assert fmt == FMT


def test_wrap_and_floor_match_ap_fixed_semantics():
    # AP_WRAP: two's complement modulo 2^W; AP_TRN: floor (toward -inf) -- hand-computed cases
    assert G.wrap(np.array([127, 128, -129, 255, -128]), 8).tolist() == [127, -128, 127, -1, -128]
    x = np.array(
        [[3 << 14, -(1 << 14)]], dtype=np.int64
    )  # act ints (frac 22) are irrelevant here: small ints
    w = np.array([[1, 1]], dtype=np.int64)  # weight ints with 14 fraction bits: 2^-14 each
    b = np.array([0], dtype=np.int64)
    # (3*2^14 - 2^14) * 1 / 2^14 = 2 exactly
    assert G.linear(x, w, b, FMT).tolist() == [[2]]
    # -1 * 1 / 2^14 truncates to -1 (floor), not 0
    assert G.linear(np.array([[-1, 0]]), w, b, FMT).tolist() == [[-1]]
    # +1 / 2^14 truncates to 0
    assert G.linear(np.array([[1, 0]]), w, b, FMT).tolist() == [[0]]


def test_linear_matches_float64_within_one_lsb():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 40))
    w = rng.normal(scale=0.2, size=(7, 40))
    b = rng.normal(scale=0.1, size=7)
    xq, wq, bq = FMT.act.quantize(x), FMT.weight.quantize(w), FMT.act.quantize(b)
    y = G.linear(xq, wq, bq, FMT)
    ref = FMT.act.dequantize(xq) @ FMT.weight.dequantize(wq).T + FMT.act.dequantize(bq)
    err = np.abs(FMT.act.dequantize(y) - ref)
    assert err.max() <= FMT.act.lsb  # only the final truncation


def test_layernorm_matches_float64():
    rng = np.random.default_rng(1)
    x = rng.normal(scale=3.0, size=(9, 192)) + 0.5
    g, b = rng.normal(1.0, 0.1, size=192), rng.normal(0.0, 0.1, size=192)
    xq = FMT.act.quantize(x)
    y = FMT.act.dequantize(G.layernorm(xq, FMT.act.quantize(g), FMT.act.quantize(b), 1e-6, FMT))
    xd = FMT.act.dequantize(xq)
    ref = (xd - xd.mean(1, keepdims=True)) / np.sqrt(xd.var(1, keepdims=True) + 1e-6) * g + b
    assert np.abs(y - ref).max() < 2e-5


def test_attention_matches_float_softmax_attention():
    rng = np.random.default_rng(2)
    n, heads, hd = 17, 2, 16
    qkv = rng.normal(size=(n, 3 * heads * hd))
    qkv_q = FMT.act.quantize(qkv)
    out = FMT.act.dequantize(G.attention(qkv_q, heads, FMT))
    qd = FMT.act.dequantize(qkv_q).reshape(n, 3, heads, hd).transpose(1, 2, 0, 3)
    s = qd[0] @ qd[1].transpose(0, 2, 1) / math.sqrt(hd)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = (p @ qd[2]).transpose(1, 0, 2).reshape(n, heads * hd)
    # 8-bit probabilities: each within ~1 LSB (1/256), so outputs are close but not exact
    assert np.abs(out - ref).max() < 0.05
    assert _cos(out, ref) > 0.9995


def _block_io(block, n=65, dim=192, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, n, dim, generator=gen)
    with torch.no_grad():
        return x[0].double().numpy(), block(x)[0].double().numpy()


def test_encoder_layer_cosine_at_default_widths_meets_target():
    # the shape: tokens 65, dim 192, heads 3; default widths -> cosine >= 0.999 vs float
    model = create_model("edge_moe_vit").eval()
    block = model.blocks[0]
    x, ref = _block_io(block)
    lp = layer_params(block, FMT, "blocks.0")
    stats = G.GoldenStats()
    y = FMT.act.dequantize(G.encoder_layer(FMT.act.quantize(x), lp, FMT, stats))
    assert not stats.overflow
    assert _cos(y, ref) >= 0.999
    assert np.abs(y - ref).max() < 0.1


def test_error_grows_as_fraction_bits_shrink():
    model = create_model("vit_tiny", embed_dim=48, depth=1, img_size=16).eval()  # one dense block, 17 tokens
    block = model.blocks[0]
    x, ref = _block_io(block, n=17, dim=48)
    errs = []
    for act_w, w_w in [(32, 16), (20, 10), (16, 8)]:
        fmt = HLSFormats(act_width=act_w, act_int=6, weight_width=w_w, weight_int=2)
        lp = layer_params(block, fmt, "b")
        y = fmt.act.dequantize(G.encoder_layer(fmt.act.quantize(x), lp, fmt))
        errs.append(np.abs(y - ref).max())
    assert errs[0] < errs[1] < errs[2]


def test_moe_golden_follows_float_routing_and_mixing():
    torch.manual_seed(3)
    moe = MoEMlp(32, 64, num_experts=4, top_k=2).eval()
    x = torch.randn(10, 32)
    with torch.no_grad():
        ref = moe(x).double().numpy()
        top = moe.gates[0](x).topk(2, dim=-1).indices.numpy()

    class _Blk:  # only the MLP matters here
        pass

    from edgeattn.fpga_hls.extract import _linear

    lp = G.LayerParams(*(None,) * 8, num_heads=1, ln1_eps=0.0, ln2_eps=0.0)
    lp.gate_w, lp.gate_b = _linear(moe.gates[0], FMT, "gate")
    pairs = [(_linear(e.fc1, FMT, "fc1"), _linear(e.fc2, FMT, "fc2")) for e in moe.experts]
    lp.efc1_w, lp.efc1_b = np.stack([p[0][0] for p in pairs]), np.stack([p[0][1] for p in pairs])
    lp.efc2_w, lp.efc2_b = np.stack([p[1][0] for p in pairs]), np.stack([p[1][1] for p in pairs])
    lp.top_k = 2
    xq = FMT.act.quantize(x.double().numpy())
    out = FMT.act.dequantize(G.moe_mlp(xq, lp, FMT))
    logits = G.linear(xq, lp.gate_w, lp.gate_b, FMT)
    assert np.array_equal(np.sort(np.argsort(-logits, axis=1, kind="stable")[:, :2], 1), np.sort(top, 1))
    assert _cos(out, ref) > 0.999
    assert np.abs(out - ref).max() < 0.02


def test_edge_moe_vit_model():
    model = create_model("edge_moe_vit", embed_dim=32, depth=2, num_heads=2, img_size=16, num_tasks=2).eval()
    assert model.input_size == (3, 16, 16)
    moe = model.blocks[1].mlp
    assert isinstance(moe, MoEMlp) and not isinstance(model.blocks[0].mlp, MoEMlp)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        y0 = model(x)
        tokens = torch.randn(2, 17, 32)
        w = moe.gate_weights(tokens)
        # exactly top_k non-zero weights per token, summing to 1
        assert torch.all((w > 0).sum(-1) == 2)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 17))
        # dense mixture == explicit sparse sum over the selected experts
        sparse = sum(w[..., e : e + 1] * moe.experts[e](tokens) for e in range(4))
        torch.testing.assert_close(moe(tokens), sparse)
        model.set_task(1)
        y1 = model(x)
    assert y0.shape == y1.shape == (2, 10)
    assert not torch.allclose(y0, y1)  # task 1 has its own gates and head
    with pytest.raises(ValueError, match="task"):
        model.set_task(2)


def test_dsp_per_mult_and_estimate_arithmetic():
    assert dsp_per_mult(27, 18) == 1
    assert dsp_per_mult(18, 27) == 1
    assert dsp_per_mult(32, 16) == 2
    assert dsp_per_mult(26, 26) == 2
    # a wide operand's lower pieces are unsigned: 26 bits on the 27-bit port, 17 on the 18-bit one
    assert dsp_per_mult(36, 36) == 2 * 3  # 27 + 26 >= 36 ; 18 + 17 + 17 >= 36
    assert dsp_per_mult(27, 36) == 1 * 3  # (36 on the 27-bit port: 2 x 27 on the 18-bit port: 2 = 4)
    assert dsp_per_mult(44, 35) == 2 * 2 and dsp_per_mult(54, 35) == 3 * 2  # 27 + 26 = 53 < 54
    hls = load_profile("zcu102-hls").hls
    est = estimate(LayerShape(tokens=65, dim=192, heads=3, hidden=768), hls, FMT)
    # hand-computed: qkv = ceil(576/16) * (16 bias + 64 DDR latency + 12*16 weight column + 65 drain
    # + ceil(192/16) * (16 + 65 + 6)) = 36 * (337 + 12*87)
    assert est["cycles"]["qkv"] == 36 * (337 + 12 * 87)
    # reordered attention, P = 4: (ceil(65/4) - 1) * (65 + 4) + 3 + 65 steps per pass
    assert "= 1172" in est["arithmetic"][3]
    assert est["macs"] == 65 * 192 * 576 + 65 * 192 * 192 + 2 * 3 * 65 * 65 * 64 + 2 * 65 * 192 * 768
    assert est["dsp"]["mac_array"] == 16 * 16 * 2
    assert est["latency_us"] == pytest.approx(est["cycles"]["total"] / 300.0)
    assert est["dsp_floor_us"] == pytest.approx(est["macs"] * 2 / 2520 / 300.0)
    assert est["dsp_floor_us"] < est["latency_us"]
    # more query rows in flight -> fewer attention cycles
    hls1 = hls.model_copy(update={"attn_parallel": 1})
    assert (
        estimate(LayerShape(65, 192, 3, 768), hls1, FMT)["cycles"]["attention"] > est["cycles"]["attention"]
    )


def _small():
    return create_model("edge_moe_vit", embed_dim=32, depth=2, num_heads=2, img_size=16, patch_size=4).eval()


def test_generator_writes_an_hls4ml_shaped_project(tmp_path):
    prj = tmp_path / "prj"
    info = generate_project(_small(), "zcu102-hls", prj, layer=1, vectors=2)
    for rel in (
        "firmware/edgeattn_top.cpp",
        "firmware/parameters.h",
        "firmware/weights.h",
        "firmware/ea/ea_tables.h",
        "firmware/ea/ea_attention.h",
        "tb/edgeattn_tb.cpp",
        "tb_data/tb_input.dat",
        "tb_data/tb_golden.dat",
        "tb_data/tb_float.dat",
        "build_prj.tcl",
        "project.json",
        "README.md",
        "tb_data/weights.dat",
    ):
        assert (prj / rel).is_file(), rel
    assert info.top == "encoder_layer_top" and info.shape.experts == 4 and info.shape.tokens == 17
    tcl = (prj / "build_prj.tcl").read_text()
    for line in (
        "set_top encoder_layer_top",
        "set_part {xczu9eg-ffvb1156-2-e}",
        "create_clock -period 3.333 -name default",
        "config_interface -m_axi_addr64",
        "csim_design",
        "csynth_design",
        "cosim_design",
        "export_design -format ip_catalog",
    ):
        assert line in tcl
    params = (prj / "firmware/parameters.h").read_text()
    assert (
        "#define EA_ATTN_P 4" in params
        and "#define EA_N_MOE 1" in params
        and "#define EA_QSCALE_RAW 16384" in params
    )
    header = (prj / "tb_data/tb_input.dat").read_text().splitlines()[0]
    assert header == f"2 {17 * 32} {17 * 32}"
    assert not any(p.name.startswith(".prj") for p in tmp_path.iterdir())  # no temp folder left


def test_generator_reports_the_approximations_share_of_the_error(tmp_path):
    """``approx_vs_float``: the model rebuilt here with the profile's online softmax and EdgeMoE GELU against the
    model as given, on the generator's test images; a small part of the fixed-point model's error."""
    import json

    model = _small()
    info = generate_project(model, "zcu102-hls", tmp_path / "a", layer=None, vectors=3, seed=5)
    twin = create_model(
        "edge_moe_vit", embed_dim=32, depth=2, num_heads=2, img_size=16, patch_size=4, softmax="online", gelu="edgemoe"
    ).eval()
    twin.load_state_dict(model.state_dict())
    images = torch.randn(3, *model.input_size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        gap = (twin(images).double() - model(images).double()).abs().max().item()
    got = info.approx_vs_float["max_abs_err"]
    assert got == pytest.approx(gap, rel=1e-6) and got > 0
    assert got < 0.05 * info.golden_vs_float["max_abs_err"]  # the fixed-point arithmetic dominates
    assert json.loads((tmp_path / "a/project.json").read_text())["approx_vs_float"]["max_abs_err"] == got
    # a model that already computes the profile's methods: no approximation gap at all
    again = generate_project(twin, "zcu102-hls", tmp_path / "b", layer=1, vectors=2)
    assert again.approx_vs_float["max_abs_err"] == 0.0 and again.approx_vs_float["cosine"] == pytest.approx(1.0)


def test_generator_refuses_bad_input_without_leaving_files(tmp_path):
    prj = tmp_path / "p"
    # a block the templates cannot take
    model = _small()
    model.blocks[0].attn = torch.nn.Identity()
    with pytest.raises(EdgeAttnError, match="not edgeattn Attention"):
        generate_project(model, "zcu102-hls", prj, layer=0)
    # activations that overflow the declared range on the test vectors
    narrow = load_profile("zcu102-hls").model_copy(deep=True)
    hls = narrow.hls.model_copy(update={"act": narrow.hls.act.model_copy(update={"width": 20, "integer": 3})})
    narrow = narrow.model_copy(update={"hls": hls})
    loud = _small()
    with torch.no_grad():
        loud.blocks[0].attn.proj.weight.fill_(1.9)  # fits ap_fixed<16,2>; the sums do not fit +-4
    with pytest.raises(EdgeAttnError, match="activation overflow .*blocks.0.proj"):
        generate_project(loud, narrow, prj, layer=0)
    # a profile without an hls section
    with pytest.raises(EdgeAttnError, match="hls"):
        generate_project(_small(), "host-cpu", prj, layer=0)
    assert list(tmp_path.iterdir()) == []
    prj.mkdir()
    with pytest.raises(EdgeAttnError, match="already exists"):
        generate_project(_small(), "zcu102-hls", prj, layer=0)


def test_output_folder_that_would_delete_the_callers_files_is_refused(tmp_path, monkeypatch, capsys):
    from edgeattn.cli import main

    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("keep")
    (work / "afile").write_text("a file, not a folder")
    monkeypatch.chdir(work)
    # '.' and '..' once staged the project inside the folder, then deleted it with everything in it
    for out in (".", "..", str(work), "afile"):
        with pytest.raises(EdgeAttnError, match="working directory|not a folder"):
            generate_project(_small(), "zcu102-hls", out, layer=0, force=True)
        assert main(["hls", "edge_moe_vit", "-o", out, "--force"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in work.iterdir()) == ["afile", "mine.txt"]
    assert (work / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_estimate_model_checks_like_the_generator():
    with pytest.raises(EdgeAttnError, match="layer -1 does not exist"):
        estimate_model("edge_moe_vit", "zcu102-hls", layer=-1)
    with pytest.raises(EdgeAttnError, match="layer 5 does not exist"):
        estimate_model("edge_moe_vit", "zcu102-hls", layer=5)
    with pytest.raises(EdgeAttnError, match="attn_parallel must be >= 1"):
        estimate_model("edge_moe_vit", "zcu102-hls", attn_parallel=0)


def test_cli_bad_model_argument_is_one_line(tmp_path, capsys):
    from edgeattn.cli import main

    assert main(["hls", "edge_moe_vit", "-o", str(tmp_path / "p"), "--set", "embed_dim=abc"]) == 2
    err = capsys.readouterr().err
    assert "--set embed_dim='abc'" in err and err.count("\n") == 1
    assert not (tmp_path / "p").exists()


def test_a_bug_in_model_building_is_not_reported_as_a_bad_set(monkeypatch):
    from edgeattn.cli import hls as hls_cli

    def broken(*_a, **_k):
        raise TypeError("a bug, not the user's --set")

    monkeypatch.setattr("edgeattn.models.create_model", broken)
    with pytest.raises(TypeError, match="a bug"):
        hls_cli._load_model("vit_tiny", None, {"embed_dim": 96})


def test_gelu_table_fraction_bits_are_bounded():
    HLSFormats(gelu_table_frac=24).check()
    with pytest.raises(ValueError, match="gelu_table_frac must be in 8..24"):
        HLSFormats(gelu_table_frac=25).check()  # entries past 2^31 would wrap in the C++ int table


def _weight(prj, name: str, like: np.ndarray) -> np.ndarray:
    """Layer-0 weight ``name`` of a project's DDR image, flat, in the shape of ``like`` (out x whatever)."""
    return project_weight(prj, name, (like.shape[0], like.size // like.shape[0])).ravel()


def test_cli_checkpoint_weights_reach_the_weight_image(tmp_path, capsys):
    import json

    from edgeattn.quant.checkpoint import save_checkpoint

    from edgeattn.cli import main

    kwargs = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 16}
    sets = [a for k, v in kwargs.items() for a in ("--set", f"{k}={v}")]
    torch.manual_seed(7)
    model = create_model("edge_moe_vit", **kwargs).eval()
    expect = np.round(model.blocks[0].attn.qkv.weight.detach().double().numpy() * 2**14).astype(np.int64)
    # a plain state_dict, rebuilt with --set
    plain = tmp_path / "sd.pt"
    torch.save(model.state_dict(), plain)
    assert main(["hls", "edge_moe_vit", "-o", str(tmp_path / "a"), "--checkpoint", str(plain), *sets]) == 0
    assert np.array_equal(_weight(tmp_path / "a", "qkv", expect), expect.ravel())
    out = capsys.readouterr().out
    assert "fixed point vs the float model:" in " ".join(out.split())
    note = [ln for ln in out.splitlines() if ln.startswith("note:")]
    assert len(note) == 1 and "computes softmax exact and gelu exact; the design computes softmax online" in note[0]
    # an `edgeattn qat` checkpoint (float model): meta rebuilds the model
    ckpt = tmp_path / "m.ckpt"
    meta = {"model": "edge_moe_vit", "model_kwargs": kwargs, "quant": None, "reparameterized": False}
    save_checkpoint(ckpt, model, meta)
    assert main(["hls", "edge_moe_vit", "-o", str(tmp_path / "b"), "--checkpoint", str(ckpt)]) == 0
    assert np.array_equal(_weight(tmp_path / "b", "qkv", expect), expect.ravel())
    assert json.loads((tmp_path / "b/project.json").read_text())["reference"] == "the float model"
    note = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note:")]
    assert len(note) == 1 and "was trained with softmax exact and gelu exact" in note[0]
    # --set with an `edgeattn qat` checkpoint (which rebuilds its own model) is refused, not ignored
    assert main(["hls", "edge_moe_vit", "-o", str(tmp_path / "c"), "--checkpoint", str(ckpt), *sets[:2]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--set embed_dim=32" in err and "rebuilds its own model" in err
    # a checkpoint of another model / a state_dict that does not fit: one line, exit 2, no project
    assert main(["hls", "vit_tiny", "-o", str(tmp_path / "c"), "--checkpoint", str(ckpt)]) == 2
    assert "holds a 'edge_moe_vit' model" in capsys.readouterr().err
    assert main(["hls", "edge_moe_vit", "-o", str(tmp_path / "c"), "--checkpoint", str(plain)]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------ quantized `edgeattn qat` checkpoints
TINY_VIT = {"num_classes": 10, "img_size": 16, "depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 4}
W_FRAC = 14  # ap_fixed<16,2> weights of zcu102-hls


def _quant_checkpoint(path, bits: str, approx: dict, **quant) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(float model, calibrated brevitas model) of a tiny vit_tiny under the fpga preset, saved at ``path``."""
    from edgeattn.quant import QuantConfig, ptq
    from edgeattn.quant.checkpoint import save_checkpoint

    kwargs = {**TINY_VIT, **approx}
    torch.manual_seed(11)
    model = create_model("vit_tiny", **kwargs).eval()
    cfg = QuantConfig.from_profile("zcu102-hls").with_bits(bits)
    cfg = QuantConfig.parse({**cfg.model_dump(), **quant})
    qmodel = ptq(model, cfg, [torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))])
    save_checkpoint(path, qmodel, {"model": "vit_tiny", "model_kwargs": kwargs, "quant": cfg})
    return model, qmodel


def _expected_raw(layer, bits: int) -> np.ndarray:
    """Independent reference: the master weights on the quantizer's grid (signed, narrow range, round half to
    even), as raw ints of the profile's weight type."""
    scale = float(layer.quant_weight().scale.detach())
    w = layer.weight.detach().double().numpy()
    qmax = 2 ** (bits - 1) - 1
    ints = np.clip(np.round(w / scale), -qmax, qmax)
    raw = ints * scale * 2**W_FRAC
    assert np.array_equal(raw, np.round(raw))  # a power-of-two scale >= 2^-14: exact on the weight grid
    return raw.astype(np.int64)


def test_cli_4bit_checkpoint_weights_are_the_trained_ones(tmp_path, capsys):
    import json

    from edgeattn.cli import main

    ckpt = tmp_path / "w4a4.pt"
    model, qmodel = _quant_checkpoint(ckpt, "w4a4", {"softmax": "online", "gelu": "edgemoe"})
    prj = tmp_path / "p"
    # random images (compared below), against the fake-quant model (--reference checkpoint): the design's 32-bit
    # activations vs the W4A4 model's 4-bit ones miss the default accuracy gate (cosine 0.95 on these untrained
    # weights), so the test sets looser bounds
    args = ["--layer", "all", "--vectors", "2", "--vectors-from", "random", "--min-cosine", "0.8", "--atol", "0.3",
            "--reference", "checkpoint"]
    assert main(["hls", "vit_tiny", "-o", str(prj), "--checkpoint", str(ckpt), *args]) == 0
    out = capsys.readouterr().out
    blk = qmodel.blocks[0]
    layers = {
        "qkv": blk.attn.qkv,
        "proj": blk.attn.proj,
        "fc1": blk.mlp.fc1,
        "fc2": blk.mlp.fc2,
        "patch": qmodel.patch_embed,
        "head": qmodel.head,
    }
    for name, layer in layers.items():
        raw = _expected_raw(layer, 4)
        expect, got = raw.ravel(), _weight(prj, name, raw)
        assert len(np.unique(got)) <= 15, name  # 4-bit narrow range: -7..7 steps of the scale
        assert np.array_equal(got, expect), name
    # not the float master weights (what was generated before)
    master = np.round(model.blocks[0].attn.qkv.weight.detach().double().numpy() * 2**W_FRAC)
    assert not np.array_equal(_weight(prj, "qkv", master), master.ravel())
    # the reference is the checkpoint's fake-quant model, and the project says so
    saved = json.loads((prj / "project.json").read_text())
    assert saved["reference_bits"] == "W4A4" and saved["reference"].startswith("the fake-quant W4A4 model")
    assert "ap_fixed<32,10>" in saved["reference"] and "golden_vs_float" in saved
    assert saved["stats"]["quant_weights"] == {"tensors": 6, "rerounded": 0, "max_change": 0.0}
    assert "fixed point vs the checkpoint's W4A4 model (--reference checkpoint):" in " ".join(out.split())
    assert "note:" not in out  # trained with the design's softmax/GELU; weights exact
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fake_quant, fp = qmodel(images).double().numpy(), model(images).double().numpy()
    tb_float = np.loadtxt(prj / "tb_data/tb_float.dat", ndmin=2)
    assert np.abs(tb_float - fake_quant).max() < 1e-6
    assert np.abs(tb_float - fp).max() > 1e-2  # the float model would be a different reference


def test_cli_notes_for_what_the_design_does_not_take(tmp_path, capsys):
    """Token-adaptive bits, exact softmax/GELU and 16-bit weights finer than the weight type: one note each."""
    import json

    from edgeattn.cli import main

    ckpt = tmp_path / "ta.pt"
    _model, qmodel = _quant_checkpoint(ckpt, "w16a8", {}, token_adaptive=True, low_act_bits=4)
    prj = tmp_path / "p"
    assert main(["hls", "vit_tiny", "-o", str(prj), "--checkpoint", str(ckpt), "--vectors", "2"]) == 0
    notes = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note:")]
    assert len(notes) == 3, notes
    token, approx, grid = notes
    assert "token-adaptive" in token and "act bits (8)" in token and "4-bit" in token
    assert "trained with softmax exact and gelu exact" in approx
    assert "design computes softmax online and GELU edgemoe" in approx
    saved = json.loads((prj / "project.json").read_text())
    assert saved["approx"]["model"] == {"softmax": ["exact"], "gelu": ["exact"]}
    assert f"approx_vs_float {saved['approx_vs_float']['max_abs_err']:.3g}" in approx
    # 16-bit weights with a 2^-17 scale: rounded to the 2^-14 grid, half to even, from the quantized values
    lin = qmodel.blocks[0].attn.qkv
    value = lin.quant_weight().value.detach().double().numpy()
    assert float(lin.quant_weight().scale.detach()) < 2.0**-W_FRAC
    got = _weight(prj, "qkv", value)
    assert np.array_equal(got, np.round(value * 2**W_FRAC).astype(np.int64).ravel())
    q = saved["stats"]["quant_weights"]
    assert q["tensors"] == 4 and q["rerounded"] == 4  # qkv, proj, fc1, fc2 of the layer
    assert 0 < q["max_change"] <= 2.0 ** -(W_FRAC + 1)
    assert "4 of 4 quantized weight tensors are off the ap_fixed<16,2> grid" in grid
