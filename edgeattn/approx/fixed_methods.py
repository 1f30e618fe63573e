"""Integer (fixed-point) models of every softmax/GELU method, for the accuracy report.

The HLS contract is :mod:`edgeattn.approx.fixed` (online softmax, Edge-MoE GELU). This module adds integer
versions of the published anchors so each method can be compared in fixed point too:

- softmax ``exact``: the *ideal* quantizer, ``round(softmax_float64(x) * 2^out)`` (the floor any hardware
  method is measured against; not integer arithmetic);
- softmax ``online``: :func:`edgeattn.approx.fixed.online_softmax_fixed` (error-diffusion rounding);
- softmax ``ibert``: I-BERT's integer i-exp (``q_ln2``, ``z``, ``(p + q_b)^2 + q_c``, ``>> z``) and an integer
  division for the normalisation;
- softmax ``shift``: I-ViT Shiftmax (``x + x>>1 - x>>4``, ``2^r ~ r/2 + 1``, shifts) and an integer division;
- softmax ``base2``: Softermax-style base 2 with an integer (``ceil``) max, an 8-segment piecewise-linear
  ``2^frac`` table and :func:`fx_recip`;
- GELU ``exact``: ideal quantizer of float64 GELU; ``edgemoe`` / ``edgemoe_mm``: :func:`gelu_edgemoe_fixed`;
  ``ibert``: I-BERT's integer i-GELU with a dyadic requantization; ``respoly``: this project's clipped cubic
  residual; ``sigmoid`` and ``tanh``: ``x * sigmoid(z)`` (sigmoid by :func:`fx_exp`, :func:`fx_recip`).

Every function takes integer inputs in a declared :class:`FixedFormat` and returns integers with ``out_frac``
fraction bits; intermediate widths stay below 63 bits (checked by the tests over the full input range), and a
format for which they would not is refused with a ``ValueError`` naming ``in_fmt`` (the limits are in each
softmax docstring), before anything is computed.
"""

from __future__ import annotations

import math

import numpy as np

from edgeattn.approx import float_ops as fo
from edgeattn.approx.fixed import (
    D_FRAC,
    E_FRAC,
    INT64_MAX,
    INT64_MIN,
    LOG2E_FRAC,
    LOG2E_Q,
    R_FRAC,
    Y_FRAC,
    FixedFormat,
    _fmt,
    _int_arg,
    _prob_args,
    fx_exp,
    fx_recip,
    gelu_edgemoe_fixed,
    online_softmax_fixed,
    round_shift,
)

NORM_BITS = 56  # normalisation constant 2^56 // sum used by the ibert and shift softmax models


def _ideal(values: np.ndarray, out_frac: int, lo: int, hi: int) -> np.ndarray:
    return np.clip(np.floor(values * 2.0**out_frac + 0.5), lo, hi).astype(np.int64)


def _normalise(e: np.ndarray, out_frac: int, out_max: int, e_bound: int) -> np.ndarray:
    """``e / sum(e)`` with one integer division per row: ``(e * (2^56 // sum)) >> (56 - out_frac)``.

    ``e_bound`` bounds every ``e``. Where a full row of them could bring the sum within 2^(out_frac + 8) of 2^56
    (wide score formats: the I-BERT exp of 24 fraction bits is ~2^49.5), ``e`` is first rounded right by a static
    shift, so ``2^56 // sum`` keeps at least ``out_frac + 8`` bits (it reached 0, an all-zero row, before).
    """
    pre = max(0, (int(e_bound) * e.shape[-1]).bit_length() - (NORM_BITS - out_frac - 8))
    if pre:
        e = round_shift(e, pre, "half-up")
    total = np.sum(e, axis=-1, keepdims=True)
    factor = (np.int64(1) << NORM_BITS) // np.maximum(total, 1)
    return np.minimum(round_shift(e * factor, NORM_BITS - out_frac, "half-up"), out_max)


# ------------------------------------------------------------------------------------------------ softmax
def _softmax_args(s: np.ndarray, in_fmt: FixedFormat, out_frac: int) -> np.ndarray:
    """``s`` checked against ``in_fmt`` (a :class:`FixedFormat`) and ``out_frac`` in 1..40, before computing."""
    _prob_args(out_frac)
    return _fmt(in_fmt, "in_fmt").check(s, "s")


def _out_of_range(in_fmt: FixedFormat, method: str, why: str) -> ValueError:
    return ValueError(f"argument 'in_fmt': the {method} softmax cannot take {in_fmt}: {why}")


