"""Blocks against independent float64 references written out here from the published definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _reparam_helpers import assert_deploy_tree, randomize_bn, rel_err

import edgeattn
from edgeattn.blocks import (
    CFB,
    ELA,
    GMLP,
    RLMHSA,
    ULSAM,
    Attention,
    FMBlock,
    HFBlock,
    Mlp,
    MultiGroupConv1x1,
    RepConv,
    grouped_to_dense,
    identity_kernel,
)
from edgeattn.blocks.llama import LlamaAttention, RMSNorm, apply_rope, rope_tables
from edgeattn.models import count_macs

QUANT_POINTS = ("in_quant", "q_quant", "k_quant", "v_quant", "logits_probe", "attn_quant", "proj_in_quant")


# ------------------------------------------------------------------------------- attention / MLP


def _mha_reference(x, qkv_w, qkv_b, proj_w, proj_b, heads):
    """Textbook multi-head attention in float64 (numpy), independent of the module's code."""
    x = x.astype(np.float64)
    b, n, c = x.shape
    hd = c // heads
    qkv = x @ qkv_w.T + qkv_b
    q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]
    out = np.zeros_like(x)
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        s = q[..., sl] @ np.swapaxes(k[..., sl], -1, -2) / math.sqrt(hd)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[..., sl] = p @ v[..., sl]
    return out @ proj_w.T + proj_b


def test_attention_matches_float64_reference():
    attn = Attention(32, num_heads=4).eval()
    x = torch.randn(2, 7, 32)
    got = attn(x).detach().double().numpy()
    p = {k: v.detach().double().numpy() for k, v in attn.state_dict().items()}
    ref = _mha_reference(x.numpy(), p["qkv.weight"], p["qkv.bias"], p["proj.weight"], p["proj.bias"], 4)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_attention_quant_points_and_scale_order():
    attn = Attention(24, num_heads=3).eval()
    assert attn.head_dim == 8 and attn.scale == pytest.approx(8**-0.5) and isinstance(attn.scale, float)
    for name in QUANT_POINTS:
        assert isinstance(getattr(attn, name), torch.nn.Identity)
    seen = {}
    for name in ("q_quant", "logits_probe", "attn_quant"):
        getattr(attn, name).register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o))
    x = torch.randn(2, 5, 24)
    attn(x)
    q_raw = (x @ attn.qkv.weight.T + attn.qkv.bias)[..., :24].reshape(2, 5, 3, 8).transpose(1, 2)
    torch.testing.assert_close(seen["q_quant"], q_raw * attn.scale)  # scale applied before q_quant
    assert seen["logits_probe"].shape == (2, 3, 5, 5)
    torch.testing.assert_close(seen["attn_quant"].sum(-1), torch.ones(2, 3, 5))


def test_attention_softmax_is_pluggable():
    torch.manual_seed(0)
    exact = Attention(16, num_heads=2).eval()
    approx = Attention(16, num_heads=2, softmax="ibert").eval()
    approx.load_state_dict(exact.state_dict())
    x = torch.randn(1, 6, 16)
    a, b = exact(x), approx(x)
    assert approx.softmax.method == "ibert"
    assert 0 < float((a - b).abs().max().detach()) < 0.05  # a different (approximate) softmax, close to exact


def test_mlp_matches_reference_and_gelu_is_pluggable():
    mlp = Mlp(8, 32, gelu="exact").eval()
    x = torch.randn(3, 8, dtype=torch.float64)
    ref = F.linear(
        F.gelu(F.linear(x, mlp.fc1.weight.double(), mlp.fc1.bias.double())),
        mlp.fc2.weight.double(),
        mlp.fc2.bias.double(),
    )
    torch.testing.assert_close(mlp(x.float()).double(), ref, rtol=1e-5, atol=1e-6)
    assert Mlp(8, 16, gelu="edgemoe").act.method == "edgemoe"
    assert isinstance(mlp.in_quant, torch.nn.Identity) and isinstance(mlp.hidden_quant, torch.nn.Identity)


