"""Bit-accurate fixed-point golden model of the hardware softmax/GELU (numpy, int64 arithmetic only).

This is the specification the HLS C++ follows bit for bit; every step, constant, intermediate width and
rounding is written out in ``docs/fixed_point.md``. Only integer operations are used on the data path:
add, subtract, multiply, arithmetic shift (floor), comparison, table look-up and one integer division per
softmax row (the reciprocal). Tables are built once from float64 math and rounded half-up; the C++ side may
either recompute them the same way or include the integers printed by :func:`tables_as_c`.

Public API (all arrays are ``numpy.int64``):

- :class:`FixedFormat` ``(width, frac, signed)``: ``quantize`` / ``dequantize`` / ``check``;
- :func:`round_shift` (the one rounding primitive);
- :func:`fx_exp2`, :func:`fx_exp`, :func:`fx_recip`;
- :class:`OnlineSoftmaxState` (``update(chunk)``, ``finalize() -> (m, inv_d)``), :func:`deferred_weights`,
  :func:`online_softmax_fixed`;
- :func:`gelu_edgemoe_fixed`, :func:`edgemoe_table`, :data:`EDGEMOE_TABLE`, :data:`EDGEMOE_MM_TABLE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The Edge-MoE table's geometry and values are defined once, by the float model; the golden model rounds them.
from edgeattn.approx.float_ops import (
    EDGEMOE_ENTRIES,
    EDGEMOE_STEP_LOG2,
    EDGEMOE_TABLE_KINDS,
    edgemoe_table_f64,
)

ROUNDING_MODES: tuple[str, ...] = ("floor", "half-up", "half-even")

# ----------------------------------------------------------------------------------- spec constants
LOG2E_FRAC = 24
LOG2E_Q = 24204406  # round(log2(e) * 2^24), 25-bit unsigned
Y_FRAC = 16  # fraction bits of the base-2 exponent y = x*log2(e)
EXP_TBL_FRAC = 24  # fraction bits of the two 2^f tables (entries are 25-bit unsigned, in [2^24, 2^25))
E_FRAC = 16  # fraction bits of exp outputs (UQ1.16: 1.0 == 65536)
D_FRAC = 16  # fraction bits of the running sum d (same scale as the exp terms)
D_WIDTH = 32  # running sum register width (unsigned) -> rows up to 65535 elements
R_FRAC = 24  # fraction bits of inv_d = 1/d (d >= 1, so inv_d <= 2^24, 25-bit unsigned)
MAX_ROW = (1 << (D_WIDTH - D_FRAC)) - 1
PROB_FRAC_MAX = E_FRAC + R_FRAC  # 40: a probability e * inv_d carries 16 + 24 fraction bits
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def _half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


EXP2_HI = np.array([_half_up(2.0 ** (a / 256.0) * 2**EXP_TBL_FRAC) for a in range(256)], dtype=np.int64)
EXP2_LO = np.array([_half_up(2.0 ** (b / 65536.0) * 2**EXP_TBL_FRAC) for b in range(256)], dtype=np.int64)


def edgemoe_table(table_frac: int = 16, kind: str = "exact") -> np.ndarray:
    """The 177-entry GELU residual table at ``t = i/32``, rounded half-up to ``table_frac`` fraction bits.

    ``kind="exact"``: ``delta(t) = t*Phi(-t)`` (Edge-MoE). ``kind="mm"``: this project's near-minimax table
    ``delta(t) - (t^2 - 2)*phi(t)/16384`` (each knot moved by half the chord error; same datapath, half the
    interpolation error; see docs/fixed_point.md section 6.1). The float64 values are the float model's own
    (:func:`edgeattn.approx.float_ops.edgemoe_table_f64`), so the two cannot drift apart.
    """
    if not 1 <= table_frac <= 40:
        raise ValueError(f"argument 'table_frac' must be in 1..40, got {table_frac}")
    if kind not in EDGEMOE_TABLE_KINDS:
        raise ValueError(
            f"argument 'table': unknown kind {kind!r}; allowed: {', '.join(EDGEMOE_TABLE_KINDS)}"
        )
    values = edgemoe_table_f64(kind).tolist()  # python floats: the rounding below is plain float64 math
    return np.array([_half_up(v * 2.0**table_frac) for v in values], dtype=np.int64)


EDGEMOE_TABLE = edgemoe_table(16)
EDGEMOE_MM_TABLE = edgemoe_table(16, "mm")


# ----------------------------------------------------------------------------------- argument checks
def _int_arg(v: int, name: str, lo: int, hi: int | None = None, why: str = "") -> int:
    """``v`` as a Python int if it is an integer in ``lo..hi`` (``hi=None``: no upper bound), else a ValueError
    naming ``name``, the range and ``why``. Floats are refused: a shift or width of 8.0 is a caller's bug."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
        allowed = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"argument {name!r} must be an int {allowed}{why}, got {v!r}")
    return int(v)