def softmax_ibert_fixed(s: np.ndarray, in_fmt: FixedFormat, out_frac: int = 8) -> np.ndarray:
    """I-BERT integer softmax (i-exp with ``n = 30`` clamp) on ``sfix`` scores.

    Needs ``1 <= frac <= 30``: the i-exp polynomial peaks at ``q_b^2 + q_c ~ 2.79 * 2^(2 frac)``, which must stay
    below 2^63 (checked on the integer constants themselves).
    """
    s = _softmax_args(s, in_fmt, out_frac)
    f = in_fmt.frac
    q_ln2 = int(math.floor(fo.LN2 * 2.0**f))
    if q_ln2 < 1:
        raise ValueError(f"argument 'in_fmt' needs frac >= 1 for the ibert softmax, got {in_fmt}")
    q_b = int(math.floor(fo.IBERT_EXP_B * 2.0**f))
    q_c = int(math.floor(fo.IBERT_EXP_C / fo.IBERT_EXP_A * 2.0 ** (2 * f)))
    if q_b * q_b + q_c > INT64_MAX:
        raise _out_of_range(in_fmt, "ibert", "the i-exp polynomial q_b^2 + q_c passes 2^63 (frac <= 30)")
    x = s - s.max(axis=-1, keepdims=True)
    x = np.maximum(x, -30 * q_ln2)
    z = (-x) // q_ln2
    p = x + z * q_ln2
    poly = (p + q_b) ** 2 + q_c  # scale A * 2^-2f
    e = poly >> z
    return _normalise(e, out_frac, (1 << out_frac) - 1, e_bound=q_b * q_b + q_c)  # poly is largest at p = 0


def softmax_shift_fixed(s: np.ndarray, in_fmt: FixedFormat, out_frac: int = 8) -> np.ndarray:
    """I-ViT Shiftmax (ShiftExp with ``n = 15`` clamp) on ``sfix`` scores.

    Needs ``frac <= 47``: the exp term ``(1 + r/2) * 2^n`` reaches ``2^(frac + 15)``, which must stay below 2^63.
    """
    s = _softmax_args(s, in_fmt, out_frac)
    f = in_fmt.frac
    n = 15
    if (1 << (f + n)) > INT64_MAX:
        raise _out_of_range(in_fmt, "shift", f"its exp terms reach 2^(frac + {n}), past 2^63 (frac <= {62 - n})")
    x = s - s.max(axis=-1, keepdims=True)
    xp = x + (x >> 1) - (x >> 4)
    x0 = -(1 << f)  # -1.0
    xp = np.maximum(xp, n * x0)
    q = xp // x0  # floor division of two negatives: q >= 0
    r = xp - x0 * q  # in (x0, 0]
    e = ((r >> 1) - x0) << n  # (1 + r/2) * 2^n
    e = e >> q
    return _normalise(e, out_frac, (1 << out_frac) - 1, e_bound=-x0 << n)  # (1 + r/2) * 2^n <= 2^(f + n)


BASE2_KNOT_FRAC = 16
BASE2_KNOTS = np.array(
    [
        int(math.floor(2.0 ** (j / fo.BASE2_SEGMENTS) * 2**BASE2_KNOT_FRAC + 0.5))
        for j in range(fo.BASE2_SEGMENTS + 1)
    ],
    dtype=np.int64,
)


def softmax_base2_fixed(s: np.ndarray, in_fmt: FixedFormat, out_frac: int = 8) -> np.ndarray:
    """Softermax-style base 2: ``t = s*log2e`` (Q.16), ``m = ceil(max t)``, LPW ``2^frac``, reciprocal.

    Needs ``width <= 39`` (unsigned: ``<= 38``): the product ``s * LOG2E_Q`` (``LOG2E_Q ~ 2^24.53``) must fit int64.
    """
    s = _softmax_args(s, in_fmt, out_frac)
    if in_fmt.min_int * LOG2E_Q < INT64_MIN or in_fmt.max_int * LOG2E_Q > INT64_MAX:
        raise _out_of_range(in_fmt, "base2", "s * LOG2E_Q (25 bits) does not fit int64 (width <= 39, unsigned <= 38)")
    f = in_fmt.frac
    t = round_shift(s * LOG2E_Q, f + LOG2E_FRAC - Y_FRAC, "half-up")
    one = np.int64(1) << Y_FRAC
    m = ((t.max(axis=-1, keepdims=True) + one - 1) >> Y_FRAC) << Y_FRAC  # integer ceil of the max
    u = t - m  # <= 0
    k = u >> Y_FRAC
    r = u - (k << Y_FRAC)
    seg_bits = Y_FRAC - int(math.log2(fo.BASE2_SEGMENTS))
    j = r >> seg_bits
    w = r & ((1 << seg_bits) - 1)
    lo = BASE2_KNOTS[j]
    pw = lo + round_shift((BASE2_KNOTS[j + 1] - lo) * w, seg_bits, "half-up")  # 2^r, 16 fraction bits
    sh = np.minimum(-k, 62)
    e = np.where(-k >= 40, 0, round_shift_var(pw, sh))  # E_FRAC == 16 fraction bits
    d = np.sum(e, axis=-1, keepdims=True)  # >= 2^15: the max element has e >= 0.5
    inv = fx_recip(d, D_FRAC, R_FRAC)
    out = round_shift(e * inv, E_FRAC + R_FRAC - out_frac, "half-up")
    return np.minimum(out, (1 << out_frac) - 1)


