"""Token-importance-aware bits: token ranking, per-token 4/8-bit quantization with separate scales."""

from __future__ import annotations

import copy

import pytest
import torch
from brevitas import nn as qnn
from edgeattn.quant import QuantConfig, calibrate, quantize_model
from edgeattn.quant.adaptive import (
    TOKEN_SCORES,
    TokenAdaptiveQuant,
    TokenController,
    low_importance_mask,
    received_attention,
    strip_token_adaptive,
)
from edgeattn.quant.checkpoint import load_checkpoint, save_checkpoint

from edgeattn.blocks.fmvit import RLMHSA
from edgeattn.errors import EdgeAttnError
from edgeattn.models import create_model

TINY_VIT = {"num_classes": 10, "img_size": 16, "depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 4}


def test_low_importance_mask_hand_case():
    score = torch.tensor([[0.4, 0.1, 0.3, 0.2], [1.0, 2.0, 3.0, 0.0]])
    mask = low_importance_mask(score, 0.5)
    assert mask.tolist() == [[False, True, False, True], [True, False, False, True]]
    assert not low_importance_mask(score, 0.0).any()


def test_controller_scores_by_attention_from_the_first_token():
    attn = torch.zeros(1, 2, 4, 4)
    attn[0, 0, 0] = torch.tensor([0.1, 0.5, 0.1, 0.3])  # head 0, row of token 0
    attn[0, 1, 0] = torch.tensor([0.2, 0.4, 0.3, 0.1])  # head 1: sums 0.3, 0.9, 0.4, 0.4
    attn[0, :, 1:] = 0.25  # other rows must not matter for "first"
    c = TokenController(0.5, "first")
    c.update(attn)
    assert c.mask.tolist() == [[True, False, True, False]]  # 0.3 and the first of the 0.4 tie
    c = TokenController(0.25, "mean")
    attn2 = torch.full((1, 1, 4, 4), 0.25)
    attn2[0, 0, :, 3] = 0.0
    attn2[0, 0, :, 0] = 0.5
    c.update(attn2)
    assert c.mask.tolist() == [[False, False, False, True]]


def test_adaptive_points_quantize_low_tokens_with_their_own_4bit_scale():
    torch.manual_seed(0)
    model = create_model("vit_tiny", **TINY_VIT).eval()
    q = quantize_model(model, QuantConfig(token_adaptive=True, token_ratio=0.5, low_act_bits=4))
    x = torch.randn(16, 3, 16, 16)
    calibrate(q, [x])
    point = q.blocks[1].attn.in_quant  # layer 2's input uses layer 1's token set
    assert isinstance(point, TokenAdaptiveQuant)
    seen = {}
    hook = point.register_forward_hook(lambda m, a, o: seen.update(inp=a[0], out=o, mask=m.controller.mask))
    with torch.no_grad():
        q(x[:4])
    hook.remove()
    mask, out = seen["mask"], seen["out"]
    n_tokens = out.shape[1]
    assert mask.shape == (4, n_tokens) and int(mask.sum(1)[0]) == n_tokens // 2
    low_scale = float(point.low.act_quant.scale().detach())
    high_scale = float(point.high.act_quant.scale().detach())
    assert low_scale != high_scale
    low_ints = out[mask] / low_scale
    high_ints = out[~mask] / high_scale
    torch.testing.assert_close(low_ints, low_ints.round(), atol=1e-3, rtol=0)
    assert low_ints.min() >= -8 and low_ints.max() <= 7  # signed 4-bit
    torch.testing.assert_close(high_ints, high_ints.round(), atol=1e-3, rtol=0)
    assert high_ints.abs().max() > 8  # the important tokens really keep 8 bits
    # the first layer's input has no scores yet: everything at 8 bits
    first = q.blocks[0].attn.in_quant
    seen.clear()
    hook = first.register_forward_hook(lambda m, a, o: seen.update(mask=m.controller.mask))
    with torch.no_grad():
        q(x[:4])
    hook.remove()
    assert seen["mask"] is None


def test_strip_token_adaptive_restores_plain_quantizers():
    torch.manual_seed(0)
    model = create_model("vit_tiny", **TINY_VIT).eval()
    q = quantize_model(model, QuantConfig(token_adaptive=True, token_ratio=0.0))
    x = torch.randn(8, 3, 16, 16)
    calibrate(q, [x])
    with torch.no_grad():
        before = q(x)  # ratio 0: no low tokens, identical to the high-bit path
        strip_token_adaptive(q)
        after = q(x)
    assert not any(isinstance(m, TokenAdaptiveQuant) for m in q.modules())
    torch.testing.assert_close(before, after, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# which tensors and which tokens get the low bits
def _low_inputs(q: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``q`` on ``x``; name -> what each adaptive point sent through its low-bit quantizer."""
    low: dict[str, torch.Tensor] = {}
    hooks = [
        m.low.register_forward_hook(lambda _m, a, _o, n=n: low.update({n: a[0].detach().clone()}))
        for n, m in q.named_modules()
        if isinstance(m, TokenAdaptiveQuant)
    ]
    with torch.no_grad():
        q(x)
    for h in hooks:
        h.remove()
    return low


def _fmvit(**kw):
    torch.manual_seed(0)
    model = create_model("fmvit_t", num_classes=10, img_size=32, **kw).eval()
    q = quantize_model(model, QuantConfig(token_adaptive=True, act_bits=8, low_act_bits=4))
    x = torch.randn(2, 3, 32, 32)
    calibrate(q, [x])
    return q, x


def _pooling_matrix(h: int, w: int, r: int) -> torch.Tensor:
    """(M, N) float64 matrix of F.avg_pool2d(r, r) on a row-major h x w token map, built entry by entry."""
    hp, wp = h // r, w // r
    pool = torch.zeros(hp * wp, h * w, dtype=torch.float64)
    for i in range(hp):
        for j in range(wp):
            for di in range(r):
                for dj in range(r):
                    pool[i * wp + j, (i * r + di) * w + j * r + dj] = 1.0 / (r * r)
    return pool


@pytest.mark.parametrize("h,w", [(4, 4), (5, 6)])  # 5 x 6: pooling's floor leaves a row of tokens out
def test_received_attention_over_pooled_keys_is_the_exact_per_token_attention(h, w):
    """RLMHSA's output equals an (N, N) attention over the un-pooled tokens' values, A @ P (P: the pooling
    matrix). received_attention must score tokens by exactly that map, in float64."""
    torch.manual_seed(0)
    block = RLMHSA(dim=8, num_heads=2, sr_ratio=2).double().eval()
    x = torch.randn(3, 8, h, w, dtype=torch.float64)
    seen = {}
    block.softmax.register_forward_hook(lambda _m, _a, o: seen.update(attn=o))
    block.proj.register_forward_pre_hook(lambda _m, a: seen.update(proj_in=a[0]))
    with torch.no_grad():
        block(x)
    r = block.pool_ratio(h, w)
    attn, pool = seen["attn"], _pooling_matrix(h, w, r)  # (B, heads, N, M), (M, N)
    effective = attn @ pool  # (B, heads, N, N)
    # the derivation: each token's own value, weighted by the effective map, gives the block's output
    tokens = block.norm(x).flatten(2).transpose(1, 2)  # (B, N, C), float (in_quant is an identity here)
    v_tokens = (tokens @ block.kv.weight[8:].T + block.kv.bias[8:]).reshape(3, h * w, 2, 4).transpose(1, 2)
    out = (effective @ v_tokens).transpose(1, 2).reshape(3, h * w, 8)
    torch.testing.assert_close(out, seen["proj_in"], rtol=1e-12, atol=1e-12)
    for importance, ref in (("mean", effective.mean(dim=2).sum(dim=1)), ("first", effective[:, :, 0].sum(dim=1))):
        torch.testing.assert_close(received_attention(attn, importance, (h, w, r)), ref, rtol=1e-12, atol=1e-15)
    assert received_attention(attn, "mean", None) is None  # without the grid the columns are not tokens
    assert received_attention(attn, "mean", (h, w, 3)) is None  # a grid that does not fit the map


def test_fmvit_low_bits_only_on_declared_token_tensors():
    """fmvit_t at 32 px: stage 3 (4x4 tokens) pools K/V to 2x2 windows, stage 4 (2x2 tokens) does not pool.

    Each RLMHSA map makes a mask (pooled ones over the un-pooled per-token attention), used by its own projection
    input and the next block's Q; stage 3's 16-token mask is dropped at stage 4's Q (4 tokens). Conv maps (gMLP,
    RLMHSA's NCHW input) and pooled K/V are never token-adaptive."""
    q, x = _fmvit()
    adaptive = {n for n, m in q.named_modules() if isinstance(m, TokenAdaptiveQuant)}
    attn_blocks = [f"stages.2.{i}.attn" for i in (1, 2, 3, 4)] + ["stages.3.1.attn"]
    assert adaptive == {f"{b}.{p}" for b in attn_blocks for p in ("q_quant", "proj_in_quant")}
    for name, m in q.named_modules():
        if name.endswith(("mlp.in_quant", "mlp.hidden_quant", "attn.in_quant", "attn.k_quant", "attn.v_quant")):
            assert type(m) is qnn.QuantIdentity, name  # conv feature maps and pooled K/V: one 8-bit quantizer
    seen = {}
    block = q.stages[2][1].attn
    hooks = [
        block.softmax.register_forward_hook(lambda _m, _a, o: seen.update(attn=o.detach())),
        block.proj_in_quant.register_forward_hook(lambda _m, a, _o: seen.update(proj_in=a[0].detach())),
    ]
    low = _low_inputs(q, x)
    for hk in hooks:
        hk.remove()
    expected_points = {"stages.2.1.attn.proj_in_quant", "stages.3.1.attn.proj_in_quant"}
    for i in (2, 3, 4):
        expected_points |= {f"stages.2.{i}.attn.q_quant", f"stages.2.{i}.attn.proj_in_quant"}
    assert set(low) == expected_points
    # the 8 low tokens of each image are the two 2x2 windows with the least mean received attention
    score = (seen["attn"].double() @ _pooling_matrix(4, 4, 2)).mean(dim=2).sum(dim=1)  # (B, 16)
    expected = torch.zeros_like(score, dtype=torch.bool)
    expected.scatter_(1, score.argsort(dim=1, stable=True)[:, :8], True)
    for b in range(2):
        assert score[b][expected[b]].max() < score[b][~expected[b]].min()  # no tie at the cut
        windows = expected[b].reshape(2, 2, 2, 2).permute(0, 2, 1, 3).reshape(4, 4)  # (window, its 4 tokens)
        assert windows.all(dim=1).sum() == 2 and not (windows.any(dim=1) & ~windows.all(dim=1)).any()
    torch.testing.assert_close(low["stages.2.1.attn.proj_in_quant"], seen["proj_in"][expected], rtol=0, atol=0)
    assert low["stages.3.1.attn.proj_in_quant"].shape == (2 * 2, 256)  # 2 of the 2x2 tokens per image, C=256
    point = q.stages[3][1].attn.proj_in_quant
    assert int(point.low.act_quant.bit_width()) == 4 and int(point.high.act_quant.bit_width()) == 8
    assert point.low.act_quant.is_signed


def test_fmvit_mask_follows_square_maps_and_never_crosses_a_stage():
    """With unpooled RLMHSA everywhere (sr_ratios 1, 1) every map is square: each block's mask reaches its own
    projection input and the next block's Q, but stage 3's 16-token mask is dropped at stage 4's Q (4 tokens)."""
    q, x = _fmvit(sr_ratios=(1, 1))
    low = _low_inputs(q, x)
    expected = {"stages.2.1.attn.proj_in_quant", "stages.3.1.attn.proj_in_quant"}
    for i in (2, 3, 4):
        expected |= {f"stages.2.{i}.attn.q_quant", f"stages.2.{i}.attn.proj_in_quant"}
    assert set(low) == expected
    assert low["stages.2.2.attn.q_quant"].shape == (2 * 8, 4, 32)  # 8 of 16 tokens per image, (heads, hd)
    assert low["stages.2.1.attn.proj_in_quant"].shape == (2 * 8, 128)


def test_vit_low_bit_tokens_are_those_with_least_cls_attention():
    torch.manual_seed(0)
    model = create_model("vit_tiny", **{**TINY_VIT, "depth": 2}).eval()
    q = quantize_model(model, QuantConfig(token_adaptive=True, token_ratio=0.5, low_act_bits=4))
    x = torch.randn(8, 3, 16, 16)
    calibrate(q, [x])
    seen: dict[str, torch.Tensor] = {}
    attn0 = q.blocks[0].attn
    hooks = [
        attn0.softmax.register_forward_hook(lambda _m, _a, o: seen.update(attn=o.detach())),
        attn0.proj_in_quant.register_forward_hook(lambda _m, a, _o: seen.update(proj_in=a[0].detach())),
        q.blocks[1].attn.k_quant.register_forward_hook(lambda _m, a, _o: seen.update(k=a[0].detach())),
    ]
    low = _low_inputs(q, x[:4])
    for h in hooks:
        h.remove()
    cls_attention = seen["attn"][:, :, 0, :].sum(dim=1)  # (B, N): attention each token receives from CLS
    n = cls_attention.shape[1]
    expected = torch.zeros_like(cls_attention, dtype=torch.bool)
    expected.scatter_(1, cls_attention.argsort(dim=1)[:, : n // 2], True)
    # every low token gets less CLS attention than every high token of the same image
    for b in range(4):
        assert cls_attention[b][expected[b]].max() < cls_attention[b][~expected[b]].min()
    # exactly those tokens went through the 4-bit quantizers: block 0's projection input, block 1's K
    torch.testing.assert_close(low["blocks.0.attn.proj_in_quant"], seen["proj_in"][expected], rtol=0, atol=0)
    torch.testing.assert_close(low["blocks.1.attn.k_quant"], seen["k"].movedim(2, 1)[expected], rtol=0, atol=0)
    assert {"blocks.0.mlp.in_quant", "blocks.0.mlp.hidden_quant", "blocks.1.attn.in_quant"} <= set(low)
    assert "blocks.0.attn.q_quant" not in low  # no scores before the first softmax


def test_tiny_llama_uses_mean_received_attention_and_refuses_first():
    torch.manual_seed(0)
    model = create_model("tiny_llama", seq_len=16, dim=32, depth=2, num_heads=2).eval()
    q = quantize_model(model, QuantConfig(token_adaptive=True))
    assert q.token_controller.importance == "mean"  # auto: no CLS, and causal row 0 sees only itself
    ids = torch.randint(0, 256, (4, 16))
    calibrate(q, [ids])
    low = _low_inputs(q, ids)
    assert low["blocks.1.attn.k_quant"].shape == (4 * 8, 2, 16)  # half of the 16 tokens, (heads, hd)
    assert {"blocks.0.mlp.in_quant", "blocks.0.mlp.hidden_quant"} <= set(low)  # SwiGLU is token-major
    with pytest.raises(EdgeAttnError, match="causal"):
        quantize_model(model, QuantConfig(token_adaptive=True, importance="first"))


def test_controller_drops_the_mask_on_pooled_maps_and_new_token_counts():
    c = TokenController(0.5, "mean")
    c.update(torch.rand(2, 2, 4, 4).softmax(-1))
    assert c.mask is not None and c.mask.shape == (2, 4)
    assert c.mask_for(torch.zeros(2, 4, 8), 1) is not None
    assert c.mask_for(torch.zeros(2, 2, 4, 8), 2) is not None
    assert c.mask_for(torch.zeros(2, 16, 8), 1) is None and c.mask is None  # another token count: gone for good
    c.update(torch.rand(2, 2, 4, 4).softmax(-1))
    c.update(torch.rand(2, 2, 16, 4).softmax(-1))  # columns of unknown meaning: the stale mask is cleared
    assert c.mask is None
    c.update(torch.rand(2, 2, 16, 4).softmax(-1), grid=(4, 4, 2))  # 2x2 windows of a 4x4 map: per-token scores
    assert c.mask is not None and c.mask.shape == (2, 16) and c.mask.sum(dim=1).tolist() == [8, 8]


# ------------------------------------------------------------------------------------------------
# leaving token-adaptive bits: export, and files written before pooled-key maps scored tokens
def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_strip_removes_the_scoring_hooks_so_the_torchscript_exporter_works():
    """The scoring hooks outlive the swap unless strip removes them; their mask-making broke tracing exporters."""
    from edgeattn.export.onnx_export import export_onnx

    q, x = _fmvit()
    plain_hooks = _hook_count(quantize_model(create_model("fmvit_t", num_classes=10, img_size=32), QuantConfig()))
    stripped = strip_token_adaptive(copy.deepcopy(q))
    assert _hook_count(stripped) == plain_hooks and not hasattr(stripped, "token_controller")
    assert _hook_count(q) == plain_hooks + 11  # the original keeps its own: 5 score, 5 grid hooks and the reset
    with torch.no_grad():
        q(x)
    assert q.token_controller.mask is not None  # stripping the copy left the original working
    exported = export_onnx(stripped, x[:1], precision="int8", exporter="torchscript")
    assert {n.op_type for n in exported.model.graph.node} >= {"QuantizeLinear", "DequantizeLinear", "Softmax"}


def test_export_of_a_token_adaptive_checkpoint_strips_it_and_checks_parity(tmp_path):
    from edgeattn.export import export_model

    torch.manual_seed(0)
    qcfg = QuantConfig(token_adaptive=True, token_ratio=0.5, low_act_bits=4)
    model = create_model("vit_tiny", **TINY_VIT).eval()
    q = quantize_model(model, qcfg)
    calibrate(q, [torch.randn(16, 3, 16, 16)])
    ckpt = save_checkpoint(tmp_path / "m.pt", q, {"model": "vit_tiny", "model_kwargs": TINY_VIT, "quant": qcfg})
    rep = export_model(str(ckpt), "onnx", "host-cpu", tmp_path / "onnx", n_inputs=8)
    assert rep.passed and any("token-adaptive bits stripped" in n for n in rep.notes)
    # the reference it passed against is the high-bit model: the same checkpoint, stripped by hand
    ref, _ = load_checkpoint(ckpt)
    strip_token_adaptive(ref)
    x = torch.randn(1, 3, 16, 16)  # the profile's static batch
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), ref(x), rtol=0, atol=1e-5)


def _old_fmvit_checkpoint(tmp_path):
    """A token-adaptive fmvit_t checkpoint as edgeattn wrote it before pooled-key maps scored tokens."""
    q, _x = _fmvit()
    qcfg = QuantConfig(token_adaptive=True, act_bits=8, low_act_bits=4)
    meta = {"model": "fmvit_t", "model_kwargs": {"num_classes": 10, "img_size": 32}, "quant": qcfg}
    path = save_checkpoint(tmp_path / "new.pt", q, meta)
    payload = torch.load(path, weights_only=True)
    assert payload["meta"]["token_scores"] == TOKEN_SCORES
    del payload["meta"]["token_scores"]
    torch.save(payload, tmp_path / "old.pt")
    return path, tmp_path / "old.pt"


def test_token_adaptive_checkpoint_from_before_pooled_key_scores_is_refused_unless_stripped(tmp_path):
    new, old = _old_fmvit_checkpoint(tmp_path)
    model, _meta = load_checkpoint(new)
    assert any(isinstance(m, TokenAdaptiveQuant) for m in model.modules())
    with pytest.raises(EdgeAttnError, match="before token-adaptive bits scored pooled-key attention") as info:
        load_checkpoint(old)
    assert "stages.2.1.attn" in str(info.value) and len(str(info.value).splitlines()) == 1
    stripped, _meta = load_checkpoint(old, strip_token_adaptive=True)  # export and hls take it: one width per tensor
    assert not any(isinstance(m, TokenAdaptiveQuant) for m in stripped.modules())
    # a model without pooled keys behaved the same before: its files load as they always did
    torch.manual_seed(0)
    vit = quantize_model(create_model("vit_tiny", **TINY_VIT).eval(), QuantConfig(token_adaptive=True))
    path = save_checkpoint(tmp_path / "vit.pt", vit, {"model": "vit_tiny", "model_kwargs": TINY_VIT,
                                                      "quant": QuantConfig(token_adaptive=True)})  # fmt: skip
    payload = torch.load(path, weights_only=True)
    del payload["meta"]["token_scores"]
    torch.save(payload, path)
    load_checkpoint(path)


def test_resume_of_a_token_adaptive_state_from_before_pooled_key_scores_is_refused(tmp_path):
    from edgeattn.quant import train as T

    out = tmp_path / "run"
    out.mkdir()
    cfg = {"model": "fmvit_t", "img_size": 32, "token_adaptive": True, "output_dir": str(out), "epochs": 1}
    state = {  # what an older edgeattn wrote after epoch 1 (no "token_scores"); the settings are this run's
        "model": {}, "optimizer": {}, "scheduler": {}, "rng": {}, "history": [], "epoch": 1,
        "config": T.TrainConfig.parse(cfg).model_dump(mode="json"),
    }  # fmt: skip
    torch.save(state, out / "state.pt")
    before = (out / "state.pt").read_bytes()
    with pytest.raises(EdgeAttnError, match="before token-adaptive bits scored pooled-key attention"):
        T.run(cfg, resume=True, progress=False)
    assert [p.name for p in out.iterdir()] == ["state.pt"] and (out / "state.pt").read_bytes() == before