def _require_int_dtype(arr: np.ndarray, name: str) -> None:
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"argument {name!r} must be an integer array (the fixed-point ints), got {arr.dtype}")


def _int64(v: np.ndarray | int, name: str) -> np.ndarray:
    """``v`` (numpy integers or Python ints) as int64, else a ValueError naming ``name``.

    Floats are refused rather than truncated (``fx_recip(1.5)`` once computed 1/1), and uint64 values above
    int64 rather than wrapped by the cast (uint64 is the only integer dtype that can hold them).
    """
    arr = np.asarray(v)
    _require_int_dtype(arr, name)
    if arr.dtype.kind == "u" and arr.size and arr.max() > INT64_MAX:
        raise ValueError(f"argument {name!r} does not fit int64: ints must be <= {INT64_MAX}")
    return arr.astype(np.int64)


def _prob_args(out_frac: int, out_width: int | None = None) -> tuple[int, int]:
    """Checked ``(out_frac, out_width)`` of softmax probabilities (``out_width`` defaults to ``out_frac``)."""
    why = f" (probabilities are formed with {E_FRAC} + {R_FRAC} fraction bits; 0 leaves a 0-bit output)"
    out_frac = _int_arg(out_frac, "out_frac", 1, PROB_FRAC_MAX, why)
    out_width = out_frac if out_width is None else _int_arg(out_width, "out_width", 1, 62)
    return out_frac, out_width


# ----------------------------------------------------------------------------------- formats, rounding
def round_shift(v: np.ndarray | int, s: int, mode: str = "half-up") -> np.ndarray:
    """``v / 2^s`` rounded to an integer: arithmetic right shift with ``mode`` rounding (``s >= 0``).

    ``floor``: ``v >> s``; ``half-up``: ``(v + 2^(s-1)) >> s`` (ties toward +inf); ``half-even``: ties to
    even.
    ``s == 0`` returns ``v`` unchanged. ``>>`` on negative values is the arithmetic (floor) shift.
    ``v`` must be integers (floats are refused, not truncated). The result is exact for every int64 ``v`` and
    every ``s``: it is formed from ``v >> s`` and the bits below it, never from ``v + 2^(s-1)`` (which wraps near
    the ends of int64), and shifts are clamped at 63 (numpy's shift by 64 or more is undefined; from ``s = 63``
    on ``|v / 2^s| <= 1`` and only the sign and bit 62 matter).
    """
    if mode not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding mode {mode!r}; allowed: {', '.join(ROUNDING_MODES)}")
    s = _int_arg(s, "s", 0)
    v = _int64(v, "v")
    if s == 0:
        return v.copy()
    q = v >> min(s, 63)  # floor(v / 2^s)
    if mode == "floor":
        return q
    half = (v >> min(s - 1, 63)) & 1  # the bit worth half an output LSB (for s > 64: the sign, |v / 2^s| < 1/2)
    if mode == "half-up":
        return q + half
    below = v & np.int64((1 << min(s - 1, 63)) - 1)  # the bits under it: all zero on an exact tie
    return q + (half & ((below != 0) | (q & 1)))  # half-even: a tie rounds up only from an odd q


