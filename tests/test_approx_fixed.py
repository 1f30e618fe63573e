"""Fixed-point golden model: hand-computed cases, a scalar Python-int transcription of docs/fixed_point.md
(unbounded ints, so it also catches any int64 overflow in the vectorised numpy model), accuracy targets
against float64, chunking independence and the declared widths over the full input range."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeattn.approx import fixed as fx
from edgeattn.approx.fixed import FixedFormat
from edgeattn.approx.fixed_methods import gelu_fixed, softmax_fixed


# --------------------------------------------------------------- scalar transcription of the document
def _rs(v: int, s: int) -> int:  # round_shift half-up
    return v if s == 0 else (v + (1 << (s - 1))) >> s


def _hu(v: float) -> int:
    return math.floor(v + 0.5)


HI = [_hu(2 ** (a / 256) * 2**24) for a in range(256)]
LO = [_hu(2 ** (b / 65536) * 2**24) for b in range(256)]
DELTA = [_hu((i / 32) * 0.5 * math.erfc((i / 32) / math.sqrt(2)) * 2**16) for i in range(177)]
# near-minimax table (section 6.1): delta(t) - (t^2 - 2) phi(t) / 16384
DELTA_MM = [
    _hu(
        (
            (i / 32) * 0.5 * math.erfc((i / 32) / math.sqrt(2))
            - ((i / 32) ** 2 - 2) * math.exp(-((i / 32) ** 2) / 2) / math.sqrt(2 * math.pi) / 16384
        )
        * 2**16
    )
    for i in range(177)
]


def doc_exp2(y: int, out_frac: int = 16) -> int:
    n = y >> 16
    r = y - (n << 16)
    p = HI[r >> 8] * LO[r & 255]
    sh = 48 - out_frac - n
    return 0 if sh >= 63 else (p + (1 << (sh - 1))) >> sh


def doc_exp(x: int, x_frac: int) -> int:
    return doc_exp2(_rs(x * 24204406, x_frac + 8))


def doc_online_softmax(row: list[int], fmt: FixedFormat, out_frac: int = 8) -> list[int]:
    f = fmt.frac
    m, d = fmt.min_int, 0
    for s in row:
        if s > m:
            d = ((d * doc_exp(m - s, f) + (1 << 15)) >> 16) + 65536
            m = s
        else:
            d = d + doc_exp(s - m, f)
    inv = ((1 << 40) + (d >> 1)) // d
    sh = 40 - out_frac
    c, out = 0, []
    for s in row:
        t = doc_exp(s - m, f) * inv + c
        p = max(min((t + (1 << (sh - 1))) >> sh, (1 << out_frac) - 1), 0)
        c = t - (p << sh)
        out.append(p)
    return out


def doc_gelu(x: int, f: int, out_frac: int | None = None, table: list[int] = DELTA) -> int:  # table_frac 16
    out_frac = f if out_frac is None else out_frac
    ws = f - 5
    a = abs(x)
    i, w = a >> ws, a & ((1 << ws) - 1)
    delta = 0 if i >= 176 else table[i] + _rs((table[i + 1] - table[i]) * w, ws)
    relu = max(x, 0)
    relu_o = relu << (out_frac - f) if out_frac >= f else _rs(relu, f - out_frac)
    delta_o = delta << (out_frac - 16) if out_frac >= 16 else _rs(delta, 16 - out_frac)
    return relu_o - delta_o


# ------------------------------------------------------------------------------------- hand cases
def test_tables_and_hand_values() -> None:
    assert round(math.log2(math.e) * 2**24) == fx.LOG2E_Q
    assert list(fx.EXP2_HI) == HI and list(fx.EXP2_LO) == LO and list(fx.EDGEMOE_TABLE) == DELTA
    assert list(fx.EDGEMOE_MM_TABLE) == DELTA_MM and DELTA_MM[:4] == [3, 1002, 1949, 2846]
    assert list(fx.EXP2_HI[:4]) == [16777216, 16822704, 16868315, 16914049]
    assert int(fx.fx_exp2(0)) == 65536  # 2^0 == 1.0 exactly
    assert int(fx.fx_exp2(-65536)) == 32768  # 2^-1
    assert int(fx.fx_exp2(-16 * 65536)) == 1  # 2^-16 == 1 LSB
    assert int(fx.fx_exp2(-18 * 65536)) == 0  # 2^-18 rounds to 0
    assert int(fx.fx_recip(65536)) == 1 << 24
    assert int(fx.fx_recip(3 * 65536)) == 5592405  # round(2^24 / 3)
    # e^-1 with 8 fraction bits in: x = -256
    assert abs(int(fx.fx_exp(-256, 8)) - 65536 / math.e) <= 0.6
    assert list(fx.round_shift(np.array([5, -5, 6, -6, 7]), 1, "half-even")) == [2, -2, 3, -3, 4]
    assert list(fx.round_shift(np.array([5, -5, 3]), 1, "half-up")) == [3, -2, 2]
    assert list(fx.round_shift(np.array([5, -5]), 1, "floor")) == [2, -3]


def test_tables_as_c() -> None:
    text = fx.tables_as_c()
    assert "static const uint32_t EXP2_HI[256] = {16777216, 16822704," in text
    assert "GELU_DELTA_Q16[177] = {0, 998, 1946, 2843," in text
    assert "GELU_DELTA_MM_Q16[177] = {3, 1002, 1949, 2846," in text


def test_exp_matches_document_and_float64_over_full_range() -> None:
    x = np.arange(-(1 << 16), 1, dtype=np.int64)  # every sfix<17,8> value <= 0: [-256, 0]
    e = fx.fx_exp(x, 8)
    assert np.abs(e / 65536 - np.exp(x / 256.0)).max() <= 0.8 / 65536
    pick = np.concatenate([x[:50], x[-3000:], x[::997]])
    assert [doc_exp(int(v), 8) for v in pick] == list(fx.fx_exp(pick, 8))
    y = np.arange(-(20 << 16), 1, 7, dtype=np.int64)
    assert np.abs(fx.fx_exp2(y) / 65536 - 2.0 ** (y / 65536)).max() <= 0.51 / 65536


# ----------------------------------------------------------------------------------- online softmax
IN16 = FixedFormat(16, 8)


def _ref_softmax(q: np.ndarray, fmt: FixedFormat) -> np.ndarray:
    x = fmt.dequantize(q)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_online_softmax_bit_exact_with_document() -> None:
    rng = np.random.default_rng(3)
    rows = IN16.quantize(rng.standard_normal((6, 40)) * np.array([0.3, 1, 3, 8, 20, 60])[:, None])
    rows[0, 5] = IN16.max_int
    rows[1, :] = IN16.min_int  # all equal at the minimum
    got = fx.online_softmax_fixed(rows, IN16, 8)
    for r, g in zip(rows, got, strict=False):
        assert doc_online_softmax([int(v) for v in r], IN16) == list(g)


def test_online_softmax_targets_16in_8out() -> None:
    """Max abs error <= 1 LSB (2^-8) and rows sum to 1 within 2 LSB, on peaked and flat rows, all scales."""
    rng = np.random.default_rng(0)
    lsb = 2.0**-8
    for n in (2, 16, 197, 700):
        for sc in (0.1, 1.0, 4.0, 16.0, 60.0):
            s = rng.standard_normal((32, n)) * sc
            s[:16, 0] += 3 * sc
            q = IN16.quantize(s)
            p = fx.online_softmax_fixed(q, IN16, 8)
            assert np.abs(p * lsb - _ref_softmax(q, IN16)).max() <= lsb
            assert np.abs(p.sum(-1) - 256).max() <= 2
    ramp = IN16.quantize(np.linspace(-6, 6, 1500))[None]  # new max at every element: 1499 rescales
    p = fx.online_softmax_fixed(ramp, IN16, 8)
    assert np.abs(p * lsb - _ref_softmax(ramp, IN16)).max() <= lsb
    assert abs(int(p.sum()) - 256) <= 2


@settings(max_examples=40, deadline=None)
@given(
    row=st.lists(st.integers(IN16.min_int, IN16.max_int), min_size=1, max_size=48),
    chunk=st.integers(1, 50),
)
def test_online_state_chunking_never_changes_bits(row: list[int], chunk: int) -> None:
    q = np.array([row], dtype=np.int64)
    whole = fx.online_softmax_fixed(q, IN16, 8)
    assert np.array_equal(fx.online_softmax_fixed(q, IN16, 8, chunk=chunk), whole)
    # streaming interface, chunk by chunk, with the carry passed along
    state = fx.OnlineSoftmaxState(IN16, (1,))
    for i in range(0, len(row), chunk):
        state.update(q[:, i : i + chunk])
    m, inv_d = state.finalize()
    assert int(m[0]) == max(row)
    parts, carry = [], None
    for i in range(0, len(row), chunk):
        p, carry = fx.deferred_weights(q[:, i : i + chunk], m, inv_d, IN16, 8, carry=carry)
        parts.append(p)
    assert np.array_equal(np.concatenate(parts, -1), whole)
    assert whole.min() >= 0 and whole.max() <= 255
    assert abs(int(whole.sum()) - 256) <= 2
    # declared widths of the state: d is ufix<32,16> and >= 1.0, inv_d is ufix<25,24>
    assert 1 << 16 <= int(state.d[0]) < 1 << 32 and 0 < int(inv_d[0]) <= 1 << 24


@settings(max_examples=30, deadline=None)
@given(
    row=st.lists(st.integers(-(1 << 14), 1 << 14), min_size=1, max_size=32),
    c=st.integers(-(1 << 14), (1 << 14) - 1),
)
def test_online_fixed_invariant_to_adding_a_constant(row: list[int], c: int) -> None:
    q = np.array([row], dtype=np.int64)
    assert np.array_equal(fx.online_softmax_fixed(q + c, IN16, 8), fx.online_softmax_fixed(q, IN16, 8))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), frac=st.integers(5, 22), int_bits=st.integers(2, 10), out_frac=st.integers(4, 24))
def test_gelu_edgemoe_any_format_matches_document(data, frac: int, int_bits: int, out_frac: int) -> None:
    fmt = FixedFormat(frac + int_bits, frac, True)
    xs = data.draw(st.lists(st.integers(fmt.min_int, fmt.max_int), min_size=1, max_size=20))
    xs += [fmt.min_int, fmt.max_int, 0, -1, 1]
    y = fx.gelu_edgemoe_fixed(np.array(xs, dtype=np.int64), fmt, 16, out_frac)
    assert list(y) == [doc_gelu(v, frac, out_frac) for v in xs]
    ymm = fx.gelu_edgemoe_fixed(np.array(xs, dtype=np.int64), fmt, 16, out_frac, table="mm")
    assert list(ymm) == [doc_gelu(v, frac, out_frac, DELTA_MM) for v in xs]
    assert fx.gelu_edgemoe_out_format(fmt, out_frac).contains(ymm)
    assert fx.gelu_edgemoe_out_format(fmt, out_frac).contains(y)


def test_running_sum_fits_32_bits_at_max_row() -> None:
    # an all-equal row gives the largest d: n * 2^16. Run 1000 elements, then jump the state to the end.
    st_ = fx.OnlineSoftmaxState(IN16, (1,))
    st_.update(np.zeros((1, 1000), dtype=np.int64))
    assert int(st_.d[0]) == 1000 << 16
    st_.count, st_.d = fx.MAX_ROW - 10, np.array([(fx.MAX_ROW - 10) << 16])
    st_.update(np.zeros((1, 10), dtype=np.int64))
    assert int(st_.d[0]) == fx.MAX_ROW << 16 < 1 << fx.D_WIDTH
    with pytest.raises(ValueError, match="overflows"):
        st_.update(np.zeros((1, 1), dtype=np.int64))


# ------------------------------------------------------------------------------------------ GELU
def test_gelu_edgemoe_target_and_document_full_range() -> None:
    """16-bit table: max abs error <= 2e-4 against float64 GELU over every sfix<16,11> input."""
    fmt = FixedFormat(16, 11)
    q = np.arange(fmt.min_int, fmt.max_int + 1, dtype=np.int64)
    xf = fmt.dequantize(q)
    ref = 0.5 * xf * np.vectorize(math.erfc)(-xf / math.sqrt(2))
    y16 = fx.gelu_edgemoe_fixed(q, fmt, 16, out_frac=16)
    assert np.abs(y16 / 65536 - ref).max() <= 2e-4
    assert fx.gelu_edgemoe_out_format(fmt, 16).contains(y16)
    y = fx.gelu_edgemoe_fixed(q, fmt)  # out_frac = 11
    assert fx.gelu_edgemoe_out_format(fmt).contains(y)
    pick = np.concatenate([q[:20], q[::311], q[-20:]])
    assert [doc_gelu(int(v), 11) for v in pick] == list(fx.gelu_edgemoe_fixed(pick, fmt))
    assert [doc_gelu(int(v), 11, 16, DELTA_MM) for v in pick] == list(
        fx.gelu_edgemoe_fixed(pick, fmt, 16, 16, table="mm")
    )
    ymm = fx.gelu_edgemoe_fixed(q, fmt, 16, out_frac=16, table="mm")
    assert np.abs(ymm / 65536 - ref).max() <= 6e-5  # near-minimax table: about half of the 1.07e-4 above


def test_gelu_edgemoe_edge_moe_format_extremes() -> None:
    fmt = FixedFormat(32, 22)  # Edge-MoE's ap_fixed<32,10>
    q = np.concatenate(
        [
            np.arange(fmt.min_int, fmt.min_int + 50),
            np.arange(fmt.max_int - 50, fmt.max_int + 1),
            np.random.default_rng(0).integers(-(8 << 22), 8 << 22, 20000),
        ]
    )
    y = fx.gelu_edgemoe_fixed(q, fmt)
    xf = fmt.dequantize(q)
    ref = 0.5 * xf * np.vectorize(math.erfc)(-xf / math.sqrt(2))
    assert fx.gelu_edgemoe_out_format(fmt).contains(y)
    assert np.abs(fmt.dequantize(y) - ref).max() <= 2e-4


# --------------------------------------------------------------- other methods: full-range sanity
@pytest.mark.parametrize("method", ["exact", "tanh", "edgemoe", "edgemoe_mm", "ibert", "sigmoid", "respoly"])
def test_gelu_fixed_full_range_close_to_float64(method: str) -> None:
    fmt = FixedFormat(16, 11)
    q = np.arange(fmt.min_int, fmt.max_int + 1, 3, dtype=np.int64)
    xf = fmt.dequantize(q)
    ref = 0.5 * xf * np.vectorize(math.erfc)(-xf / math.sqrt(2))
    tol = {
        "exact": 1e-5,
        "tanh": 6e-4,
        "edgemoe": 2e-4,
        "edgemoe_mm": 7e-5,
        "ibert": 2e-2,
        "sigmoid": 2.1e-2,
        "respoly": 6.5e-3,
    }
    y = gelu_fixed(q, fmt, method, 16) / 65536
    assert np.abs(y - ref).max() <= tol[method]  # an int64 overflow anywhere would blow this up


_GELU_TOL_16_11 = {"exact": 1e-5, "tanh": 6e-4, "edgemoe": 2e-4, "edgemoe_mm": 7e-5, "ibert": 2e-2, "sigmoid": 2.1e-2,
                   "respoly": 6.5e-3}  # fmt: skip


@pytest.mark.parametrize(
    "width,frac", [(w, w - 5) for w in range(10, 21)] + [(20, 5), (19, 5), (20, 7)]  # report formats, wide ranges
)
@pytest.mark.parametrize("method", ["exact", "tanh", "edgemoe", "edgemoe_mm", "ibert", "sigmoid", "respoly"])
def test_gelu_fixed_every_accepted_width_stays_in_range(method: str, width: int, frac: int) -> None:
    # gelu_fixed accepts widths up to 20: I-BERT's product once wrapped int64 at 19 and 20 bits (error ~16), and
    # tanh's exp input left fx_exp's range with 14+ integer bits. The bound: the 16.11 tolerance, plus an eighth of
    # an input step for narrow formats, plus 1e-4 relative (I-BERT's integer constants) for wide ranges.
    fmt = FixedFormat(width, frac)
    q = np.unique(np.concatenate([np.arange(fmt.min_int, fmt.max_int + 1, 1 + (1 << width) // 60_000), [fmt.max_int]]))
    xf = fmt.dequantize(q)
    ref = 0.5 * xf * np.vectorize(math.erfc)(-xf / math.sqrt(2))
    err = np.abs(gelu_fixed(q, fmt, method, 16) / 65536 - ref)
    assert np.all(err <= 1.1 * _GELU_TOL_16_11[method] + 2.0**-frac / 8 + 1e-4 * np.abs(xf))


@pytest.mark.parametrize("method", ["exact", "online", "ibert", "shift", "base2"])
def test_softmax_fixed_extreme_rows(method: str) -> None:
    rows = np.array(
        [
            [IN16.min_int, IN16.max_int, 0, 0],
            [IN16.min_int] * 4,
            [IN16.max_int] * 4,
            [IN16.max_int, IN16.min_int, IN16.min_int, 5],
        ],
        dtype=np.int64,
    )
    p = softmax_fixed(rows, IN16, method, 8)
    assert p.min() >= 0 and p.max() <= 255
    ref = _ref_softmax(rows, IN16)
    assert np.abs(p / 256 - ref).max() <= 2.0 / 256


_SOFTMAX_TOL_16OUT = {"exact": 1e-5, "online": 5e-5, "ibert": 2e-3, "shift": 2e-2, "base2": 5e-4}


# `approx report --bits` accepts 10..32; below 12 bits (2-3 fraction bits) I-BERT's own constants are coarse
@pytest.mark.parametrize("width", [12, 16, 24, 28, 32])
@pytest.mark.parametrize("method", ["exact", "online", "ibert", "shift", "base2"])
def test_softmax_fixed_every_accepted_width_keeps_its_accuracy(method: str, width: int) -> None:
    # at 32 bits a 512-long I-BERT row once summed past 2^56, the division factor became 0 and the row all zeros
    fmt = FixedFormat(width, width - 8)
    rng = np.random.default_rng(width)
    x = rng.uniform(-8, 8, size=(16, 512))
    x[0] = 0.0  # a uniform row: every probability 1/512
    q = np.clip(np.round(x * 2.0**fmt.frac), fmt.min_int, fmt.max_int).astype(np.int64)
    p = softmax_fixed(q, fmt, method, 16) / 65536
    assert np.abs(p - _ref_softmax(q, fmt)).max() <= _SOFTMAX_TOL_16OUT[method]
    assert np.abs(p[0] - 1 / 512).max() <= _SOFTMAX_TOL_16OUT[method]


# ------------------------------------------------------------------------------------- bad input
def test_bad_input_messages() -> None:
    with pytest.raises(ValueError, match="width"):
        FixedFormat(0, 0)
    with pytest.raises(ValueError, match="signed format"):
        FixedFormat(1, 0, True)
    with pytest.raises(ValueError, match="'scores' does not fit"):
        fx.online_softmax_fixed(np.array([[1 << 20]]), IN16)
    with pytest.raises(ValueError, match="integer array"):
        fx.online_softmax_fixed(np.array([[0.5]]), IN16)
    with pytest.raises(ValueError, match="width must be <= 37"):
        fx.OnlineSoftmaxState(FixedFormat(40, 8))
    with pytest.raises(ValueError, match="frac >= 5"):
        fx.gelu_edgemoe_fixed(np.array([0]), FixedFormat(16, 4))
    with pytest.raises(ValueError, match="rounding mode"):
        IN16.quantize(1.0, rounding="stochastic")
    with pytest.raises(ValueError, match="<= 0"):
        fx.fx_exp(np.array([1]), 8)
    with pytest.raises(ValueError, match="argument 'method'"):
        softmax_fixed(np.array([[0]]), IN16, "fast")
