"""edgeattn.quant: QuantConfig, presets, quantize_model, PTQ calibration, checkpoints, QCDQ export."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from brevitas import nn as qnn
from edgeattn.quant import QuantConfig, calibrate, ptq, quantize_model
from edgeattn.quant.checkpoint import load_checkpoint, save_checkpoint
from edgeattn.quant.ptq import samples_per_forward
from torch import nn

from edgeattn.errors import EdgeAttnError
from edgeattn.models import create_model

TINY_VIT = {"num_classes": 10, "img_size": 16, "depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 4}


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return create_model("vit_tiny", **TINY_VIT).eval()


# ------------------------------------------------------------------------------------------------ config
def test_config_from_profiles_follow_the_profile_bits():
    assert QuantConfig.from_profile("intel-avx2-openvino").weight_bits == 7
    trt = QuantConfig.from_profile("rtx-trt11")
    assert (trt.weight_bits, trt.act_bits, trt.act_signed, trt.softmax_signed, trt.preset) == (
        8,
        8,
        True,
        True,
        "tensorrt",
    )
    fpga = QuantConfig.from_profile("zcu102-hls")
    assert (fpga.weight_bits, fpga.act_bits, fpga.preset) == (16, 16, "fpga")


@pytest.mark.parametrize(
    ("setting", "expected"), [("w8a8", (8, 8)), ("W4A8", (4, 8)), ("w4a4", (4, 4)), ("profile", (8, 8))]
)
def test_bit_settings(setting, expected):
    cfg = QuantConfig().with_bits(setting)
    assert (cfg.weight_bits, cfg.act_bits) == expected
    assert cfg.low_act_bits <= cfg.act_bits


def test_w8a8_on_a_7bit_profile_keeps_7bit_weights():
    assert QuantConfig.from_profile("intel-avx2-openvino").with_bits("w8a8").weight_bits == 7


def test_kv_cap_limits_k_and_v_only():
    """kv_max_bits (7 on x86 without VNNI) caps the attention matmuls' second operands, K and V, and nothing else;
    an override below the cap stays, bit settings keep the cap, and the built quantizers have those widths."""
    from edgeattn.models import create_model

    cfg = QuantConfig(kv_max_bits=7, overrides={"blocks.1.*": {"act_bits": 6}})
    assert cfg.act_bits_for("blocks.0.attn.k_quant") == cfg.act_bits_for("blocks.0.attn.v_quant") == 7
    for point in ("q_quant", "attn_quant", "proj_in_quant", "in_quant"):
        assert cfg.act_bits_for(f"blocks.0.attn.{point}") == 8, point
    assert cfg.act_bits_for("blocks.1.attn.k_quant") == 6
    assert cfg.with_bits("w8a8").kv_max_bits == 7 and cfg.with_bits("w4a4").act_bits_for("a.v_quant") == 4
    assert QuantConfig.from_profile("intel-avx2-openvino").kv_max_bits == 7
    assert QuantConfig.from_profile("intel-vnni-openvino").kv_max_bits is None
    model = quantize_model(create_model("vit_tiny", num_classes=10, img_size=32), cfg)
    bits = {n.rsplit(".", 1)[-1]: float(m.act_quant.bit_width()) for n, m in model.named_modules()
            if n.startswith("blocks.0.attn.") and n.endswith("_quant") and hasattr(m, "act_quant")}
    assert bits["k_quant"] == bits["v_quant"] == 7.0 and bits["q_quant"] == bits["attn_quant"] == 8.0
    with pytest.raises(EdgeAttnError, match="kv_max_bits"):
        QuantConfig.parse({"kv_max_bits": 1})


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"weight_bits": 1}, "weight_bits"),
        ({"act_bits": 17}, "act_bits"),
        ({"wieght_bits": 8}, "unknown key 'wieght_bits'"),
        ({"overrides": {"head": {"bits": 8}}}, "unknown key"),
        ({"calibration": "mse"}, "calibration"),
    ],
)
def test_config_rejects_bad_input_with_one_clear_line(data, needle):
    with pytest.raises(EdgeAttnError) as err:
        QuantConfig.parse(data)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_bit_setting_names_what_is_allowed():
    with pytest.raises(EdgeAttnError, match="2 to 16"):
        QuantConfig().with_bits("w1a8")
    with pytest.raises(EdgeAttnError, match="wNaM"):
        QuantConfig().with_bits("int8")



def test_fpga_preset_refuses_unsigned_activations():
    # the fixed-point activation quantizer is signed (ap_fixed); act_signed: false used to be ignored silently
    with pytest.raises(ValueError, match="act_signed must be true"):
        QuantConfig.from_profile("zcu102-hls", act_signed=False)
    assert QuantConfig.from_profile("zcu102-hls").act_signed is True


@pytest.mark.parametrize("signed", [False, True])
def test_fpga_softmax_output_follows_softmax_signed(signed):
    """zcu102-hls says softmax_signed: false; the fixed-point softmax quantizer must then be unsigned."""
    from edgeattn.quant import presets

    assert QuantConfig.from_profile("zcu102-hls").softmax_signed is False
    cfg = QuantConfig.from_profile("zcu102-hls", softmax_signed=signed)
    expected = "Int8ActPerTensorFixedPoint" if signed else "Uint8ActPerTensorFixedPoint"
    assert presets.describe(cfg)["softmax"] == expected
    q = quantize_model(tiny_vit(), cfg)
    point = q.blocks[0].attn.attn_quant
    x = torch.randn(8, 3, 16, 16)
    calibrate(q, [x])
    aq = point.act_quant
    assert bool(aq.is_signed) is signed and int(aq.bit_width()) == 16
    scale = float(aq.scale().detach())
    assert scale == 2.0 ** round(np.log2(scale))  # power of two: an ap_fixed / ap_ufixed format
    seen = {}
    hook = point.register_forward_hook(lambda _m, _a, o: seen.update(out=o))
    with torch.no_grad():
        q(x)
    hook.remove()
    ints = seen["out"] / scale
    torch.testing.assert_close(ints, ints.round(), rtol=0, atol=1e-3)
    assert ints.min() >= 0
    assert ints.max() <= (2**15 - 1 if signed else 2**16 - 1)
    if not signed:
        assert ints.max() > 2**15 - 1  # the unsigned grid uses the bit a signed one spends on the sign

# ------------------------------------------------------------------------------------------------
# quantize_model
def test_quantize_vit_swaps_layers_and_quant_points():
    model = tiny_vit()
    q = quantize_model(model, QuantConfig(weight_bits=7, preset="openvino"))
    assert not q.training
    assert model.blocks[0].attn.qkv.__class__ is nn.Linear  # the original is untouched
    attn = q.blocks[0].attn
    assert isinstance(attn.qkv, qnn.QuantLinear) and isinstance(attn.proj, qnn.QuantLinear)
    assert isinstance(q.patch_embed, qnn.QuantConv2d) and isinstance(q.head, qnn.QuantLinear)
    for point in ("in_quant", "q_quant", "k_quant", "v_quant", "attn_quant", "proj_in_quant"):
        assert isinstance(getattr(attn, point), qnn.QuantIdentity), point
    assert isinstance(q.blocks[0].mlp.hidden_quant, qnn.QuantIdentity)
    assert isinstance(attn.logits_probe, nn.Identity)  # never quantized
    # inside a block the quant points quantize the layer inputs; stems and heads quantize their own input
    assert not attn.qkv.input_quant.is_quant_enabled
    assert q.patch_embed.input_quant.is_quant_enabled and q.head.input_quant.is_quant_enabled
    # 7-bit weights (as on x86 without VNNI), float bias everywhere
    for layer in (attn.qkv, attn.proj, q.head, q.patch_embed):
        assert int(layer.quant_weight().bit_width) == 7
        assert not layer.bias_quant.is_quant_enabled


def test_avx2_profile_quantizes_convolutions_only():
    """intel-avx2-openvino: Linear layers, the quant points feeding only them, and attention stay float."""
    cfg = QuantConfig.from_profile("intel-avx2-openvino")
    assert cfg.weight_bits == 7 and not cfg.quantize_linear and not cfg.quantize_attention
    vit = quantize_model(tiny_vit(), cfg)
    attn, mlp = vit.blocks[0].attn, vit.blocks[0].mlp
    assert type(attn.qkv) is nn.Linear and type(mlp.fc1) is nn.Linear and type(vit.head) is nn.Linear
    for point in (attn.in_quant, attn.q_quant, attn.attn_quant, attn.proj_in_quant, mlp.in_quant, mlp.hidden_quant):
        assert type(point) is nn.Identity
    assert isinstance(vit.patch_embed, qnn.QuantConv2d)
    # FMViT: its MLP is 1x1 convolutions, so their quant points stay; RLMHSA's Linear inputs do not
    fm = quantize_model(create_model("fmvit_t", num_classes=10, img_size=32).eval(), cfg)
    names = {n: type(m) for n, m in fm.named_modules()}
    assert not any(t is qnn.QuantLinear for t in names.values())
    assert any(t is qnn.QuantConv2d for t in names.values())
    assert all(t is nn.Identity for n, t in names.items() if n.endswith(("attn.in_quant", "kv_in_quant", "q_quant")))
    assert any(t is qnn.QuantIdentity for n, t in names.items() if n.endswith("mlp.hidden_quant"))
    with torch.no_grad():  # still a working model
        assert torch.isfinite(fm(torch.randn(2, 3, 32, 32))).all()


def test_weight_fake_quant_matches_hand_computed_lsq_init():
    torch.manual_seed(1)
    lin = nn.Linear(16, 6)
    q = quantize_model(nn.Sequential(lin), {"weight_bits": 7})[0]
    qt = q.quant_weight()
    w = lin.weight.detach().double().numpy()
    # symmetric narrow range: 7 bits -> integers in [-63, 63], scale per output channel (axis 0) from abs-max
    scale = np.abs(w).max(axis=1, keepdims=True) / 63.0
    expected = np.clip(np.round(w / scale), -63, 63) * scale
    assert tuple(qt.scale.shape) == (6, 1)
    np.testing.assert_allclose(qt.scale.detach().double().numpy(), scale, rtol=1e-6)
    np.testing.assert_allclose(qt.value.detach().double().numpy(), expected, rtol=0, atol=1e-6)
    assert float(qt.zero_point.abs().max()) == 0.0
    # the scale is a learned parameter (LSQ-style), initialised from the weights
    assert any("scaling_impl.value" in n for n, _ in q.named_parameters())


def _channel_mse(w: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    """Per-row mean squared error of symmetric narrow-range quantization of ``w`` with ``scale`` (float64)."""
    return ((np.clip(np.round(w / scale), -qmax, qmax) * scale - w) ** 2).mean(axis=1)


def test_mse_weight_scale_init_beats_absmax_and_is_near_the_grid_optimum():
    """``weight_scale_init='mse'`` (brevitas' MSE grid search) against a float64 search over 400 clip ratios."""
    torch.manual_seed(3)
    lin = nn.Linear(64, 8)
    with torch.no_grad():  # heavy-tailed rows: one outlier per row makes abs-max a poor 4-bit clip
        lin.weight[:, 0] *= 8.0
    w = lin.weight.detach().double().numpy()
    qmax = 7  # 4 bits, narrow range
    absmax = np.abs(w).max(axis=1, keepdims=True)
    q = quantize_model(nn.Sequential(lin), {"weight_bits": 4, "weight_scale_init": "mse"})[0]
    mse_scale = q.quant_weight().scale.detach().double().numpy()
    assert mse_scale.shape == (8, 1)
    ratios = np.linspace(0.05, 1.0, 400)
    grid = np.stack([_channel_mse(w, absmax * r / qmax, qmax) for r in ratios], axis=1)  # (rows, ratios)
    best = grid.min(axis=1)
    ours = _channel_mse(w, mse_scale, qmax)
    at_absmax = _channel_mse(w, absmax / qmax, qmax)
    assert (ours < at_absmax).all()  # a tighter clip than abs-max in every row
    assert (ours <= best * 1.10).all(), (ours / best).max()  # and within 10% of the grid's optimum
    assert (mse_scale < absmax / qmax).all()
    # the MSE scale is still a learned parameter, and a checkpoint keeps it exactly
    assert any("scaling_impl.value" in n for n, _ in q.named_parameters())


def test_mse_weight_init_checkpoint_roundtrip(tmp_path):
    model = tiny_vit()
    cfg = QuantConfig.parse({"weight_bits": 4, "weight_scale_init": "mse"})
    q = ptq(model, cfg, [torch.randn(8, 3, 16, 16)])
    path = save_checkpoint(tmp_path / "q.pt", q, {"model": "vit_tiny", "model_kwargs": TINY_VIT, "quant": cfg})
    loaded, meta = load_checkpoint(path)
    assert meta["quant"]["weight_scale_init"] == "mse"
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), q(x), rtol=0, atol=0)


