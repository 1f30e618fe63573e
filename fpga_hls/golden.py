"""Fixed-point golden model of the HLS accelerator (numpy integer arithmetic), bit for bit the C++ templates.

Every tensor is held as its raw two's-complement integers (``numpy.int64``). The exp, reciprocal, online
softmax and Edge-MoE GELU are :mod:`edgeattn.approx.fixed` (the one numeric truth, docs/fixed_point.md);
what is specific to the accelerator is defined here and in docs/hls.md:

- ``ap_fixed`` conversions: truncation toward minus infinity (``AP_TRN``, an arithmetic right shift) and
  two's-complement wrap (``AP_WRAP``), except the attention score which saturates (``AP_SAT``);
- the MAC unit (exact products and sums, one truncation at the end), LayerNorm (integer mean, variance,
  ``isqrt`` and one division), attention operand widths, the rotated key order of the reordered attention,
  the MoE routing (top-k with ties to the lower index, per-expert queues, gate * output accumulation).

Wrapping is what the hardware does; the golden model also *counts* every value that wrapped (an activation
outside the declared range), so the generator can refuse widths that overflow on the test vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edgeattn.approx.fixed import (
    FixedFormat,
    OnlineSoftmaxState,
    deferred_weights,
    edgemoe_table,
    gelu_edgemoe_fixed,
)

__all__ = [
    "HLSFormats",
    "GoldenStats",
    "LayerParams",
    "ModelParams",
    "wrap",
    "linear",
    "layernorm",
    "attention",
    "moe_mlp",
    "encoder_layer",
    "vit_forward",
]

QK_FRAC = 16  # fraction bits of the attention operands q*scale and k
SCALE_FRAC = 16  # fraction bits of the 1/sqrt(head_dim) constant
LN_INV_FRAC = 24  # fraction bits of LayerNorm's 1/std


@dataclass(frozen=True)
class HLSFormats:
    """The accelerator's widths: activations, weights, scores, probabilities, GELU table, LayerNorm."""

    act_width: int = 32
    act_int: int = 10
    weight_width: int = 16
    weight_int: int = 2
    score_width: int = 16
    score_int: int = 6
    prob_frac: int = 8
    gelu_table_frac: int = 16

    @classmethod
    def from_profile(cls, hls) -> HLSFormats:  # hls: edgeattn.device_profile.HLSSpec
        """The formats of a profile's ``hls`` section."""
        return cls(
            act_width=hls.act.width,
            act_int=hls.act.integer,
            weight_width=hls.weight.width,
            weight_int=hls.weight.integer,
            score_width=hls.softmax_in.width,
            score_int=hls.softmax_in.integer,
            prob_frac=hls.softmax_out_frac,
            gelu_table_frac=hls.gelu_table_frac,
        )

    @property
    def act_frac(self) -> int:
        return self.act_width - self.act_int

    @property
    def weight_frac(self) -> int:
        return self.weight_width - self.weight_int

    @property
    def score_frac(self) -> int:
        return self.score_width - self.score_int

    @property
    def act(self) -> FixedFormat:
        return FixedFormat(self.act_width, self.act_frac, True)

    @property
    def weight(self) -> FixedFormat:
        return FixedFormat(self.weight_width, self.weight_frac, True)

    @property
    def score(self) -> FixedFormat:
        return FixedFormat(self.score_width, self.score_frac, True)

    def ln_frac(self, dim: int) -> int:
        """Fraction bits of LayerNorm's centred values: as many as keep ``sum(e^2)`` inside 62 bits."""
        return max(0, min(self.act_frac, (62 - math.ceil(math.log2(max(dim, 2)))) // 2 - self.act_int))

    def check(self, head_dim: int = 64, profile: bool = False) -> None:
        """ValueError naming the field whose value the templates cannot take.

        Messages name the :class:`HLSFormats` field (``act_width``), or with ``profile`` the profile field it
        came from (``hls.act.width``). The ranges are the profile schema's, narrowed to what the templates hold.
        """

        def name(field_name: str) -> str:
            return _PROFILE_FIELDS[field_name] if profile else field_name

        for field_name in _PROFILE_FIELDS:
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name(field_name)} must be an integer, got {value!r}")

        def in_range(field_name: str, lo: int, hi: int, why: str = "") -> None:
            value = getattr(self, field_name)
            if not lo <= value <= hi:
                raise ValueError(f"{name(field_name)} must be in {lo}..{hi}{why}, got {value}")

        in_range("act_width", 8, 32, " (the LayerNorm datapath)")
        in_range("act_int", 1, self.act_width - 5, " (>= 5 fraction bits: the GELU table step is 1/32)")
        in_range("weight_width", 2, 16, " (one DSP multiplier input)")
        in_range("weight_int", 1, self.weight_width, f" (at most {name('weight_width')})")
        in_range("score_width", 2, 32)
        max_score_frac = 2 * QK_FRAC
        lo = max(1, self.score_width - max_score_frac)
        in_range("score_int", lo, self.score_width, f" (<= {max_score_frac} fraction bits)")
        in_range("prob_frac", 4, 24)
        # the profile's range; wider entries overflow the C++ int table
        in_range("gelu_table_frac", 8, 24)
        if self.act_frac + self.weight_frac > 40:
            frac_names = f"{name('act_width')} - {name('act_int')} + {name('weight_width')} - {name('weight_int')}"
            raise ValueError(
                f"{frac_names} (the fraction bits) must be <= 40 (the 64-bit MAC accumulator), "
                f"got {self.act_frac + self.weight_frac}"
            )
        if 2 * (self.act_int - 1 + QK_FRAC) + math.ceil(math.log2(max(head_dim, 2))) > 62:
            raise ValueError(f"{name('act_int')} too large for the 64-bit q.k accumulator at head_dim {head_dim}")


# HLSFormats field -> the device profile field it is read from (HLSFormats.from_profile)
_PROFILE_FIELDS = {
    "act_width": "hls.act.width",
    "act_int": "hls.act.integer",
    "weight_width": "hls.weight.width",
    "weight_int": "hls.weight.integer",
    "score_width": "hls.softmax_in.width",
    "score_int": "hls.softmax_in.integer",
    "prob_frac": "hls.softmax_out_frac",
    "gelu_table_frac": "hls.gelu_table_frac",
}


@dataclass
class GoldenStats:
    """What wrapped or saturated while the golden model ran (per stage name)."""

    overflow: dict[str, int] = field(default_factory=dict)
    max_abs: dict[str, float] = field(default_factory=dict)
    score_saturated: int = 0
    scores: int = 0

    def record(self, name: str, exact: np.ndarray, fmt: FixedFormat) -> None:
        bad = int(np.count_nonzero((exact < fmt.min_int) | (exact > fmt.max_int)))
        if bad:
            self.overflow[name] = self.overflow.get(name, 0) + bad
        peak = float(np.max(np.abs(exact.astype(np.float64)))) * fmt.lsb if exact.size else 0.0
        self.max_abs[name] = max(self.max_abs.get(name, 0.0), peak)


def wrap(v: np.ndarray, width: int) -> np.ndarray:
    """Two's-complement wrap of integers to ``width`` bits (``AP_WRAP``)."""
    v = np.asarray(v)
    if v.dtype == object:
        half = 1 << (width - 1)
        return np.array([((int(a) + half) % (1 << width)) - half for a in v.ravel()], dtype=np.int64).reshape(
            v.shape
        )
    mask = np.int64((1 << width) - 1)
    half = np.int64(1 << (width - 1))
    return ((v.astype(np.int64) + half) & mask) - half


def _to_act(exact: np.ndarray, fmt: HLSFormats, stats: GoldenStats | None, name: str) -> np.ndarray:
    if stats is not None:
        stats.record(name, exact, fmt.act)
    return wrap(exact, fmt.act_width)


def _shift(v: np.ndarray, s: int) -> np.ndarray:
    """Exact ``v * 2^-s`` truncated toward minus infinity (``s`` may be negative: a left shift)."""
    return v >> s if s >= 0 else v << (-s)


# ----------------------------------------------------------------------------------- layers
def linear(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    fmt: HLSFormats,
    stats: GoldenStats | None = None,
    name: str = "",
) -> np.ndarray:
    """MAC unit: ``act(floor((x W^T + b) / 2^Fw))`` with exact products and sums."""
    acc = x @ w.T + (b << fmt.weight_frac)
    return _to_act(acc >> fmt.weight_frac, fmt, stats, name)


def layernorm(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float,
    fmt: HLSFormats,
    stats: GoldenStats | None = None,
    name: str = "",
) -> np.ndarray:
    """Fixed-point LayerNorm over the last axis (the integer steps of docs/hls.md, ``ea_layernorm.h``)."""
    rows, dim = x.shape
    fa = fmt.act_frac
    lf = fmt.ln_frac(dim)
    mean = np.sum(x, axis=1, keepdims=True) // dim  # floor division
    d = x - mean
    e = _shift(d, fa - lf)
    var = np.sum(e * e, axis=1) // dim + ln_eps_raw(eps, lf)
    s = np.array([math.isqrt(int(v)) for v in var], dtype=object)
    inv = np.array([(1 << (lf + LN_INV_FRAC)) // int(v) for v in s], dtype=object)
    # the products can exceed 64 bits in principle: Python integers here, 128-bit ap_int in the C++
    y = (d.astype(object) * inv[:, None]) >> LN_INV_FRAC
    z = ((y * gamma.astype(object)[None, :]) >> fa) + beta.astype(object)[None, :]
    exact = z
    if stats is not None:
        big = np.array([[int(v) for v in row] for row in exact], dtype=np.float64)
        bad = int(np.count_nonzero((big < fmt.act.min_int) | (big > fmt.act.max_int)))
        if bad:
            stats.overflow[name] = stats.overflow.get(name, 0) + bad
        stats.max_abs[name] = max(stats.max_abs.get(name, 0.0), float(np.max(np.abs(big))) * fmt.act.lsb)
    return wrap(exact, fmt.act_width)


def ln_eps_raw(eps: float, ln_frac: int) -> int:
    """LayerNorm epsilon as an integer with ``2 * ln_frac`` fraction bits (at least 1, so 1/std exists)."""
    return max(1, int(math.floor(eps * 2.0 ** (2 * ln_frac) + 0.5)))


def qscale_raw(head_dim: int) -> int:
    """``1/sqrt(head_dim)`` with :data:`SCALE_FRAC` fraction bits, rounded half up."""
    return int(math.floor(head_dim**-0.5 * 2**SCALE_FRAC + 0.5))


def attention(
    qkv: np.ndarray, num_heads: int, fmt: HLSFormats, stats: GoldenStats | None = None, name: str = ""
) -> np.ndarray:
    """Multi-head attention on the QKV linear's output ``(N, 3D)`` -> merged heads ``(N, D)`` (act ints).

    Row ``i`` streams its keys in the rotated order ``i, i+1, ..., N-1, 0, ..., i-1`` (the reordered
    schedule of ``ea_attention.h``); the online softmax state and the rounding residual follow that order.
    """
    n, three_d = qkv.shape
    dim = three_d // 3
    hd = dim // num_heads
    fa = fmt.act_frac
    sfmt = fmt.score
    q = qkv[:, :dim].reshape(n, num_heads, hd).transpose(1, 0, 2)
    k = qkv[:, dim : 2 * dim].reshape(n, num_heads, hd).transpose(1, 0, 2)
    v = qkv[:, 2 * dim :].reshape(n, num_heads, hd).transpose(1, 0, 2)
    qs = (q * qscale_raw(hd)) >> (fa + SCALE_FRAC - QK_FRAC)  # q * scale truncated to QK_FRAC bits
    ks = _shift(k, fa - QK_FRAC)
    dot = qs @ ks.transpose(0, 2, 1)  # (H, N, N), 2*QK_FRAC fraction bits, exact
    score_exact = _shift(dot, 2 * QK_FRAC - fmt.score_frac)
    scores = np.clip(score_exact, sfmt.min_int, sfmt.max_int)  # AP_SAT
    if stats is not None:
        stats.score_saturated += int(np.count_nonzero(scores != score_exact))
        stats.scores += int(scores.size)
    # rotate row i to start at key i, run the online softmax along that order, rotate back
    idx = (np.arange(n)[:, None] + np.arange(n)[None, :]) % n  # idx[i, t] = key seen at sweep position t
    rot = np.take_along_axis(scores, np.broadcast_to(idx, scores.shape), axis=2)
    state = OnlineSoftmaxState(sfmt, rot.shape[:-1])
    state.update(rot)
    m, inv_d = state.finalize()
    p_rot, _ = deferred_weights(rot, m, inv_d, sfmt, out_frac=fmt.prob_frac)
    p = np.empty_like(p_rot)
    np.put_along_axis(p, np.broadcast_to(idx, p.shape), p_rot, axis=2)
    out = (p @ v) >> fmt.prob_frac  # (H, N, hd), exact sum then truncation
    out = out.transpose(1, 0, 2).reshape(n, dim)
    return _to_act(out, fmt, stats, name)


def gelu(h: np.ndarray, fmt: HLSFormats) -> np.ndarray:
    """Edge-MoE GELU on act ints (docs/fixed_point.md), wrapped back to the activation width."""
    y = gelu_edgemoe_fixed(h, fmt.act, table_frac=fmt.gelu_table_frac)
    return wrap(y, fmt.act_width)


def gelu_table(fmt: HLSFormats) -> np.ndarray:
    """The GELU residual table at the profile's table fraction bits."""
    return edgemoe_table(fmt.gelu_table_frac)


@dataclass
class LayerParams:
    """Raw integer parameters of one encoder layer (act ints, except weight-int matrices)."""

    ln1_g: np.ndarray
    ln1_b: np.ndarray
    qkv_w: np.ndarray
    qkv_b: np.ndarray
    proj_w: np.ndarray
    proj_b: np.ndarray
    ln2_g: np.ndarray
    ln2_b: np.ndarray
    num_heads: int
    ln1_eps: float
    ln2_eps: float
    # dense MLP ...
    fc1_w: np.ndarray | None = None
    fc1_b: np.ndarray | None = None
    fc2_w: np.ndarray | None = None
    fc2_b: np.ndarray | None = None
    # ... or MoE MLP (experts stacked on axis 0)
    gate_w: np.ndarray | None = None
    gate_b: np.ndarray | None = None
    efc1_w: np.ndarray | None = None
    efc1_b: np.ndarray | None = None
    efc2_w: np.ndarray | None = None
    efc2_b: np.ndarray | None = None
    top_k: int = 0

    @property
    def is_moe(self) -> bool:
        return self.gate_w is not None


@dataclass
class ModelParams:
    """Raw integer parameters of the tiny ViT around the encoder layers."""

    patch: int
    in_chans: int
    img_size: int
    patch_w: np.ndarray  # (D, C*p*p), features in (c, ky, kx) order
    patch_b: np.ndarray
    cls_token: np.ndarray
    pos_embed: np.ndarray  # (tokens, D)
    layers: list[LayerParams]
    norm_g: np.ndarray
    norm_b: np.ndarray
    norm_eps: float
    head_w: np.ndarray
    head_b: np.ndarray


def moe_mlp(
    xn: np.ndarray, lp: LayerParams, fmt: HLSFormats, stats: GoldenStats | None = None, name: str = ""
) -> np.ndarray:
    """Sum over the selected experts of ``act(gate * act(expert(xn)))`` (exact sum; the caller wraps)."""
    assert lp.gate_w is not None and lp.gate_b is not None
    assert lp.efc1_w is not None and lp.efc1_b is not None and lp.efc2_w is not None and lp.efc2_b is not None
    n = xn.shape[0]
    logits = linear(xn, lp.gate_w, lp.gate_b, fmt, stats, f"{name}.gate")
    order = np.argsort(-logits, axis=1, kind="stable")[:, : lp.top_k]  # largest first, ties: lower index
    top = np.take_along_axis(logits, order, axis=1)
    top_scores = np.clip(_shift(top, fmt.act_frac - fmt.score_frac), fmt.score.min_int, fmt.score.max_int)
    state = OnlineSoftmaxState(fmt.score, (n,))
    state.update(top_scores)
    m, inv_d = state.finalize()
    gates, _ = deferred_weights(top_scores, m, inv_d, fmt.score, out_frac=fmt.prob_frac)
    out = np.zeros_like(xn)
    for e in range(lp.gate_w.shape[0]):
        rows, slot = np.nonzero(order == e)  # tokens queued for expert e, in token order
        if rows.size == 0:
            continue
        h = gelu(linear(xn[rows], lp.efc1_w[e], lp.efc1_b[e], fmt, stats, f"{name}.expert{e}.fc1"), fmt)
        y = linear(h, lp.efc2_w[e], lp.efc2_b[e], fmt, stats, f"{name}.expert{e}.fc2")
        out[rows] += (gates[rows, slot][:, None] * y) >> fmt.prob_frac
    return out


def encoder_layer(
    x: np.ndarray, lp: LayerParams, fmt: HLSFormats, stats: GoldenStats | None = None, name: str = "layer"
) -> np.ndarray:
    """One pre-norm encoder layer on act ints ``(N, D)`` -> ``(N, D)``."""
    xn = layernorm(x, lp.ln1_g, lp.ln1_b, lp.ln1_eps, fmt, stats, f"{name}.norm1")
    qkv = linear(xn, lp.qkv_w, lp.qkv_b, fmt, stats, f"{name}.qkv")
    att = attention(qkv, lp.num_heads, fmt, stats, f"{name}.attn")
    po = linear(att, lp.proj_w, lp.proj_b, fmt, stats, f"{name}.proj")
    x = _to_act(x + po, fmt, stats, f"{name}.resid1")
    xn = layernorm(x, lp.ln2_g, lp.ln2_b, lp.ln2_eps, fmt, stats, f"{name}.norm2")
    if lp.is_moe:
        mix = moe_mlp(xn, lp, fmt, stats, f"{name}.moe")
        return _to_act(x + mix, fmt, stats, f"{name}.resid2")
    assert lp.fc1_w is not None and lp.fc1_b is not None and lp.fc2_w is not None and lp.fc2_b is not None
    h = gelu(linear(xn, lp.fc1_w, lp.fc1_b, fmt, stats, f"{name}.fc1"), fmt)
    y = linear(h, lp.fc2_w, lp.fc2_b, fmt, stats, f"{name}.fc2")
    return _to_act(x + y, fmt, stats, f"{name}.resid2")


def patchify(image: np.ndarray, patch: int) -> np.ndarray:
    """(C, H, W) -> (num_patches, C*p*p), patches row-major, features in (c, ky, kx) order."""
    c, h, w = image.shape
    g_h, g_w = h // patch, w // patch
    t = image.reshape(c, g_h, patch, g_w, patch).transpose(1, 3, 0, 2, 4)
    return t.reshape(g_h * g_w, c * patch * patch)


def vit_forward(
    image: np.ndarray, mp: ModelParams, fmt: HLSFormats, stats: GoldenStats | None = None
) -> np.ndarray:
    """Whole tiny ViT on an act-int image ``(C, H, W)`` -> class logits (act ints)."""
    emb = linear(patchify(image, mp.patch), mp.patch_w, mp.patch_b, fmt, stats, "patch_embed")
    tokens = np.concatenate([mp.cls_token[None, :], emb], axis=0)
    x = _to_act(tokens + mp.pos_embed, fmt, stats, "pos_embed")
    for i, lp in enumerate(mp.layers):
        x = encoder_layer(x, lp, fmt, stats, f"blocks.{i}")
    xn = layernorm(x[:1], mp.norm_g, mp.norm_b, mp.norm_eps, fmt, stats, "norm")
    return linear(xn, mp.head_w, mp.head_b, fmt, stats, "head")[0]