@dataclass(frozen=True)
class FixedFormat:
    """A two's-complement (``signed``) or unsigned fixed-point format: ``value = int * 2^-frac``.

    ``width`` counts all bits including the sign bit; ``frac`` may exceed ``width`` (pure fractions) but not
    be negative.
    """

    width: int
    frac: int
    signed: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.width, int) or not 1 <= self.width <= 62:
            raise ValueError(f"FixedFormat: argument 'width' must be an int in 1..62, got {self.width!r}")
        if not isinstance(self.frac, int) or not 0 <= self.frac <= 62:
            raise ValueError(f"FixedFormat: argument 'frac' must be an int in 0..62, got {self.frac!r}")
        if self.signed and self.width < 2:
            raise ValueError("FixedFormat: a signed format needs 'width' >= 2")

    @property
    def min_int(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max_int(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @property
    def lsb(self) -> float:
        return 2.0**-self.frac

    @property
    def min_value(self) -> float:
        return self.min_int * self.lsb

    @property
    def max_value(self) -> float:
        return self.max_int * self.lsb

    def quantize(
        self, x: np.ndarray | float, rounding: str = "half-even", saturate: bool = True
    ) -> np.ndarray:
        """Float -> int64 in this format (``rounding`` as :data:`ROUNDING_MODES`; saturate or raise)."""
        if rounding not in ROUNDING_MODES:
            raise ValueError(f"unknown rounding mode {rounding!r}; allowed: {', '.join(ROUNDING_MODES)}")
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("FixedFormat.quantize: input has NaN or inf")
        with np.errstate(over="ignore"):  # a huge finite value scales to +-inf: it saturates (or is out of range)
            x = x * 2.0**self.frac
        if rounding == "floor":
            q = np.floor(x)
        elif rounding == "half-up":
            q = np.floor(x + 0.5)
        else:
            q = np.round(x)  # numpy rounds half to even
        # compare with max_int + 1 = 2^(width-1) (2^width unsigned) and min_int, which float64 holds exactly:
        # max_int itself rounds up to 2^(width-1) in float64 from width 55 on, so clipping at it overflowed by one
        over, under = q >= self.max_int + 1, q < self.min_int
        if not saturate and (np.any(over) or np.any(under)):
            raise ValueError(f"FixedFormat.quantize: value out of range [{self.min_value}, {self.max_value}]")
        ints = np.where(over | under, 0.0, q).astype(np.int64)
        return np.where(over, self.max_int, np.where(under, self.min_int, ints))

    def dequantize(self, q: np.ndarray | int) -> np.ndarray:
        """int -> float64 value."""
        return np.asarray(q, dtype=np.float64) * self.lsb

    def contains(self, q: np.ndarray | int) -> bool:
        """True when every integer of ``q`` fits this format."""
        q = np.asarray(q)
        return bool(q.size == 0 or (q.min() >= self.min_int and q.max() <= self.max_int))

    def check(self, q: np.ndarray | int, name: str = "x") -> np.ndarray:
        """``q`` as int64 after checking it is integer and fits; ``ValueError`` naming ``name`` if not."""
        arr = np.asarray(q)
        _require_int_dtype(arr, name)
        if not self.contains(arr):  # tested before the cast to int64, which would wrap a large uint64
            raise ValueError(
                f"argument {name!r} does not fit {self}: ints must be in [{self.min_int}, {self.max_int}]"
            )
        return arr.astype(np.int64)

    def __str__(self) -> str:
        return f"{'s' if self.signed else 'u'}fix<{self.width},{self.frac}>"


def _fmt(fmt: FixedFormat, name: str) -> FixedFormat:
    if not isinstance(fmt, FixedFormat):
        raise ValueError(f"argument {name!r} must be a FixedFormat, got {type(fmt).__name__}")
    return fmt


# ----------------------------------------------------------------------------------- exp, reciprocal
def fx_exp2(y: np.ndarray | int, out_frac: int = E_FRAC) -> np.ndarray:
    """``2^y`` for ``y <= 0`` given with :data:`Y_FRAC` (16) fraction bits; result has ``out_frac`` bits.

    ``n = y >> 16`` (floor, ``n <= 0``), ``r = y - (n << 16)`` in [0, 65535], ``a = r >> 8``, ``b = r & 255``;
    ``P = EXP2_HI[a] * EXP2_LO[b]`` (2^f with 48 fraction bits, P < 2^50); shift ``sh = 48 - out_frac - n``;
    result ``0`` if ``sh >= 63`` else ``(P + 2^(sh-1)) >> sh``.
    """
    _int_arg(out_frac, "out_frac", 0, 2 * EXP_TBL_FRAC - 1, " (fx_exp2)")
    y = _int64(y, "y")
    if np.any(y > 0):
        raise ValueError("fx_exp2: argument 'y' must be <= 0 (exp arguments are x - max)")
    n = y >> Y_FRAC
    r = y - (n << Y_FRAC)
    p = EXP2_HI[r >> 8] * EXP2_LO[r & 255]
    sh = 2 * EXP_TBL_FRAC - out_frac - n
    big = sh >= 63
    shc = np.where(big, 1, sh)
    out = (p + (np.int64(1) << (shc - 1))) >> shc
    return np.where(big, 0, out).astype(np.int64)


def fx_exp(x: np.ndarray | int, x_frac: int, out_frac: int = E_FRAC) -> np.ndarray:
    """``e^x`` for ``x <= 0`` with ``x_frac`` fraction bits (``|x| < 2^38``); result has ``out_frac`` bits.

    ``y = round_half_up((x * LOG2E_Q) / 2^(x_frac + 24 - 16))`` then :func:`fx_exp2`.
    """
    _int_arg(x_frac, "x_frac", 0, 40, " (fx_exp)")
    x = _int64(x, "x")
    if np.any(x > 0):
        raise ValueError("fx_exp: argument 'x' must be <= 0 (exp arguments are x - max)")
    if np.any(x <= -(1 << 38)):
        raise ValueError("fx_exp: |x| must be < 2^38 (the product with LOG2E_Q must fit 63 bits)")
    s = x_frac + LOG2E_FRAC - Y_FRAC
    y = round_shift(x * LOG2E_Q, s, "half-up")
    return fx_exp2(y, out_frac)


def fx_recip(d: np.ndarray | int, d_frac: int = D_FRAC, r_frac: int = R_FRAC) -> np.ndarray:
    """``1/d`` for ``d > 0``: ``(2^(d_frac + r_frac) + (d >> 1)) // d`` (integer division, round half-up).

    One exact integer division per softmax row (an open, vendor-independent restoring divider in HLS).
    """
    _int_arg(d_frac, "d_frac", 0, 62, " (fx_recip)")
    _int_arg(r_frac, "r_frac", 0, 62 - d_frac, " (fx_recip: d_frac + r_frac must be <= 62)")
    d = _int64(d, "d")
    if np.any(d <= 0):
        raise ValueError("fx_recip: argument 'd' must be > 0")
    return ((np.int64(1) << (d_frac + r_frac)) + (d >> 1)) // d


# ----------------------------------------------------------------------------------- online softmax
class OnlineSoftmaxState:
    """Integer running max ``m`` and running sum ``d`` of one row (or of a batch of rows).

    Elements are consumed strictly in the order given, one at a time, by the Edge-MoE rule::

        if s > m:  d = round_half_up(d * fx_exp(m - s) / 2^16) + 2^16;  m = s
        else:      d = d + fx_exp(s - m)

    starting from ``m = in_fmt.min_int``, ``d = 0``. Because the rule is per element, how a row is split into
    chunks for :meth:`update` never changes the result (the order of elements does).
    """

    def __init__(self, in_fmt: FixedFormat, batch_shape: tuple[int, ...] = ()) -> None:
        self.in_fmt = _fmt(in_fmt, "in_fmt")
        if in_fmt.width > 37:
            raise ValueError(f"argument 'in_fmt' width must be <= 37 (fx_exp range), got {in_fmt.width}")
        self.m = np.full(batch_shape, in_fmt.min_int, dtype=np.int64)
        self.d = np.zeros(batch_shape, dtype=np.int64)
        self.count = 0

    def update(self, chunk: np.ndarray) -> None:
        """Consume the next elements ``chunk`` (batch_shape + (n,)) of the rows, in index order."""
        chunk = self.in_fmt.check(chunk, "chunk")
        if chunk.shape[:-1] != self.m.shape:
            raise ValueError(f"chunk shape {chunk.shape} does not match batch shape {self.m.shape} + (n,)")
        if self.count + chunk.shape[-1] > MAX_ROW:
            raise ValueError(f"row longer than {MAX_ROW} elements overflows the {D_WIDTH}-bit running sum")
        f = self.in_fmt.frac
        one = np.int64(1) << E_FRAC
        for j in range(chunk.shape[-1]):
            s = chunk[..., j]
            new_max = s > self.m
            # exp argument is always <= 0: (m - s) on a new max, (s - m) otherwise
            e = fx_exp(np.where(new_max, self.m - s, s - self.m), f, E_FRAC)
            rescaled = round_shift(self.d * e, E_FRAC, "half-up") + one
            self.d = np.where(new_max, rescaled, self.d + e)
            self.m = np.where(new_max, s, self.m)
        self.count += chunk.shape[-1]

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(m, inv_d)``: the row max (input ints) and ``1/d`` with :data:`R_FRAC` fraction bits."""
        if self.count == 0:
            raise ValueError("OnlineSoftmaxState.finalize: no elements were given")
        return self.m.copy(), fx_recip(self.d, D_FRAC, R_FRAC)


def deferred_weights(
    s: np.ndarray,
    m: np.ndarray,
    inv_d: np.ndarray,
    in_fmt: FixedFormat,
    out_frac: int = 8,
    out_width: int | None = None,
    carry: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``exp(s - m) * inv_d`` as unsigned ints with ``out_frac`` fraction bits.

    ``v = fx_exp(s - m) * inv_d`` has ``16 + 24`` fraction bits; it is rounded to ``out_frac`` bits with the
    row's rounding residual ``carry`` (error diffusion along the row, in the order of the last axis):
    ``p = min((v + carry + 2^(sh-1)) >> sh, out_max)``, ``carry = v + carry - (p << sh)``,
    ``sh = 40 - out_frac``.
    Pass ``carry=None`` to start a row (zero residual); pass the returned carry to the next chunk of the same
    row. With error diffusion each output is within 1 LSB and a row sums to 1 within 1-2 LSB; see the doc.
    ``out_width`` defaults to ``out_frac`` (so 1.0 saturates to ``1 - 2^-out_frac``).
    """
    in_fmt = _fmt(in_fmt, "in_fmt")
    out_frac, out_width = _prob_args(out_frac, out_width)
    s = in_fmt.check(s, "s")
    m = np.asarray(m, dtype=np.int64)
    inv_d = np.asarray(inv_d, dtype=np.int64)
    out_max = np.int64((1 << out_width) - 1)
    sh = E_FRAC + R_FRAC - out_frac
    e = fx_exp(s - m[..., None], in_fmt.frac, E_FRAC)
    v = e * inv_d[..., None]
    c = np.zeros(s.shape[:-1], dtype=np.int64) if carry is None else np.asarray(carry, dtype=np.int64).copy()
    p = np.empty_like(v)
    for j in range(v.shape[-1]):
        t = v[..., j] + c
        pj = np.minimum(round_shift(t, sh, "half-up"), out_max)
        pj = np.maximum(pj, 0)
        c = t - (pj << sh)
        p[..., j] = pj
    return p, c


def deferred_weights_nearest(
    s: np.ndarray,
    m: np.ndarray,
    inv_d: np.ndarray,
    in_fmt: FixedFormat,
    out_frac: int = 8,
    out_width: int | None = None,
) -> np.ndarray:
    """Like :func:`deferred_weights` but each probability rounded on its own (no residual; order-free)."""
    in_fmt = _fmt(in_fmt, "in_fmt")
    out_frac, out_width = _prob_args(out_frac, out_width)
    s = in_fmt.check(s, "s")
    sh = E_FRAC + R_FRAC - out_frac
    e = fx_exp(s - np.asarray(m, dtype=np.int64)[..., None], in_fmt.frac, E_FRAC)
    v = e * np.asarray(inv_d, dtype=np.int64)[..., None]
    return np.minimum(round_shift(v, sh, "half-up"), (1 << out_width) - 1)


def online_softmax_fixed(
    scores: np.ndarray,
    in_fmt: FixedFormat,
    out_frac: int = 8,
    chunk: int | None = None,
    rounding: str = "carry",
) -> np.ndarray:
    """Fixed-point online softmax of integer ``scores`` (last axis = row) -> unsigned ints, ``out_frac`` bits.

    Pass 1 streams each row through :class:`OnlineSoftmaxState` (``chunk`` elements at a time; the result
    does not depend on ``chunk``); pass 2 computes :func:`deferred_weights` (``rounding="carry"``, error
    diffusion) or :func:`deferred_weights_nearest` (``rounding="nearest"``).
    """
    if rounding not in ("carry", "nearest"):
        raise ValueError(f"argument 'rounding' must be 'carry' or 'nearest', got {rounding!r}")
    _prob_args(out_frac)  # before pass 1, not after it
    scores = _fmt(in_fmt, "in_fmt").check(scores, "scores")
    if scores.ndim == 0 or scores.shape[-1] == 0:
        raise ValueError("argument 'scores' must have a non-empty last axis")
    n = scores.shape[-1]
    chunk = n if chunk is None else chunk
    if chunk < 1:
        raise ValueError(f"argument 'chunk' must be >= 1, got {chunk}")
    st = OnlineSoftmaxState(in_fmt, scores.shape[:-1])
    for start in range(0, n, chunk):
        st.update(scores[..., start : start + chunk])
    m, inv_d = st.finalize()
    if rounding == "nearest":
        return deferred_weights_nearest(scores, m, inv_d, in_fmt, out_frac)
    return deferred_weights(scores, m, inv_d, in_fmt, out_frac)[0]


# ----------------------------------------------------------------------------------- GELU (Edge-MoE)
GELU_OUT_FRAC_MAX = 40
_DEFAULT_F = " (it defaults to in_fmt.frac)"


def _gelu_out_width(in_fmt: FixedFormat, out_frac: int) -> int:
    """Width of the GELU output: the input's integer bits, ``out_frac`` and the carry bit of a narrowing rounding.

    A ValueError when it passes 62 bits (:class:`FixedFormat`'s limit): the output ints would not fit their
    declared format, and beyond 64 bits not int64 either (``ReLU(x) << (out_frac - F)`` wrapped silently).
    """
    width = in_fmt.width - in_fmt.frac + out_frac + (1 if out_frac < in_fmt.frac else 0)
    if width > 62:
        raise ValueError(
            f"argument 'out_frac': the GELU output of {in_fmt} with out_frac={out_frac} needs {width} bits, more "
            f"than 62 (FixedFormat, int64); use out_frac <= {out_frac - (width - 62)}"
        )
    return width


def gelu_edgemoe_out_format(in_fmt: FixedFormat, out_frac: int | None = None) -> FixedFormat:
    """The declared output format of :func:`gelu_edgemoe_fixed`: signed, the input's integer bits, plus one
    integer bit when ``out_frac < in_fmt.frac`` (rounding the largest input half-up can carry into it).
    A ValueError names ``out_frac`` when that needs more than 62 bits."""
    in_fmt = _fmt(in_fmt, "in_fmt")
    out_frac = _int_arg(in_fmt.frac if out_frac is None else out_frac, "out_frac", 0, GELU_OUT_FRAC_MAX, _DEFAULT_F)
    return FixedFormat(_gelu_out_width(in_fmt, out_frac), out_frac, True)


def gelu_edgemoe_fixed(
    x: np.ndarray,
    in_fmt: FixedFormat,
    table_frac: int = 16,
    out_frac: int | None = None,
    table: str = "exact",
) -> np.ndarray:
    """Edge-MoE GELU ``ReLU(x) - delta(|x|)`` on integer ``x`` (``in_fmt``, signed, ``frac >= 5``).

    ``a = |x|``; ``i = a >> (F-5)``; ``w = a & (2^(F-5) - 1)``; if ``i >= 176``: ``delta = 0`` else
    ``delta = T[i] + round_half_up((T[i+1] - T[i]) * w / 2^(F-5))`` (``table_frac`` bits); ReLU(x) and delta
    are brought to ``out_frac`` bits (left shift, or round half-up when narrowing) and subtracted.
    ``table``: ``"exact"`` (Edge-MoE's ``delta(i/32)``) or ``"mm"`` (near-minimax, :func:`edgemoe_table`).

    Limits (ValueError, so nothing wraps int64): the output format :func:`gelu_edgemoe_out_format` must fit 62
    bits (``W - F + out_frac (+1) <= 62``), and the interpolation product ``(T[i+1] - T[i]) * w`` 63 bits:
    ``max|T[i+1] - T[i]| * (2^(F-5) - 1) < 2^63`` (``F <= 58`` with the 16-bit tables, ``F <= 34`` with 40-bit ones).
    """
    in_fmt = _fmt(in_fmt, "in_fmt")
    if not in_fmt.signed or in_fmt.frac < EDGEMOE_STEP_LOG2:
        raise ValueError(f"argument 'in_fmt' must be signed with frac >= 5 (1/32 table step), got {in_fmt}")
    out_frac = _int_arg(in_fmt.frac if out_frac is None else out_frac, "out_frac", 0, GELU_OUT_FRAC_MAX, _DEFAULT_F)
    _gelu_out_width(in_fmt, out_frac)
    if table_frac == 16 and table in ("exact", "mm"):
        tab = EDGEMOE_TABLE if table == "exact" else EDGEMOE_MM_TABLE
    else:
        tab = edgemoe_table(table_frac, table)
    f = in_fmt.frac
    ws = f - EDGEMOE_STEP_LOG2
    step = int(np.abs(np.diff(tab)).max())
    if step * ((1 << ws) - 1) > INT64_MAX:
        raise ValueError(
            f"argument 'in_fmt': {in_fmt} has too many fraction bits for table_frac={table_frac}: the interpolation "
            f"product (T[i+1] - T[i]) * w needs {step.bit_length() + ws} bits, more than 63"
        )
    x = in_fmt.check(x, "x")
    a = np.abs(x)
    i = a >> ws
    w = a & ((np.int64(1) << ws) - 1)
    ic = np.minimum(i, EDGEMOE_ENTRIES - 2)
    lo = tab[ic]
    delta = lo + round_shift((tab[ic + 1] - lo) * w, ws, "half-up")
    delta = np.where(i >= EDGEMOE_ENTRIES - 1, 0, delta)
    relu = np.maximum(x, 0)
    relu_o = relu << (out_frac - f) if out_frac >= f else round_shift(relu, f - out_frac, "half-up")
    if out_frac >= table_frac:
        delta_o = delta << (out_frac - table_frac)
    else:
        delta_o = round_shift(delta, table_frac - out_frac, "half-up")
    return (relu_o - delta_o).astype(np.int64)


def tables_as_c(table_frac: int = 16) -> str:
    """The integer tables as C++ array initialisers (for the HLS headers)."""

    def arr(name: str, ctype: str, values: np.ndarray) -> str:
        body = ", ".join(str(int(v)) for v in values)
        return f"static const {ctype} {name}[{len(values)}] = {{{body}}};"

    return "\n".join(
        [
            arr("EXP2_HI", "uint32_t", EXP2_HI),
            arr("EXP2_LO", "uint32_t", EXP2_LO),
            arr(f"GELU_DELTA_Q{table_frac}", "uint32_t", edgemoe_table(table_frac)),
            arr(f"GELU_DELTA_MM_Q{table_frac}", "uint32_t", edgemoe_table(table_frac, "mm")),
        ]
    )