def test_per_tensor_weights_when_the_profile_says_so():
    q = quantize_model(nn.Sequential(nn.Linear(8, 4)), {"weight_per_channel": False})[0]
    assert q.quant_weight().scale.numel() == 1


def test_minmax_calibration_gives_absmax_over_128_scale():
    torch.manual_seed(2)
    x = torch.randn(64, 8) * 3
    q = quantize_model(nn.Sequential(nn.Linear(8, 4)), {"calibration": "minmax"})
    calibrate(q, [x])
    scale = float(q[0].input_quant.scale().detach())
    # brevitas' signed, non-narrow int8 grid divides the range by 2^(8-1) = 128
    assert scale == pytest.approx(float(x.abs().max()) / 128.0, rel=1e-5)
    # the activation grid is signed int8 with zero point 0
    assert float(q[0].input_quant.zero_point()) == 0.0
    assert q[0].input_quant.is_signed


def test_percentile_calibration_clips_outliers():
    torch.manual_seed(3)
    x = torch.randn(4096, 8)
    x[0, 0] = 1000.0  # one outlier: min-max would follow it, the percentile must not
    q = ptq(nn.Sequential(nn.Linear(8, 4)), {"percentile": 99.9}, [x], max_samples=4096)
    scale = float(q[0].input_quant.scale().detach())
    ref = float(np.percentile(x.abs().numpy(), 99.9)) / 128.0
    assert scale == pytest.approx(ref, rel=0.02)


