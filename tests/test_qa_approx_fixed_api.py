"""QA of the fixed-point golden model's API edges (edgeattn.approx.fixed, .fixed_methods): formats too wide for
int64 intermediates are refused, not wrapped; quantize/check stay inside the format; out_frac, integer inputs
and shifts of 63 bits and more are validated or exact. References are Python's unbounded ints or float64 math."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest

from edgeattn.approx import fixed as fx
from edgeattn.approx.fixed import FixedFormat
from edgeattn.approx.fixed_methods import gelu_fixed, softmax_fixed

I64_MAX = (1 << 63) - 1


def _ref_softmax(q: np.ndarray, fmt: FixedFormat) -> np.ndarray:
    """float64 softmax of the exact values (each Python int scaled by 2^-frac, no int64 arithmetic)."""
    x = np.array([[float(Fraction(int(v), 1 << fmt.frac)) for v in row] for row in q.tolist()])
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _ref_gelu(q: np.ndarray, fmt: FixedFormat) -> np.ndarray:
    x = np.array([float(Fraction(int(v), 1 << fmt.frac)) for v in q.tolist()])
    return 0.5 * x * np.vectorize(math.erfc)(-x / math.sqrt(2.0))


def _rows(fmt: FixedFormat) -> np.ndarray:
    """Extreme rows: the range ends, with a near-max neighbour one and four units below the max."""
    one = 1 << fmt.frac
    rows = [
        [fmt.max_int, fmt.max_int - one, fmt.min_int, 0],
        [fmt.max_int, fmt.max_int - 4 * one, fmt.min_int, fmt.min_int],
        [fmt.min_int, fmt.min_int, fmt.min_int + one, fmt.min_int],
    ]
    return np.array([[min(max(v, fmt.min_int), fmt.max_int) for v in row] for row in rows], dtype=np.int64)


# ------------------------------------------------------------------ 1. softmax formats too wide for int64
def _widest(fits) -> int:
    return max(w for w in range(2, 63) if fits(w))


# the limits, derived here with Python ints from the bit growth of each method's largest intermediate
BASE2_MAX_WIDTH = _widest(lambda w: (1 << (w - 1)) * fx.LOG2E_Q <= 1 << 63)  # s * LOG2E_Q, s = min_int


def _ibert_poly_max(f: int) -> int:
    from edgeattn.approx import float_ops as fo

    q_b = math.floor(fo.IBERT_EXP_B * 2.0**f)
    return q_b * q_b + math.floor(fo.IBERT_EXP_C / fo.IBERT_EXP_A * 2.0 ** (2 * f))


IBERT_MAX_FRAC = max(f for f in range(1, 63) if _ibert_poly_max(f) <= I64_MAX)  # (p + q_b)^2 + q_c at p = 0
SHIFT_MAX_FRAC = max(f for f in range(0, 63) if 1 << (f + 15) <= I64_MAX)  # (1 + r/2) * 2^15 with r = 0


def test_softmax_limits_are_the_int64_bit_growth() -> None:
    assert (BASE2_MAX_WIDTH, IBERT_MAX_FRAC, SHIFT_MAX_FRAC) == (39, 30, 47)  # as the docstrings state


@pytest.mark.parametrize(
    "method,fmt",
    [
        ("base2", FixedFormat(48, 8)),  # returned [[0, 0, 255, 0]] for a row whose max is first
        ("base2", FixedFormat(BASE2_MAX_WIDTH + 1, 8)),
        ("base2", FixedFormat(BASE2_MAX_WIDTH, 8, False)),  # unsigned: max_int * LOG2E_Q passes 2^63
        ("ibert", FixedFormat(40, 32)),  # raised OverflowError
        ("ibert", FixedFormat(IBERT_MAX_FRAC + 3, IBERT_MAX_FRAC + 1)),  # returned negative "probabilities"
        ("shift", FixedFormat(SHIFT_MAX_FRAC + 3, SHIFT_MAX_FRAC + 1)),  # returned all zeros
    ],
)
def test_softmax_refuses_formats_that_overflow_int64(method: str, fmt: FixedFormat) -> None:
    with pytest.raises(ValueError, match=rf"argument 'in_fmt'.*{method} softmax.*{re.escape(str(fmt))}"):
        softmax_fixed(_rows(fmt), fmt, method)


@pytest.mark.parametrize(
    "method,fmt,tol",
    [
        ("base2", FixedFormat(BASE2_MAX_WIDTH, 8), 2.0 / 256),
        ("base2", FixedFormat(BASE2_MAX_WIDTH, 30), 2.0 / 256),
        ("base2", FixedFormat(BASE2_MAX_WIDTH - 1, 8, False), 2.0 / 256),
        ("ibert", FixedFormat(62, IBERT_MAX_FRAC), 2.0 / 256),
        ("shift", FixedFormat(62, SHIFT_MAX_FRAC), 6.0 / 256),  # Shiftmax's own ~2% error
    ],
)
def test_softmax_widest_accepted_formats_stay_accurate(method: str, fmt: FixedFormat, tol: float) -> None:
    q = _rows(fmt)
    p = softmax_fixed(q, fmt, method, 8)
    assert np.abs(p / 256 - _ref_softmax(q, fmt)).max() <= tol


# ------------------------------------------------------------------ 2. GELU outputs wider than int64
def test_gelu_edgemoe_refuses_outputs_past_62_bits() -> None:
    fmt = FixedFormat(40, 8)
    # returned [-4294967296] for a true value of ~2.36e21 (a 72-bit output)
    with pytest.raises(ValueError, match=r"argument 'out_frac'.*72 bits.*out_frac <= 30"):
        fx.gelu_edgemoe_fixed(np.array([2**39 - 1]), fmt, out_frac=40)
    with pytest.raises(ValueError, match=r"argument 'out_frac'.*72 bits"):
        fx.gelu_edgemoe_out_format(fmt, 40)
    # the widest accepted output (62 bits) holds the exact ReLU part of the largest input
    y = fx.gelu_edgemoe_fixed(np.array([2**39 - 1]), fmt, out_frac=30)
    assert int(y[0]) == (2**39 - 1) << 22 and fx.gelu_edgemoe_out_format(fmt, 30).width == 62


def test_gelu_edgemoe_refuses_interpolation_products_past_63_bits() -> None:
    # F = 59: (T[i+1] - T[i]) * w reaches 998 * (2^54 - 1) > 2^63 (wrapped before); F = 58 is the widest that fits
    step = int(np.abs(np.diff(fx.EDGEMOE_TABLE)).max())
    widest = max(f for f in range(5, 63) if step * ((1 << (f - 5)) - 1) <= I64_MAX)
    assert widest == 58
    bad = FixedFormat(62, widest + 1)
    with pytest.raises(ValueError, match=r"argument 'in_fmt'.*interpolation product"):
        fx.gelu_edgemoe_fixed(np.array([(1 << 59) - 1, 3 << 57]), bad, 16, 16)
    fmt = FixedFormat(62, widest)
    q = np.concatenate([np.arange(-(8 << widest), 8 << widest, 1 << 52), [fmt.min_int, fmt.max_int, (1 << 53) - 1]])
    y = fx.gelu_edgemoe_fixed(q, fmt, 16, 16)
    assert np.abs(y / 65536 - _ref_gelu(q, fmt)).max() <= 2e-4


# ------------------------------------------------------------------ 3. quantize / check stay in the format
@pytest.mark.parametrize("width", [54, 55, 60, 62])
@pytest.mark.parametrize("signed", [True, False])
def test_quantize_saturates_exactly_at_the_range_ends(width: int, signed: bool) -> None:
    fmt = FixedFormat(width, 0, signed)
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
    q = fmt.quantize([1e300, -1e300, float(hi) * 4, 0.0])
    assert [int(v) for v in q] == [hi, lo, hi, 0]  # was 2^61 (one past max_int) for width 62
    assert np.array_equal(fmt.check(q), q)  # so the format accepts its own quantized ints
    with pytest.raises(ValueError, match="out of range"):
        fmt.quantize([float(hi) * 4], saturate=False)


def test_check_refuses_uint64_beyond_int64_instead_of_wrapping() -> None:
    fmt = FixedFormat(16, 8)
    with pytest.raises(ValueError, match=r"argument 'x' does not fit"):
        fmt.check(np.array([2**64 - 1], dtype=np.uint64))  # was cast to -1 first, then accepted
    assert fmt.check(np.array([5, 32767], dtype=np.uint64)).tolist() == [5, 32767]


# ------------------------------------------------------------------ 4. out_frac validated where it enters
@pytest.mark.parametrize("rounding", ["carry", "nearest"])
@pytest.mark.parametrize("out_frac", [0, 41, 50])
def test_online_softmax_out_frac_range(rounding: str, out_frac: int) -> None:
    q = np.array([[0, 256, -512]])
    # nearest with 0 returned all zeros; 50 blamed round_shift's argument 's'
    with pytest.raises(ValueError, match=r"argument 'out_frac' must be an int in 1\.\.40 \(probabilities"):
        fx.online_softmax_fixed(q, FixedFormat(16, 8), out_frac=out_frac, rounding=rounding)


@pytest.mark.parametrize("method", ["exact", "online", "ibert", "shift", "base2"])
@pytest.mark.parametrize("out_frac", [0, 60, 8.0])
def test_softmax_fixed_out_frac_range(method: str, out_frac: int) -> None:
    with pytest.raises(ValueError, match=r"argument 'out_frac' must be an int in 1\.\.40"):
        softmax_fixed(np.array([[0, 256, -512]]), FixedFormat(16, 8), method, out_frac)


@pytest.mark.parametrize("method", ["exact", "online", "ibert", "shift", "base2"])
@pytest.mark.parametrize("out_frac", [1, 40])
def test_softmax_fixed_out_frac_range_ends_work(method: str, out_frac: int) -> None:
    fmt = FixedFormat(16, 8)
    q = np.array([[0, 256, -512, 100, 100]])
    p = softmax_fixed(q, fmt, method, out_frac) / 2.0**out_frac
    # one output bit: within its 1/2 LSB (1.0 saturates to 1/2); 40 bits: each method's own accuracy (ibert's
    # normalisation keeps 56 - 8 - out_frac bits of the row sum, so at 40 bits it is coarser than at 16)
    tol = 0.5 if out_frac == 1 else {"exact": 1e-9, "online": 1e-4, "ibert": 1e-2, "shift": 3e-2, "base2": 1e-3}[method]
    assert np.abs(p - _ref_softmax(q, fmt)).max() <= tol


def test_deferred_weights_nearest_validates_out_frac() -> None:
    fmt = FixedFormat(16, 8)
    s = np.array([[0, 256]])
    m, inv_d = np.array([256]), np.array([1 << 23])
    with pytest.raises(ValueError, match=r"argument 'out_frac'"):
        fx.deferred_weights_nearest(s, m, inv_d, fmt, out_frac=0)
    with pytest.raises(ValueError, match=r"argument 'out_frac'"):
        fx.deferred_weights_nearest(s, m, inv_d, fmt, out_frac=45)


# ------------------------------------------------------------------ 5. integer helpers: ints only, any shift
@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: fx.round_shift(np.array([5.5]), 1), "v"),
        (lambda: fx.round_shift(np.array([5]), 1.0), "s"),
        (lambda: fx.fx_exp2(np.array([-1.5])), "y"),
        (lambda: fx.fx_exp(np.array([-3.7]), 8), "x"),
        (lambda: fx.fx_recip(1.5), "d"),  # computed 1/1 = 2^40
        (lambda: fx.fx_recip(np.array([2**64 - 1], dtype=np.uint64)), "d"),  # wrapped to -1
    ],
)
def test_integer_helpers_refuse_floats(call, name: str) -> None:
    with pytest.raises(ValueError, match=rf"argument '{name}'"):
        call()


def _py_round(v: int, s: int, mode: str) -> int:
    x = Fraction(v, 1 << s)
    if mode == "floor":
        return math.floor(x)
    if mode == "half-up":
        return math.floor(x + Fraction(1, 2))
    return round(x)  # Fraction rounds half to even


@pytest.mark.parametrize("mode", ["floor", "half-up", "half-even"])
def test_round_shift_is_exact_for_every_shift_and_the_int64_ends(mode: str) -> None:
    vals = [0, 1, -1, 5, -5, 6, -6, 3 << 40, -(3 << 40), 2**62, -(2**62), 2**62 + 1, -(2**62) - 1, I64_MAX, -(2**63)]
    v = np.array(vals, dtype=np.int64)
    for s in [*range(0, 70), 127, 1000]:
        got = fx.round_shift(v, s, mode).tolist()
        assert got == [_py_round(x, s, mode) for x in vals], (mode, s)  # s = 64 gave [-1, 0] for [5, -5]
    assert fx.round_shift(np.array([2**63 - 1], dtype=np.uint64), 1, mode).tolist() == [_py_round(I64_MAX, 1, mode)]
    with pytest.raises(ValueError, match="argument 's' must be an int >= 0"):
        fx.round_shift(v, -1, mode)


def test_integer_helpers_still_take_python_and_numpy_ints() -> None:
    assert int(fx.fx_recip(3)) == ((1 << 40) + 1) // 3
    assert int(fx.fx_recip(np.uint32(4))) == 1 << 38
    assert int(fx.fx_exp2(np.int32(-(1 << 16)))) == 1 << 15  # 2^-1 with 16 fraction bits
    assert int(fx.fx_exp(0, 8)) == 1 << 16
    assert fx.round_shift([7, -7], np.int64(1)).tolist() == [4, -3]


# ------------------------------------------------------------------ 6. a non-FixedFormat is named, not AttributeError
@pytest.mark.parametrize(
    "call",
    [
        lambda: softmax_fixed(np.array([[0, 1]]), "sfix<16,8>", "base2"),
        lambda: softmax_fixed(np.array([[0, 1]]), (16, 8), "online"),
        lambda: gelu_fixed(np.array([0, 1]), (16, 11), "edgemoe"),
        lambda: gelu_fixed(np.array([0, 1]), None, "tanh"),
    ],
)
def test_methods_name_a_bad_format(call) -> None:
    with pytest.raises(ValueError, match=r"argument 'in_fmt' must be a FixedFormat"):
        call()


def test_gelu_fixed_refuses_more_fraction_bits_than_bits_and_is_accurate_up_to_it():
    """gelu_fixed checked width <= 20 but not frac: ibert went wrong from sfix<20,21> and overflowed int64 from frac
    31. At frac == width every method still follows GELU (errors against float64 measured 2.6e-5 to 1.0e-2)."""
    from edgeattn.approx import float_ops as fo

    for bad in (FixedFormat(20, 21), FixedFormat(16, 30), FixedFormat(12, 40)):
        with pytest.raises(ValueError, match="5 <= frac <= width <= 20"):
            gelu_fixed(np.array([1]), bad, "ibert")
    fmt = FixedFormat(20, 20)
    x = np.arange(fmt.min_int, fmt.max_int + 1, 97, dtype=np.int64)
    xf = fmt.dequantize(x)
    ref = 0.5 * xf * np.vectorize(math.erfc)(-xf / math.sqrt(2.0))
    for method in fo.GELU_METHODS:
        err = np.max(np.abs(gelu_fixed(x, fmt, method, out_frac=16) / 2.0**16 - ref))
        assert err < 2e-2, (method, err)