def round_shift_var(v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Half-up rounding shift by a per-element amount ``s >= 0``."""
    v = np.asarray(v, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    half = np.where(s > 0, np.int64(1) << np.maximum(s - 1, 0), 0)
    return (v + half) >> s


def softmax_fixed(s: np.ndarray, in_fmt: FixedFormat, method: str, out_frac: int = 8) -> np.ndarray:
    """Fixed-point softmax of integer scores ``s`` (rows on the last axis) by ``method``.

    ``out_frac`` in 1..40. Input limits (ValueError naming ``in_fmt``): ``online`` width <= 37, ``ibert``
    1 <= frac <= 30, ``shift`` frac <= 47, ``base2`` width <= 39 (``exact``: none).
    """
    fo._check_method(method, fo.SOFTMAX_METHODS, "softmax")
    integer = {"ibert": softmax_ibert_fixed, "shift": softmax_shift_fixed, "base2": softmax_base2_fixed}
    if method in integer:  # each checks its arguments with _softmax_args itself
        return integer[method](s, in_fmt, out_frac)
    s = _softmax_args(s, in_fmt, out_frac)
    if method == "exact":
        x = in_fmt.dequantize(s)
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return _ideal(e / e.sum(axis=-1, keepdims=True), out_frac, 0, (1 << out_frac) - 1)
    return online_softmax_fixed(s, in_fmt, out_frac)


# --------------------------------------------------------------------------------------------------- GELU
def _dyadic(c: float) -> tuple[int, int]:
    """``c ~ M / 2^K`` with ``|M|`` in [2^15, 2^16)."""
    k = 15 - math.floor(math.log2(abs(c)))
    return int(round(c * 2.0**k)), k


def _requant(v: np.ndarray, c: float, v_bound: int) -> np.ndarray:
    """``round(v * c)`` by a 16-bit dyadic multiply; ``|v| <= v_bound``.

    Where ``v * M`` could pass 62 bits (wide GELU inputs), ``v`` is first rounded right by a static shift chosen
    from ``v_bound``, as a hardware datapath would narrow it before the multiplier.
    """
    m, k = _dyadic(c)
    pre = max(0, int(v_bound).bit_length() + abs(m).bit_length() - 62)
    if pre:
        v, k = round_shift(v, pre, "half-up"), k - pre
    return round_shift(v * m, k, "half-up") if k >= 0 else (v * m) << (-k)


def gelu_ibert_fixed(x: np.ndarray, in_fmt: FixedFormat, out_frac: int) -> np.ndarray:
    """I-BERT integer i-GELU; output scale ``S * a * S'^2 / 2`` requantized by a 16-bit dyadic multiply."""
    f = in_fmt.frac
    s_erf = 2.0**-f / math.sqrt(2.0)  # scale of x/sqrt2 on the same integers
    q_b = int(math.floor(fo.IBERT_GELU_B / s_erf))  # negative
    q_c = int(math.floor(1.0 / (fo.IBERT_GELU_A * s_erf**2)))  # negative
    sgn = np.sign(x)
    clip = np.minimum(np.abs(x), -q_b)
    l_int = sgn * ((clip + q_b) ** 2 + q_c)
    out = x * (l_int + q_c)
    # |l_int + q_c| <= max(q_b^2, 2|q_c|) (l_int lies in [q_c, q_b^2 + q_c] times the sign of x)
    out_bound = (1 << (in_fmt.width - 1)) * max(q_b * q_b, 2 * abs(q_c))
    scale = 2.0**-f * fo.IBERT_GELU_A * s_erf**2 / 2.0
    return _requant(out, scale * 2.0**out_frac, out_bound)


RESPOLY_FRAC = 16  # fraction bits of the respoly constants


def gelu_respoly_fixed(x: np.ndarray, in_fmt: FixedFormat, out_frac: int) -> np.ndarray:
    """``ReLU(x) - tc*(c - tc)^2*(k1 + k2*tc)`` in integers (constants with 16 fraction bits)."""
    f = in_fmt.frac
    c_q = int(round(fo.RESPOLY_C * 2.0**f))
    k1 = int(round(fo.RESPOLY_K1 * 2.0**RESPOLY_FRAC))
    k2 = int(round(fo.RESPOLY_K2 * 2.0**RESPOLY_FRAC))
    tc = np.minimum(np.abs(x), c_q)
    u = c_q - tc
    u2 = round_shift(u * u, f, "half-up")  # f fraction bits
    g = k1 + round_shift(k2 * tc, f, "half-up")  # 16 fraction bits
    tg = tc * g  # f + 16 fraction bits (kept: tc*g is small near 0)
    sh = 2 * f + RESPOLY_FRAC - out_frac
    delta = round_shift(tg * u2, sh, "half-up") if sh >= 0 else (tg * u2) << (-sh)
    relu = np.maximum(x, 0)
    relu_o = relu << (out_frac - f) if out_frac >= f else round_shift(relu, f - out_frac, "half-up")
    return relu_o - delta


def _sigmoid_q24(z: np.ndarray, z_frac: int) -> np.ndarray:
    """``sigmoid(z)`` with 24 fraction bits: ``e = fx_exp(-|z|)``, ``1/(1+e)`` by :func:`fx_recip`."""
    # beyond |z| = 32, exp(-|z|) is 0 at E_FRAC bits anyway; the clip keeps fx_exp's input in range for wide z
    e = fx_exp(-np.minimum(np.abs(z), 32 << z_frac), z_frac, E_FRAC)
    inv = fx_recip((np.int64(1) << E_FRAC) + e, E_FRAC, R_FRAC)  # 1/(1+e), 24 bits
    return np.where(z >= 0, inv, round_shift(e * inv, E_FRAC, "half-up"))


def gelu_sigmoid_fixed(x: np.ndarray, in_fmt: FixedFormat, out_frac: int) -> np.ndarray:
    """``x * sigmoid(1.702 x)`` in integers."""
    f = in_fmt.frac
    z = round_shift(x * int(round(1.702 * 2**14)), 14, "half-up")
    return round_shift(x * _sigmoid_q24(z, f), f + R_FRAC - out_frac, "half-up")


def gelu_tanh_fixed(x: np.ndarray, in_fmt: FixedFormat, out_frac: int) -> np.ndarray:
    """tanh-GELU as ``x * sigmoid(2u)``, ``2u = 2*sqrt(2/pi)*(x + 0.044715 x^3)``, in integers."""
    f = in_fmt.frac
    ka = int(round(2.0 * math.sqrt(2.0 / math.pi) * 2**16))
    kb = int(round(2.0 * math.sqrt(2.0 / math.pi) * 0.044715 * 2**16))
    x2 = round_shift(x * x, f, "half-up")
    x3 = round_shift(x2 * x, f, "half-up")
    z = round_shift(x * ka + x3 * kb, 16, "half-up")
    return round_shift(x * _sigmoid_q24(z, f), f + R_FRAC - out_frac, "half-up")


def gelu_fixed(x: np.ndarray, in_fmt: FixedFormat, method: str, out_frac: int | None = None) -> np.ndarray:
    """Fixed-point GELU of integer ``x`` (signed ``in_fmt``, ``5 <= frac <= width <= 20``) by ``method``.

    ``frac <= width``: a format with more fraction bits than bits (all of its values inside +-2^(width-1-frac))
    overflowed ibert's int64 intermediates from frac 31 and gave it wrong results from frac 21."""
    fo._check_method(method, fo.GELU_METHODS, "gelu")
    in_fmt = _fmt(in_fmt, "in_fmt")
    if not in_fmt.signed or not 5 <= in_fmt.frac <= in_fmt.width or in_fmt.width > 20:
        raise ValueError(
            f"argument 'in_fmt' must be signed with 5 <= frac <= width <= 20 for the GELU models, got {in_fmt}"
        )
    out_frac = _int_arg(in_fmt.frac if out_frac is None else out_frac, "out_frac", 0, 24)
    x = in_fmt.check(x, "x")
    if method == "exact":
        xf = in_fmt.dequantize(x)
        y = 0.5 * xf * np.vectorize(math.erfc)(-xf / math.sqrt(2.0))
        return _ideal(y, out_frac, -(1 << 62), 1 << 62)
    if method in ("edgemoe", "edgemoe_mm"):
        return gelu_edgemoe_fixed(x, in_fmt, 16, out_frac, table="mm" if method == "edgemoe_mm" else "exact")
    fn = {
        "ibert": gelu_ibert_fixed,
        "respoly": gelu_respoly_fixed,
        "sigmoid": gelu_sigmoid_fixed,
        "tanh": gelu_tanh_fixed,
    }[method]
    return fn(x, in_fmt, out_frac)