def test_samples_per_forward_is_the_budget_over_six_times_the_largest_layer_output():
    model = nn.Sequential(nn.Linear(8, 1000), nn.ReLU(), nn.Linear(1000, 4)).train()
    model[1].eval()
    # the largest output is 1000 float32 per sample = 4,000 bytes; a calibration forward is counted at 6x that
    assert samples_per_forward(model, torch.randn(64, 8), budget=240_000) == 10
    assert samples_per_forward(model, torch.randn(64, 8), budget=1) == 1
    assert [m.training for m in model] == [True, False, True]  # every flag as it was


def test_calibrate_splits_a_batch_into_forwards_of_max_batch():
    torch.manual_seed(2)
    x = torch.randn(64, 8) * 3
    q = quantize_model(nn.Sequential(nn.Linear(8, 4)), {"calibration": "minmax"})
    sizes: list[int] = []
    q.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    assert calibrate(q, [x[:0], x], max_samples=61, max_batch=16) == 61  # an empty batch is skipped, not the end
    assert sizes == [15, 15, 15, 16]  # near-equal parts: brevitas weighs every forward alike
    # brevitas averages its statistic over forwards: the mean of the four parts' abs-max
    bounds = [0, 15, 30, 45, 61]
    parts = [x[a:b].abs().max() for a, b in zip(bounds, bounds[1:], strict=False)]
    assert float(q[0].input_quant.scale().detach()) == pytest.approx(float(sum(parts) / 4) / 128.0, rel=1e-5)
    with pytest.raises(ValueError, match="max_batch must be an integer >= 1 or None, got 0"):
        calibrate(q, [x], max_batch=0)


