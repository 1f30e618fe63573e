"""Token-importance-aware bits: token ranking, per-token 4/8-bit quantization with separate scales."""

from __future__ import annotations

import torch
from edgeattn.quant import QuantConfig, calibrate, quantize_model
from edgeattn.quant.adaptive import (
    TokenAdaptiveQuant,
    TokenController,
    low_importance_mask,
    strip_token_adaptive,
)

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
