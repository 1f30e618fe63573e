"""QA sweep of the deploy-friendly blocks: float64 references written from the published formulas
(/work/shared/REFERENCE.md), train-vs-deploy equality at odd shapes, reparameterization edges, argument errors,
MAC counts and the approximations at extreme inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgeattn
from edgeattn.approx import GELU_METHODS, SOFTMAX_METHODS, gelu, online_softmax_chunked, softmax
from edgeattn.blocks import CFB, ELA, ELA_VARIANTS, GMLP, RLMHSA, ULSAM, FMBlock, HFBlock, MultiGroupConv1x1, RepConv
from edgeattn.blocks.attention import Attention, Mlp
from edgeattn.blocks.llama import LlamaAttention, LlamaBlock, RMSNorm, SwiGLU
from edgeattn.models import count_macs, create_model
from edgeattn.models.mobilenetv2 import InvertedResidual


@pytest.fixture(autouse=True)
def _float64():
    """Every test here computes in float64 (the train/deploy comparisons want rounding out of the way)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _random_bn(model: nn.Module, seed: int) -> nn.Module:
    """Harsh random BN state: means ~N(0, 2), variances in [0.01, 3.01], signed gammas, betas ~N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            n = mod.num_features
            with torch.no_grad():
                mod.running_mean.copy_(torch.randn(n, generator=gen) * 2)
                mod.running_var.copy_(torch.rand(n, generator=gen) * 3 + 0.01)
                mod.weight.copy_(torch.randn(n, generator=gen))
                mod.bias.copy_(torch.randn(n, generator=gen))
    return model.eval()


def _bn_eval(z: torch.Tensor, bn: nn.BatchNorm2d, sl: slice = slice(None)) -> torch.Tensor:
    """Eval-mode BatchNorm of (B, C, H, W) ``z`` from the written formula, channels ``sl`` of ``bn``."""
    shape = (1, -1, 1, 1)
    mean, var = bn.running_mean[sl].reshape(shape), bn.running_var[sl].reshape(shape)
    return (z - mean) / torch.sqrt(var + bn.eps) * bn.weight[sl].reshape(shape) + bn.bias[sl].reshape(shape)


def _softmax_ref(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


# ------------------------------------------------------------------------------------------------- ELA
def _ela_reference(x: torch.Tensor, ela: ELA) -> torch.Tensor:
    """ELA from the formula: per-direction mean pools, shared Conv1d (variant's kernel/groups), GroupNorm written
    out (mean/var over each group's channels and positions), sigmoid, ``x * y_h * y_w``."""
    kernel, per_group, gn_groups = ELA_VARIANTS[ela.variant]
    b, c = x.shape[:2]
    conv_groups = c if per_group == "depthwise" else c // per_group
    w, gamma, beta = ela.conv.weight.detach(), ela.gn.weight.detach(), ela.gn.bias.detach()

    def gate(z: torch.Tensor) -> torch.Tensor:
        y = F.conv1d(z, w, padding=kernel // 2, groups=conv_groups)
        grouped = y.reshape(b, gn_groups, -1)
        mean = grouped.mean(-1, keepdim=True)
        var = ((grouped - mean) ** 2).mean(-1, keepdim=True)
        y = ((grouped - mean) / torch.sqrt(var + ela.gn.eps)).reshape(y.shape)
        return 1.0 / (1.0 + torch.exp(-(y * gamma[:, None] + beta[:, None])))

    return x * gate(x.mean(3))[:, :, :, None] * gate(x.mean(2))[:, :, None, :]


@pytest.mark.parametrize(
    "variant,channels,shape",
    [("T", 32, (1, 5, 7)), ("B", 16, (2, 1, 1)), ("S", 16, (1, 3, 2)), ("L", 64, (2, 9, 4)), ("B", 32, (1, 1, 9))],
)
def test_ela_matches_formula_at_odd_shapes(variant, channels, shape):
    torch.manual_seed(0)
    ela = ELA(channels, variant).eval()
    with torch.no_grad():
        ela.gn.weight.normal_()
        ela.gn.bias.normal_()
    x = torch.randn(shape[0], channels, *shape[1:])
    with torch.no_grad():
        y = ela(x)
        torch.testing.assert_close(y, _ela_reference(x, ela), rtol=0, atol=1e-12)
        torch.testing.assert_close(edgeattn.reparameterize(ela)(x), y, rtol=0, atol=0)  # nothing to fold


# ----------------------------------------------------------------------------------------------- ULSAM
def _ulsam_reference(x: torch.Tensor, m: ULSAM) -> torch.Tensor:
    """The published per-subspace loop: dw 1x1 -> BN -> ReLU -> 3x3 max-pool (-inf padding) -> pw G->1 -> BN ->
    ReLU -> softmax over all h*w -> ``A*F + F``; concatenated."""
    b, c, h, w = x.shape
    size = c // m.num_subspaces
    outs = []
    for i in range(m.num_subspaces):
        sl = slice(i * size, (i + 1) * size)
        f = x[:, sl]
        a = f * m.conv_dw.weight[sl].reshape(1, -1, 1, 1) + m.conv_dw.bias[sl].reshape(1, -1, 1, 1)
        a = torch.relu(_bn_eval(a, m.bn_dw, sl))
        padded = F.pad(a, (1, 1, 1, 1), value=-math.inf)
        a = torch.stack([padded[:, :, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]).amax(0)
        p = (a * m.conv_pw.weight[i].reshape(1, -1, 1, 1)).sum(1, keepdim=True) + m.conv_pw.bias[i]
        p = torch.relu(_bn_eval(p, m.bn_pw, slice(i, i + 1)))
        attn = _softmax_ref(p.reshape(b, 1, h * w)).reshape(b, 1, h, w)
        outs.append(attn * f + f)
    return torch.cat(outs, 1)


@pytest.mark.parametrize(
    "channels,groups,shape", [(8, 4, (1, 5, 7)), (1, 1, (2, 1, 1)), (16, 16, (1, 3, 2)), (12, 3, (2, 2, 2))]
)
def test_ulsam_matches_per_subspace_loop_and_folds(channels, groups, shape):
    torch.manual_seed(1)
    m = _random_bn(ULSAM(channels, groups), seed=channels)
    with torch.no_grad():  # shift the conv biases up so the ReLUs pass something and the maps are not uniform
        m.conv_dw.bias.add_(3.0)
        m.bn_pw.bias.add_(1.0)
        x = torch.randn(shape[0], channels, *shape[1:])
        y = m(x)
        torch.testing.assert_close(y, _ulsam_reference(x, m), rtol=0, atol=1e-12)
        deploy = edgeattn.reparameterize(m)
        torch.testing.assert_close(deploy(x), y, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------- RLMHSA
def _rlmhsa_reference(x: torch.Tensor, m: RLMHSA) -> torch.Tensor:
    """BN, then r x r mean pooling by explicit windows (floor: a partial last window is dropped; r = 1 when the
    map is smaller than sr_ratio), q from all tokens, k/v from the pooled ones, per-head softmax(q k^T/sqrt(d)) v,
    proj."""
    b, c, h, w = x.shape
    xn = _bn_eval(x, m.norm)
    r = m.sr_ratio if min(h, w) >= m.sr_ratio else 1
    pooled = torch.stack(
        [xn[:, :, i * r : (i + 1) * r, j * r : (j + 1) * r].mean((2, 3)) for i in range(h // r) for j in range(w // r)],
        dim=1,
    )  # (B, M, C)
    tokens = xn.reshape(b, c, h * w).transpose(1, 2)
    q = tokens @ m.q.weight.T + m.q.bias
    kv = pooled @ m.kv.weight.T + m.kv.bias
    k, v = kv[..., :c], kv[..., c:]
    d = c // m.num_heads
    out = torch.cat(
        [
            _softmax_ref(q[..., s : s + d] @ k[..., s : s + d].transpose(1, 2) / math.sqrt(d)) @ v[..., s : s + d]
            for s in range(0, c, d)
        ],
        dim=-1,
    )
    return (out @ m.proj.weight.T + m.proj.bias).transpose(1, 2).reshape(b, c, h, w)


@pytest.mark.parametrize(
    "dim,heads,sr,shape",
    [(8, 2, 2, (1, 5, 7)), (4, 4, 2, (2, 1, 1)), (6, 3, 3, (1, 7, 4)), (16, 1, 2, (2, 2, 3)), (32, 32, 4, (1, 9, 9))],
)
def test_rlmhsa_matches_formula_and_folds_bn(dim, heads, sr, shape):
    torch.manual_seed(2)
    m = _random_bn(RLMHSA(dim, heads, sr), seed=dim)
    x = torch.randn(shape[0], dim, *shape[1:])
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(y, _rlmhsa_reference(x, m), rtol=0, atol=1e-12)
        torch.testing.assert_close(edgeattn.reparameterize(m)(x), y, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------- train vs deploy, odd shapes
BLOCKS = {
    "gmlp_groups_dropped": (lambda: GMLP(6, 10), (1, 6, 3, 5)),
    "gmlp_one_channel": (lambda: GMLP(1, 1), (2, 1, 1, 1)),
    "gmlp_large_groups": (lambda: GMLP(16, 32, (1, 2, 4, 8, 16)), (1, 16, 2, 2)),
    "hfblock_1x1": (lambda: HFBlock(3, 2.0), (1, 3, 1, 1)),
    "fmblock_nonsquare_odd": (lambda: FMBlock(8, 2, 2, 2.0), (1, 8, 5, 3)),
    "fmblock_smaller_than_sr": (lambda: FMBlock(8, 2, 3, 2.0), (1, 8, 2, 2)),
    "repconv_stride2_odd": (lambda: RepConv(4, 6, 3, stride=2, num_branches=3), (1, 4, 5, 7)),
    "repconv_stride2_even": (lambda: RepConv(4, 6, 3, stride=2, num_branches=2), (2, 4, 4, 6)),
    "repconv_dw_stride2_1x1": (lambda: RepConv(4, 4, 3, stride=2, groups=4, num_branches=2), (1, 4, 1, 1)),
    "repconv_k5_groups2_identity": (lambda: RepConv(4, 4, 5, groups=2, num_branches=2), (1, 4, 3, 2)),
    "multigroup_no_dense_branch": (lambda: MultiGroupConv1x1(8, 4, (2, 4)), (1, 8, 2, 2)),
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_deploy_equals_train_in_float64(name):
    make, shape = BLOCKS[name]
    torch.manual_seed(3)
    block = _random_bn(make(), seed=3)
    x = torch.randn(*shape)
    with torch.no_grad():
        y = block(x)
        deploy = edgeattn.reparameterize(block)
        z = deploy(x)
        again = edgeattn.reparameterize(deploy, inplace=True)  # a second pass changes nothing
        assert again is deploy
        torch.testing.assert_close(again(x), z, rtol=0, atol=0)
    assert float((y - z).abs().max() / y.abs().max()) < 1e-13
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in deploy.modules())


def test_cfb_deploy_equals_train_in_float64():
    torch.manual_seed(4)
    cfb = _random_bn(CFB(5), seed=4)
    high, low = torch.randn(1, 5, 3, 4), torch.randn(1, 5, 3, 4)
    with torch.no_grad():
        y = cfb(high, low)
        z = edgeattn.reparameterize(cfb)(high, low)
    assert float((y - z).abs().max() / y.abs().max()) < 1e-13


def test_reparameterize_in_train_mode_keeps_flag_and_trains():
    """Defined, not refused: the fold uses the running statistics, the flag stays, gradients reach every weight."""
    torch.manual_seed(5)
    block = _random_bn(FMBlock(8, 2, 2, 2.0), seed=5).train()
    deploy = edgeattn.reparameterize(block)
    assert deploy.training and block.training
    deploy(torch.randn(2, 8, 4, 4)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in deploy.parameters())
    with torch.no_grad():
        x = torch.randn(1, 8, 4, 4)
        torch.testing.assert_close(deploy.eval()(x), block.eval()(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["ela", "ulsam", "gmlp", "rlmhsa", "fmblock"])
def test_train_form_gradients_reach_every_parameter(name):
    make, channels = {
        "ela": (lambda: ELA(16, "S"), 16),
        "ulsam": (lambda: ULSAM(8, 2), 8),
        "gmlp": (lambda: GMLP(8, 12), 8),
        "rlmhsa": (lambda: RLMHSA(8, 2, 2, qkv_bias=False), 8),
        "fmblock": (lambda: FMBlock(8, 2, 2, 2.0), 8),
    }[name]
    torch.manual_seed(6)
    block = make().train()
    x = torch.randn(2, channels, 4, 5, requires_grad=True)
    block(x).square().sum().backward()
    assert x.grad.abs().max() > 0
    for pname, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, pname


# ------------------------------------------------------------------------------------------- whole models
def test_model_inplace_false_untouched_and_deploy_checkpoint_round_trip():
    torch.manual_seed(7)
    model = _random_bn(create_model("mobilenetv2_ulsam", img_size=32, num_classes=10), seed=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        deploy = edgeattn.reparameterize(model)
        z = deploy(x)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert float((y - z).abs().max() / y.abs().max()) < 1e-13
    # a deploy checkpoint loads strictly into a freshly built, reparameterized model and gives the same output
    torch.manual_seed(8)
    fresh = edgeattn.reparameterize(create_model("mobilenetv2_ulsam", img_size=32, num_classes=10)).eval()
    fresh.load_state_dict(deploy.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), z, rtol=0, atol=0)


def _hand_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs counted by hand from each layer's output size: conv = out * (Cin/groups) * k*k, linear = out * in,
    RLMHSA = its two matmuls, 2 * N * M * C."""
    total = 0

    def conv(m: nn.Module, _: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.weight[0].numel()

    def linear(m: nn.Module, _: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    def attention(m: RLMHSA, inputs: tuple, _: torch.Tensor) -> None:
        nonlocal total
        b, c, h, w = inputs[0].shape
        r = m.pool_ratio(h, w)
        total += 2 * b * (h * w) * ((h // r) * (w // r)) * c

    handles = []
    for mod in model.modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            handles.append(mod.register_forward_hook(conv))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear))
        elif isinstance(mod, RLMHSA):
            handles.append(mod.register_forward_hook(attention))
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name", ["fmvit_t", "mobilenetv2_ela", "mobilenetv2_ulsam"])
def test_deploy_macs_match_hand_count(name):
    model = edgeattn.reparameterize(create_model(name, img_size=64, num_classes=10))
    x = torch.randn(1, 3, 64, 64)
    assert count_macs(model, x) == _hand_macs(model, x)


def test_mobilenetv2_ela_sits_after_depthwise_before_projection():
    block = InvertedResidual(16, 24, 2, 6, attention="ela")
    kinds = [type(m).__name__ for m in block.conv]
    assert kinds == ["ConvBN", "ConvBN", "ELA", "ConvBN"]
    assert block.conv[1].conv.groups == 96 and block.conv[2].variant == "L"


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: GMLP(8, 16, (0, 1)), "GMLP: groups[0] must be a positive integer, got 0"),
        (lambda: GMLP(8, 16, "12"), "GMLP: groups must be a list of positive integers, got '12'"),
        (lambda: CFB(4, (0,)), "CFB: groups[0] must be a positive integer, got 0"),
        (lambda: CFB(0), "CFB: dim must be a positive integer, got 0"),
        (lambda: RLMHSA(8, 2, 1.5), "RLMHSA: sr_ratio must be a positive integer, got 1.5"),
        (lambda: RLMHSA(8, 0), "RLMHSA: num_heads must be a positive integer, got 0"),
        (lambda: ELA(16.0), "ELA-B: channels must be a positive integer, got 16.0"),
        (lambda: ULSAM(8.0, 2), "ULSAM: channels must be a positive integer, got 8.0"),
        (lambda: RepConv(4, 4, 3, stride=0), "RepConv: stride must be a positive integer, got 0"),
        (lambda: RepConv(4, 4, -1), "RepConv: kernel_size must be a positive integer, got -1"),
        (lambda: RepConv(4, 4, 3, num_branches=2.0), "RepConv: num_branches must be a positive integer, got 2.0"),
        (lambda: Mlp(8, 0), "Mlp: hidden_features must be a positive integer, got 0"),
        (lambda: Mlp(8, -1), "Mlp: hidden_features must be a positive integer, got -1"),
        (lambda: Mlp(8, 4, out_features=0), "Mlp: out_features must be a positive integer, got 0"),
        (lambda: Mlp(8.0, 4), "Mlp: in_features must be a positive integer, got 8.0"),
        (lambda: RMSNorm(0), "RMSNorm: dim must be a positive integer, got 0"),
        (lambda: SwiGLU(8, 0), "SwiGLU: hidden_dim must be a positive integer, got 0"),
        (lambda: Attention(8.0, 2), "Attention: dim must be a positive integer, got 8.0"),
        (lambda: Attention(8, 0), "Attention: num_heads must be a positive integer, got 0"),
        (lambda: LlamaAttention(8, 2, seq_len=0), "LlamaAttention: seq_len must be a positive integer, got 0"),
        (lambda: LlamaBlock(8, 2, 0, seq_len=4), "LlamaBlock: hidden_dim must be a positive integer, got 0"),
    ],
)
def test_bad_block_arguments_are_one_value_error(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value) == message


def test_reparameterize_refuses_a_non_module():
    with pytest.raises(TypeError, match="argument 'model' must be a torch.nn.Module, got str"):
        edgeattn.reparameterize("fmvit_t")


@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("fmvit_t", {"heads": (3, 8)}, "FMViT: heads[0]=3 must divide widths[2]=128 (stage 3 attention)"),
        ("fmvit_t", {"widths": (1, 64, 128, 256)}, "FMViT: widths[0] must be >= 2"),
        ("fmvit_t", {"mlp_ratios": (0.01, 2, 3, 3)}, "FMViT: mlp_ratios[0]=0.01 gives widths[0]=32"),
        ("mobilenetv2_ulsam", {"ulsam_subspaces": 7}, "MobileNetV2: ulsam_subspaces=7 must divide"),
    ],
)
def test_model_arguments_the_layers_cannot_take_name_the_argument(name, kwargs, message):
    with pytest.raises(ValueError) as info:
        create_model(name, **kwargs)
    assert str(info.value).startswith(message)


# --------------------------------------------------------------------------------------- approximations
@pytest.mark.parametrize("method", SOFTMAX_METHODS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_softmax_extreme_rows(method, dtype):
    ulp = torch.finfo(dtype).eps
    # all-equal rows: exactly 1/n (every method's exp is 1 at the max)
    equal = softmax(torch.full((2, 7), 1e4, dtype=dtype), method=method).double()
    torch.testing.assert_close(equal, torch.full((2, 7), 1 / 7, dtype=torch.float64), rtol=0, atol=ulp)
    # the dtype's extremes: one-hot, no inf - inf NaN
    big = torch.finfo(dtype).max
    hot = softmax(torch.tensor([[big, 0.0, -big]], dtype=dtype), method=method).double()
    torch.testing.assert_close(hot, torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64), rtol=0, atol=1e-50)
    # -inf masks give exactly 0 and the rest stays a softmax of the unmasked scores
    masked = softmax(torch.tensor([[1.0, -math.inf, 1.0, -math.inf]], dtype=dtype), method=method).double()
    assert masked[0, 1] == 0 and masked[0, 3] == 0
    torch.testing.assert_close(masked[0, [0, 2]], torch.tensor([0.5, 0.5], dtype=torch.float64), rtol=0, atol=ulp)


# Worst case over 2..4096-element rows [d, 0, ..., 0], d in [-30, 30] (measured in this sweep, float32): the
# report's figures are maxima over its own score distribution, not bounds; these are the hard-case maxima.
# exact/online: float32 rounding only (the 512-term row sum reaches 3.7e-6 relative).
SOFTMAX_WORST = {"exact": 5e-6, "online": 5e-6, "ibert": 8.5e-4, "shift": 2.3e-2, "base2": 2.4e-4}


@pytest.mark.parametrize("method", SOFTMAX_METHODS)
def test_softmax_worst_case_one_outlier_rows(method):
    d = torch.linspace(-30, 30, 2401)
    worst = 0.0
    for n in (2, 8, 512):
        x = torch.zeros(d.numel(), n, dtype=torch.float32)
        x[:, 0] = d
        ref = torch.softmax(x.double(), -1)
        worst = max(worst, float((softmax(x, method=method).double() - ref).abs().max()))
    assert worst <= SOFTMAX_WORST[method]


# Documented max abs errors (docs/approx.md, float) on [-8, 8]; they must hold in float32 and float64 on a fine grid
# and at any magnitude beyond.
GELU_BOUNDS = {
    "exact": 1.0e-6,
    "tanh": 4.74e-4,
    "edgemoe": 9.74e-5,
    "edgemoe_mm": 4.87e-5,
    "ibert": 1.82e-2,
    "sigmoid": 2.04e-2,
    "respoly": 5.91e-3,
}


@pytest.mark.parametrize("method", GELU_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gelu_documented_bound_holds_everywhere(method, dtype):
    grid = torch.linspace(-8, 8, 160001, dtype=torch.float64)
    big, bound = 3e38, GELU_BOUNDS[method]
    if method == "exact" and dtype == torch.float32:
        # 'exact' is torch's own F.gelu, whose float32 rounding varies by CPU kernel (docs/approx.md): measured with
        # torch 2.13, 3.7e-7 with AVX2 and 1.07e-6 with AVX-512 on [-8, 8], where 2 float32 ulps of 8 are 1.9e-6; and
        # the AVX-512 kernel overflows to inf above FLT_MAX / 2 (about 1.7e38). Not our arithmetic: bound it by that.
        big, bound = 1.7e38, 2 * 2.0**-20
    far = torch.tensor([-big, -65504, -1e4, -100, -5.5, 5.5, 100, 1e4, 65504, big], dtype=torch.float64)
    x = torch.cat([grid, far]).to(dtype)
    ref = 0.5 * x.double() * torch.erfc(-x.double() / math.sqrt(2.0))  # GELU written from Phi
    err = (gelu(x, method=method).double() - ref).abs()
    assert float(err.max()) <= bound
    assert gelu(torch.tensor([math.inf], dtype=dtype), method=method).item() == math.inf


@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
def test_online_stream_with_leading_masked_chunk(chunk):
    """Left-padding masks (-inf) in the first chunks must not make the running sum NaN: the row is the softmax of
    its unmasked scores, 1 and 2 here: e/(e + e^2) and e^2/(e + e^2)."""
    x = torch.tensor([[-math.inf, -math.inf, 1.0, 2.0, -math.inf]])
    p1 = 1.0 / (1.0 + math.e)
    expected = torch.tensor([[0.0, 0.0, p1, 1.0 - p1, 0.0]])
    torch.testing.assert_close(online_softmax_chunked(x, chunk), expected, rtol=0, atol=1e-15)