def test_calibrate_gives_every_module_its_own_training_flag_back():
    q = quantize_model(nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4)), {"calibration": "minmax"}).train()
    q[1].eval()  # frozen statistics while the rest trains
    calibrate(q, [torch.randn(16, 8)])
    assert (q.training, q[0].training, q[1].training) == (True, True, False)  # was: the BatchNorm training again


def test_ptq_splits_only_batches_that_would_not_fit(monkeypatch):
    import importlib

    ptq_module = importlib.import_module("edgeattn.quant.ptq")  # edgeattn.quant.ptq is also the function's name
    seen: list[int | None] = []
    real = ptq_module.calibrate

    def spy(q, batches, max_samples, max_batch):
        seen.append(max_batch)
        return real(q, batches, max_samples, max_batch)

    monkeypatch.setattr(ptq_module, "calibrate", spy)
    # at the default budget vit_tiny keeps a 64-image batch whole at 224 px; edge_moe_vit (3,137 tokens: 118 MB of
    # attention map per image) is split
    vit = create_model("vit_tiny", img_size=224)
    assert samples_per_forward(vit, torch.randn(1, 3, 224, 224)) >= 64
    moe = create_model("edge_moe_vit", img_size=224)
    assert samples_per_forward(moe, torch.randn(1, 3, 224, 224)) == 2 * 1024**3 // (6 * 3 * 3137 * 3137 * 4)
    x = torch.randn(64, 8)
    ptq(nn.Sequential(nn.Linear(8, 1000)), None, [x])
    monkeypatch.setattr(ptq_module, "CALIBRATION_BYTES", 240_000)
    ptq(nn.Sequential(nn.Linear(8, 1000)), None, [x])
    assert seen[1] == 10 and seen[0] >= 64  # the default budget leaves a 64-sample batch whole