@pytest.mark.parametrize("kwargs", [{"dim": 30, "num_heads": 4}, {"dim": 0}])
def test_attention_bad_dims(kwargs):
    with pytest.raises(ValueError, match="Attention"):
        Attention(**kwargs)


# ------------------------------------------------------------------------------- ELA

ELA_TABLE = {
    "T": (5, 1, 32),
    "B": (7, 1, 16),
    "S": (5, 8, 16),
    "L": (7, 8, 16),
}  # kernel, ch/group, GN groups


def _ela_reference(x: np.ndarray, w: np.ndarray, groups: int, gn_groups: int, gamma, beta, eps=1e-5):
    """ELA in float64 numpy, written from the paper's equations."""
    b, c, h, wd = x.shape
    k = w.shape[-1]
    cpg = c // groups

    def conv1d(z):  # (B, C, L), zero padding k//2, grouped
        zp = np.pad(z, ((0, 0), (0, 0), (k // 2, k // 2)))
        out = np.zeros_like(z)
        for o in range(c):
            g = o // cpg
            for i in range(cpg):
                for t in range(k):
                    out[:, o, :] += w[o, i, t] * zp[:, g * cpg + i, t : t + z.shape[-1]]
        return out

    def gn(z):
        zz = z.reshape(b, gn_groups, -1)
        zz = (zz - zz.mean(-1, keepdims=True)) / np.sqrt(zz.var(-1, keepdims=True) + eps)
        return zz.reshape(z.shape) * gamma[None, :, None] + beta[None, :, None]

    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    y_h = sig(gn(conv1d(x.mean(axis=3))))
    y_w = sig(gn(conv1d(x.mean(axis=2))))
    return x * y_h[:, :, :, None] * y_w[:, :, None, :]


@pytest.mark.parametrize("variant", list(ELA_TABLE))
def test_ela_variant_table_cost_and_reference(variant):
    kernel, cpg, gn_groups = ELA_TABLE[variant]
    c = 64
    ela = ELA(c, variant)
    assert ela.conv.kernel_size == (kernel,) and ela.conv.bias is None
    assert ela.conv.groups == (c if cpg == 1 else c // 8)
    assert ela.gn.num_groups == gn_groups
    # parameter cost follows the version table: C * (C/groups) * k conv weights + 2C GroupNorm
    assert ela.conv.weight.numel() == c * cpg * kernel
    assert sum(p.numel() for p in ela.parameters()) == c * cpg * kernel + 2 * c
    with torch.no_grad():
        ela.gn.weight.uniform_(0.5, 1.5)
        ela.gn.bias.uniform_(-0.3, 0.3)
    x = torch.randn(2, c, 6, 9)
    ref = _ela_reference(
        x.double().numpy(),
        ela.conv.weight.detach().double().numpy(),
        ela.conv.groups,
        gn_groups,
        ela.gn.weight.detach().double().numpy(),
        ela.gn.bias.detach().double().numpy(),
    )
    np.testing.assert_allclose(ela(x).detach().double().numpy(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "channels,variant,match",
    [
        (36, "S", "divisible by 8"),
        (44, "L", "divisible by 8"),
        (48, "T", "32 GroupNorm"),
        (24, "B", "16 GroupNorm"),
        (64, "M", "unknown ELA variant"),
    ],
)
def test_ela_bad_input(channels, variant, match):
    with pytest.raises(ValueError, match=match):
        ELA(channels, variant)


# ------------------------------------------------------------------------------- ULSAM


def _ulsam_reference(m: ULSAM, x: torch.Tensor, softmax=torch.softmax) -> torch.Tensor:
    """The published per-subspace loop (one small module per subspace), float64, eval-mode BN; ``softmax``
    computes each subspace's map over its flattened positions."""
    x = x.double()
    g, gsize = m.num_subspaces, m.channels // m.num_subspaces

    def bn(z, b, sl):
        return (z - b.running_mean.double()[sl, None, None]) / torch.sqrt(
            b.running_var.double()[sl, None, None] + b.eps
        ) * b.weight.double()[sl, None, None] + b.bias.double()[sl, None, None]

    outs = []
    for s in range(g):
        sl = slice(s * gsize, (s + 1) * gsize)
        f = x[:, sl]
        a = F.conv2d(f, m.conv_dw.weight.double()[sl], m.conv_dw.bias.double()[sl], groups=gsize)
        a = F.max_pool2d(torch.relu(bn(a, m.bn_dw, sl)), 3, 1, 1)
        a = F.conv2d(a, m.conv_pw.weight.double()[s : s + 1], m.conv_pw.bias.double()[s : s + 1])
        a = torch.relu(bn(a, m.bn_pw, slice(s, s + 1)))
        attn = softmax(a.flatten(2), dim=-1).reshape(a.shape)
        outs.append(attn * f + f)
    return torch.cat(outs, dim=1)


def test_ulsam_matches_per_subspace_reference_and_reparam():
    m = randomize_bn(ULSAM(32, 4))
    x = torch.randn(2, 32, 7, 5)
    y = m(x)
    torch.testing.assert_close(y.double(), _ulsam_reference(m, x), rtol=1e-5, atol=1e-6)
    d = edgeattn.reparameterize(m)
    assert_deploy_tree(d)
    assert rel_err(y, d(x)) < 1e-5


@pytest.mark.parametrize("method", ["ibert", "base2"])
def test_ulsam_softmax_method_reaches_every_subspace_map(method):
    """``softmax=`` replaces the map's softmax: the module equals the per-subspace loop computing that method
    in float64, differs from the exact module by the method's error, and keeps it through reparameterize()."""
    torch.manual_seed(1)
    exact = randomize_bn(ULSAM(32, 4))
    m = ULSAM(32, 4, softmax=method)
    m.load_state_dict(exact.state_dict())  # the method adds no parameters
    m.eval()
    x = torch.randn(2, 32, 7, 5)
    y = m(x)

    def approx(z, dim):
        return edgeattn.approx.softmax(z, dim=dim, method=method)

    torch.testing.assert_close(y.double(), _ulsam_reference(m, x, softmax=approx), rtol=1e-5, atol=1e-6)
    gap = (y - exact(x)).abs().max().item()
    assert 0 < gap < 0.05 * x.abs().max().item()
    d = edgeattn.reparameterize(m)
    assert d.softmax.method == method and rel_err(y, d(x)) < 1e-5
    assert edgeattn.approx.approximations_in(d) == {"softmax": {method}, "gelu": set()}


def test_ulsam_costs_match_paper():
    m = 512
    mod = ULSAM(m, 4)
    conv_weights = mod.conv_dw.weight.numel() + mod.conv_pw.weight.numel()
    assert conv_weights == 2 * m  # "2m parameters" (1.0K at m=512)
    assert mod.bn_dw.momentum == 0.1 and mod.bn_pw.momentum == 0.1  # PyTorch's default
    assert count_macs(mod, torch.randn(1, m, 14, 14)) == 2 * m * 14 * 14  # ~0.2M FLOPs at 14x14


def test_ulsam_bad_input():
    with pytest.raises(ValueError, match="divisible by num_subspaces"):
        ULSAM(30, 4)
    with pytest.raises(ValueError, match="unknown softmax method 'fast'"):
        ULSAM(32, 4, softmax="fast")


# ------------------------------------------------------------------------------- reparam convs


def test_identity_and_grouped_kernels():
    x = torch.randn(1, 6, 5, 5, dtype=torch.float64)
    for groups in (1, 2, 6):
        torch.testing.assert_close(F.conv2d(x, identity_kernel(6, groups, 3), padding=1, groups=groups), x)
    w = torch.randn(6, 3, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(F.conv2d(x, grouped_to_dense(w, 2)), F.conv2d(x, w, groups=2))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_channels=8, out_channels=8, kernel_size=3, num_branches=3),  # identity + scale + 3 branches
        dict(in_channels=8, out_channels=16, kernel_size=3, stride=2, groups=4),
        dict(in_channels=8, out_channels=8, kernel_size=3, groups=8, act=None),  # depthwise
        dict(in_channels=4, out_channels=4, kernel_size=1, num_branches=2),
        dict(in_channels=6, out_channels=6, kernel_size=5, stride=1, num_branches=2),
    ],
)
def test_repconv_deploy_equals_train(kwargs):
    m = randomize_bn(RepConv(**kwargs))
    x = torch.randn(2, kwargs["in_channels"], 9, 9)
    y = m(x)
    d = edgeattn.reparameterize(m)
    assert_deploy_tree(d)
    assert (
        isinstance(d.reparam_conv, torch.nn.Conv2d) and d.reparam_conv.kernel_size[0] == kwargs["kernel_size"]
    )
    assert rel_err(y, d(x)) < 1e-5
    assert m.branches is not None  # inplace=False kept the train form


def test_multigroup_conv_fold():
    m = randomize_bn(MultiGroupConv1x1(8, 12, groups=(1, 2, 4)))
    x = torch.randn(2, 8, 4, 4)
    y = m(x)
    edgeattn.reparameterize(m, inplace=True)
    assert_deploy_tree(m)
    assert m.reparam_conv.groups == 1 and m.reparam_conv.weight.shape == (12, 8, 1, 1)
    assert rel_err(y, m(x)) < 1e-5
    with pytest.raises(ValueError, match="divisible by groups=4"):
        MultiGroupConv1x1(6, 8, groups=(1, 4))


@pytest.mark.parametrize("groups", [(2, 4), (4, 1)])
def test_multigroup_conv_fold_float64_without_leading_dense_branch(groups):
    # (2, 4): no dense branch, the deploy conv is built new (must take the weights' dtype);
    # (4, 1): the dense branch is not first and is reused
    m = randomize_bn(MultiGroupConv1x1(8, 12, groups=groups)).double()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        edgeattn.reparameterize(m, inplace=True)
        z = m(x)
    assert_deploy_tree(m)
    assert m.reparam_conv.groups == 1 and m.reparam_conv.weight.dtype == torch.float64
    torch.testing.assert_close(z, y, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("make", "out_shape"),
    [
        (lambda: RepConv(8, 8, 3), (2, 8, 9, 9)),  # identity branch: identity_kernel on the weights' device
        (lambda: RepConv(8, 16, 3, stride=2, groups=4, num_branches=2), (2, 16, 5, 5)),
        (lambda: MultiGroupConv1x1(8, 12, groups=(1, 2, 4)), (2, 12, 9, 9)),
        (lambda: MultiGroupConv1x1(8, 12, groups=(2, 4)), (2, 12, 9, 9)),  # a new conv, built on meta
    ],
)
def test_reparameterize_on_meta_device(make, out_shape):
    # meta tensors have no data: this checks structure and devices only (a stand-in for a GPU)
    m = make().to("meta").eval()
    # the fused float64 kernel and bias are built where the weights are (a CPU accumulator would not be:
    # `cpu_tensor += meta_tensor` silently keeps the CPU zeros, and on a GPU it raises)
    assert {t.device.type for t in m.fused_kernel_bias()} == {"meta"}
    d = edgeattn.reparameterize(m)
    assert_deploy_tree(d)
    assert {p.device.type for p in d.parameters()} == {"meta"}
    y = d(torch.empty(2, 8, 9, 9, device="meta"))
    assert y.device.type == "meta" and tuple(y.shape) == out_shape


def test_identity_kernel_device():
    k = identity_kernel(4, 2, 3, device="meta")
    assert k.device.type == "meta" and k.dtype == torch.float64 and tuple(k.shape) == (4, 2, 3, 3)


# ------------------------------------------------------------------------------- FMViT parts


def test_rlmhsa_matches_reference_and_folds_bn():
    m = randomize_bn(RLMHSA(16, num_heads=2, sr_ratio=2))
    x = torch.randn(2, 16, 6, 4)
    y = m(x)
    # float64 reference: BN, q from all tokens, k/v from 2x2-average-pooled tokens
    xd = x.double()
    bn = m.norm
    xn = (xd - bn.running_mean.double()[:, None, None]) / torch.sqrt(
        bn.running_var.double()[:, None, None] + bn.eps
    )
    xn = xn * bn.weight.double()[:, None, None] + bn.bias.double()[:, None, None]
    tok = xn.flatten(2).transpose(1, 2)
    pooled = xn.reshape(2, 16, 3, 2, 2, 2).mean(dim=(3, 5)).flatten(2).transpose(1, 2)
    q = F.linear(tok, m.q.weight.double(), m.q.bias.double()).reshape(2, 24, 2, 8).transpose(1, 2)
    kv = F.linear(pooled, m.kv.weight.double(), m.kv.bias.double())
    k = kv[..., :16].reshape(2, 6, 2, 8).transpose(1, 2)
    v = kv[..., 16:].reshape(2, 6, 2, 8).transpose(1, 2)
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    out = F.linear((p @ v).transpose(1, 2).reshape(2, 24, 16), m.proj.weight.double(), m.proj.bias.double())
    torch.testing.assert_close(y.double(), out.transpose(1, 2).reshape(2, 16, 6, 4), rtol=1e-5, atol=1e-6)
    for name in QUANT_POINTS:
        assert isinstance(getattr(m, name), torch.nn.Identity)
    d = edgeattn.reparameterize(m)
    assert_deploy_tree(d)
    assert rel_err(y, d(x)) < 1e-5


@pytest.mark.parametrize(
    "factory,shape",
    [
        (lambda: GMLP(16, 48), (2, 16, 5, 5)),
        (lambda: HFBlock(16, 2.0), (2, 16, 5, 5)),
        (lambda: FMBlock(16, 2, sr_ratio=2, gelu="tanh"), (2, 16, 4, 6)),
        (lambda: FMBlock(16, 4, sr_ratio=4, softmax="base2"), (1, 16, 2, 2)),
    ],  # map smaller than sr_ratio
)
def test_fmvit_blocks_fold_exactly(factory, shape):
    m = randomize_bn(factory())
    x = torch.randn(*shape)
    y = m(x)
    d = edgeattn.reparameterize(m)
    assert_deploy_tree(d)
    assert rel_err(y, d(x)) < 1e-5


def test_cfb_groups_2_branch_is_per_path():
    cfb = randomize_bn(CFB(8))
    assert cfb.fuse.groups == (1, 2)
    high, low = torch.randn(1, 8, 3, 3), torch.randn(1, 8, 3, 3)
    y = cfb(high, low)
    d = edgeattn.reparameterize(cfb)
    assert rel_err(y, d(high, low)) < 1e-5


# ------------------------------------------------------------------------------- LLaMA parts


def test_rope_matches_complex_rotation():
    hd, t = 8, 5
    cos, sin = rope_tables(t, hd)
    x = torch.randn(1, 2, t, hd, dtype=torch.float64)
    got = apply_rope(x, cos.double(), sin.double())
    # rotate-half pairs (i, i + hd/2) rotate by position * theta^(-2i/hd): a complex multiplication
    freqs = 10000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    rot = torch.polar(torch.ones(t, hd // 2, dtype=torch.float64), torch.arange(t)[:, None] * freqs)
    z = torch.complex(x[..., : hd // 2], x[..., hd // 2 :]) * rot
    torch.testing.assert_close(got, torch.cat([z.real, z.imag], dim=-1), rtol=1e-6, atol=1e-6)


def test_rmsnorm_and_causal_attention():
    norm = RMSNorm(6)
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    ref = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm.double()(x), ref)
    attn = LlamaAttention(16, 2, seq_len=8).eval()
    probs = {}
    attn.attn_quant.register_forward_hook(lambda m, i, o: probs.__setitem__("p", o))
    x = torch.randn(1, 8, 16)
    y = attn(x)
    assert float(probs["p"].triu(diagonal=1).abs().max()) == 0.0  # nothing attends to the future
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 3, 16)
    torch.testing.assert_close(attn(x2)[:, :5], y[:, :5])
    with pytest.raises(ValueError, match="seq_len"):
        attn(torch.randn(1, 9, 16))