def test_overrides_and_float_layers():
    model = tiny_vit()
    cfg = QuantConfig(weight_bits=4, act_bits=4, overrides={"head": {"weight_bits": 8}}, float_layers=("patch_embed",))
    q = quantize_model(model, cfg)
    assert int(q.head.quant_weight().bit_width) == 8
    assert int(q.blocks[0].attn.qkv.quant_weight().bit_width) == 4
    assert type(q.patch_embed) is nn.Conv2d



def test_matches_module_covers_a_pattern_and_everything_under_it():
    from edgeattn.quant.config import matches_module

    assert matches_module("blocks.0.attn.qkv", "blocks.0")
    assert matches_module("blocks.0", "blocks.0")
    assert not matches_module("blocks.01.attn", "blocks.0")  # whole dotted parts, not string prefixes
    assert not matches_module("blocks", "blocks.0")
    assert matches_module("blocks.3.mlp.fc1", "blocks.*.mlp")
    assert not matches_module("blocks.3.attn.qkv", "blocks.*.mlp")
    assert matches_module("blocks.0.attn.proj_in_quant", "*.proj_in_quant")
    assert matches_module("model.lm_head", "*lm_head*")


def test_float_layers_and_overrides_cover_submodules():
    torch.manual_seed(0)
    model = create_model("vit_tiny", **{**TINY_VIT, "depth": 2}).eval()
    overrides = {"blocks.1.attn": {"weight_bits": 4, "act_bits": 6}, "head": {"float": True}}
    cfg = QuantConfig(float_layers=("blocks.0",), overrides=overrides)
    q = quantize_model(model, cfg)
    block0 = dict(q.blocks[0].named_modules())
    assert not any(isinstance(m, (qnn.QuantLinear, qnn.QuantIdentity)) for m in block0.values())
    assert type(q.blocks[0].attn.qkv) is nn.Linear and type(q.blocks[0].mlp.fc2) is nn.Linear
    assert type(q.blocks[0].attn.q_quant) is nn.Identity
    assert type(q.head) is nn.Linear
    attn1 = q.blocks[1].attn
    assert int(attn1.qkv.quant_weight().bit_width) == 4 and int(attn1.proj.quant_weight().bit_width) == 4
    assert int(attn1.q_quant.act_quant.bit_width()) == 6
    assert int(q.blocks[1].mlp.fc1.quant_weight().bit_width) == 8  # outside the override
    assert int(q.blocks[1].mlp.in_quant.act_quant.bit_width()) == 8

def test_lower_bits_mean_larger_error_than_w8a8():
    model = tiny_vit()
    x = torch.randn(32, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
        errs = {}
        for bits in ("w8a8", "w4a4"):
            q = ptq(model, QuantConfig().with_bits(bits), [x])
            errs[bits] = float((q(x) - ref).abs().mean())
    assert 0 < errs["w8a8"] < errs["w4a4"] / 4


def test_conv_models_quantize_and_stay_close():
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Conv1d(8, 8, 1) if False else nn.Identity(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    x = torch.randn(16, 3, 12, 12)
    q = ptq(net, "rtx-trt11", [x])
    assert isinstance(q[0], qnn.QuantConv2d) and q[2].groups == 8
    with torch.no_grad():
        ref, out = net(x), q(x)
    rel = float((out - ref).abs().max() / ref.abs().max())
    assert 0 < rel < 0.05


# ------------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_roundtrip_quantized_model(tmp_path):
    model = tiny_vit()
    cfg = QuantConfig.from_profile("intel-avx2-openvino")
    q = ptq(model, cfg, [torch.randn(8, 3, 16, 16)])
    path = save_checkpoint(tmp_path / "q.pt", q, {"model": "vit_tiny", "model_kwargs": TINY_VIT, "quant": cfg})
    loaded, meta = load_checkpoint(path)
    assert meta["quant"]["weight_bits"] == 7 and meta["model"] == "vit_tiny"
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), q(x), rtol=0, atol=0)
    assert not list(tmp_path.glob(".*.tmp"))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(EdgeAttnError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EdgeAttnError, match="corrupt"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(EdgeAttnError, match="not an edgeattn checkpoint"):
        load_checkpoint(other)


# ------------------------------------------------------------------------------------------------ export
def test_export_onnx_qcdq_matches_onnxruntime(tmp_path):
    """The call the export engineer relies on: brevitas' QCDQ export (dynamo) from a deep copy."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from brevitas.export import export_onnx_qcdq

    model = tiny_vit()
    x = torch.randn(8, 3, 16, 16)
    q = ptq(model, "rtx-trt11", [x])
    path = tmp_path / "q.onnx"
    export_onnx_qcdq(copy.deepcopy(q), args=(x[:1],), export_path=str(path), opset_version=18)
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 8 and ops.count("DequantizeLinear") >= 8
    # signed int8 everywhere (TensorRT), softmax output included; no int32 (bias) dequantization
    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant" and n.attribute}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2:
            zp = inits.get(node.input[2]) or consts.get(node.input[2])
            assert zp is not None and zp.data_type == onnx.TensorProto.INT8
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x[:1].numpy()})[0]
    with torch.no_grad():
        ref = q(x[:1]).numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
