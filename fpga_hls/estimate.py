"""Analytical cycles / DSP / BRAM estimate of the accelerator for a model shape and a profile's parallelism.

Not a synthesis result: a first-order model of the loops in the templates, with every formula written out
in the returned ``arithmetic`` lines so a reader can check it. Assumptions (docs/hls.md):

- every pipelined loop runs at II=1; a loop costs ``trips + depth`` cycles;
- the MAC array is ``mac_rows x mac_cols``, one unit shared by every linear layer; one linear layer
  ``IN -> OUT`` over ``n`` rows costs, per output tile, ``mac_cols`` (bias load) + ``D_DDR`` (the first word of
  the DDR burst) + ``ceil(IN/mac_rows) * mac_cols`` (the burst: the tile's weight column) + ``n`` (drain) + per
  input tile ``(mac_cols + n + D_mac)`` (tile load from the column, rows);
- the tops' copies run one element per cycle: a layer's input and output (``2 n D``), the ViT's image gather
  (``(n - 1) patch_dim``) and token assembly (``n D``);
- attention: two passes (Q.K^T with the online softmax, then A.V) of ``STEPS = (ceil(N/P)-1)(N+P) + P-1 + N``
  steps per head, plus the exp/reciprocal pipeline depths;
- a DSP48E2 multiplies 27 x 18 signed bits: a signed ``a x b``-bit product takes its tiles, the lower pieces of a
  wide operand unsigned (26 and 17 bits), in the cheaper orientation (:func:`dsp_per_mult`);
- LayerNorm and residual adds process ``mac_rows`` / ``mac_cols`` elements per cycle; a LayerNorm row adds its two
  divisions by ``D`` (multiplies by a constant, ``D_DIV_DIM`` each; shifts for a power-of-two ``D``), its isqrt
  (``ceil(var width / 2)`` iterations) and its divider (``2^(LN_F + LN_R) / s``: one quotient bit per cycle,
  ``LN_F + LN_R + 2``, as ``D_RECIP``); its multipliers are as wide as :func:`layernorm_widths` derives;
- ``attn_parallel`` above the token count is clamped to it (:func:`attn_slots`): more slots could never be busy;
- a BRAM18K holds 18 Kbit as 16K x 1, 8K x 2, 4K x 4, 2K x 9, 1K x 18 or 512 x 36; a buffer partitioned into
  ``k`` banks takes ``k`` times the blocks of one bank in its cheapest shape. The activation buffers all have
  one shape (``EA_MAX_ROWS x EA_BUF_W``, :func:`buffer_width`), in :func:`buffer_banks` cyclic banks;
- the weights stream from DDR, ``mac_rows`` weights per cycle during a burst (``ddr`` in the result); the
  biases, LayerNorm parameters and (whole ViT) tokens are on-chip ROMs (``parameters``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from numbers import Integral, Real
from typing import Any

from edgeattn.fpga_hls.golden import LN_INV_FRAC, HLSFormats, ln_eps_raw

from edgeattn.errors import EdgeAttnError

__all__ = [
    "LayerNormWidths",
    "LayerShape",
    "attn_slots",
    "buffer_banks",
    "buffer_width",
    "dsp_per_mult",
    "estimate",
    "layernorm_widths",
    "weight_column_words",
]

D_MAC = 6  # MAC array pipeline depth (multiply, adder tree of 16, accumulate)
D_EXP = 8  # exp pipeline: x*log2e multiply, table reads, 25x25 product, shift
D_RECIP = 42  # restoring divider for 1/d (one quotient bit per cycle, 40 + 2)
D_DIV_DIM = 6  # LayerNorm's floor(n / D): one tiled wide multiply by a constant and a shift (as deep as D_MAC)
D_GELU = 5  # |x|, table read, interpolation multiply, subtract
D_DDR = 64  # cycles from an m_axi read request to its first word: Vitis HLS schedules bursts with a default 64


@dataclass(frozen=True)
class LayerShape:
    """The shape of one encoder layer (plus, for a whole ViT, the embedding and head)."""

    tokens: int
    dim: int
    heads: int
    hidden: int
    experts: int = 0  # 0: dense MLP
    top_k: int = 0
    depth: int = 1
    moe_layers: int = 0
    patch_dim: int = 0  # > 0: whole ViT (patch embedding + head)
    classes: int = 0
    ln_eps: float = 1e-6  # every LayerNorm's eps: it bounds the LayerNorm's variance and 1/std (layernorm_widths)

    def __post_init__(self) -> None:
        """EdgeAttnError naming the first field that no accelerator can have: negative cycles or a division by zero
        would follow, not an error."""
        from edgeattn.models._checks import check_positive_int

        try:
            check_positive_int("LayerShape", tokens=self.tokens, dim=self.dim, heads=self.heads, hidden=self.hidden)
            check_positive_int("LayerShape", depth=self.depth)
        except ValueError as exc:
            raise EdgeAttnError(str(exc)) from None
        for name in ("experts", "top_k", "moe_layers", "patch_dim", "classes"):
            value = getattr(self, name)
            if not isinstance(value, Integral) or isinstance(value, bool) or value < 0:
                raise EdgeAttnError(f"LayerShape: {name} must be an integer >= 0, got {value!r}")
        if self.dim % self.heads:
            raise EdgeAttnError(f"LayerShape: dim {self.dim} must be a multiple of heads {self.heads}")
        if self.top_k > self.experts or (self.experts > 0) != (self.top_k > 0):
            raise EdgeAttnError(
                f"LayerShape: top_k must be in 1..experts with experts > 0 (0 for both: dense), got top_k "
                f"{self.top_k}, experts {self.experts}"
            )
        if self.moe_layers > self.depth or (self.moe_layers > 0) != (self.experts > 0):
            raise EdgeAttnError(
                f"LayerShape: moe_layers must be in 1..depth with experts > 0 (0 without), got moe_layers "
                f"{self.moe_layers}, depth {self.depth}, experts {self.experts}"
            )
        eps = self.ln_eps
        if isinstance(eps, bool) or not isinstance(eps, Real) or not (math.isfinite(eps) and eps >= 0):
            raise EdgeAttnError(f"LayerShape: ln_eps must be a finite number >= 0, got {eps!r}")


def buffer_width(shape: LayerShape, hls) -> int:
    """Row width of the design's activation buffers: they all have one shape (so that one MAC unit serves every
    linear layer), as wide as the widest row a layer reads or writes. The head is the exception: it runs in
    passes of whole output tiles, so its class count does not widen every buffer (hence at least ``mac_cols``)."""
    return max(3 * shape.dim, shape.hidden, shape.experts, shape.patch_dim, hls.mac_cols)


def buffer_banks(shape: LayerShape, hls) -> int:
    """Cyclic banks of a buffer row: enough for every unrolled access to touch distinct banks (the MAC unit's
    ``mac_rows`` inputs and ``mac_cols`` outputs, a head's ``head_dim``-wide Q, K or V row), at most one per
    element."""
    return min(math.lcm(hls.mac_rows, hls.mac_cols, shape.dim // shape.heads), buffer_width(shape, hls))


def weight_column_words(shape: LayerShape, hls) -> int:
    """Words of the MAC unit's weight-column buffer: one output tile's weights for the widest input a linear layer
    has, ``ceil(in / mac_rows) * mac_cols``. Inputs are ``dim`` (QKV, projection, fc1, MoE gate and experts' fc1,
    head), ``hidden`` (fc2) and ``patch_dim`` (patch embedding); the buffer row (``3 * dim`` for QKV's output) can be
    wider."""
    widest_in = max(shape.dim, shape.hidden, shape.patch_dim)
    return math.ceil(widest_in / hls.mac_rows) * hls.mac_cols


def _dsp_tiles(bits: int, port: int) -> int:
    """Pieces of a signed ``bits``-wide operand on a ``port``-bit signed DSP port: the top piece carries the sign
    (``port`` bits), every lower piece is unsigned, so it uses only ``port - 1`` of them."""
    return 1 + max(0, math.ceil((bits - port) / (port - 1)))


def dsp_per_mult(a_bits: int, b_bits: int) -> int:
    """DSP48E2 slices for a signed ``a x b``-bit multiplier: its 27 x 18 signed tiles, the cheaper orientation
    (36 x 36 takes 2 x 3 = 6: the lower pieces are unsigned 26 and 17 bits)."""
    return min(
        _dsp_tiles(a_bits, 27) * _dsp_tiles(b_bits, 18),
        _dsp_tiles(b_bits, 27) * _dsp_tiles(a_bits, 18),
    )


def attn_slots(shape: LayerShape, hls) -> int:
    """Query rows in flight that the design builds: the profile's (or ``--parallel``'s) ``attn_parallel``, at most
    the token count (a slot beyond it could never hold a query)."""
    return max(1, min(hls.attn_parallel, shape.tokens))


# ----------------------------------------------------------------------------------- LayerNorm datapath widths
@dataclass(frozen=True)
class DimDivider:
    """``floor(n / D)`` for ``0 <= n < 2^bits`` as ``(n * mult) >> shift``, with ``shift = bits + ceil(log2 D)``
    and ``mult = ceil(2^shift / D)``: exact because ``mult * D - 2^shift < D <= 2^ceil(log2 D)`` (Granlund and
    Montgomery 1994, theorem 4.2), so the LayerNorm divides by its width without a divider. ``mult`` has at most
    ``bits + 2`` bits; for a power-of-two ``D`` it is ``2^bits`` and the product a shift."""

    bits: int
    mult: int
    shift: int

    def __call__(self, n: int) -> int:
        return (n * self.mult) >> self.shift


def dim_divider(dim: int, bits: int) -> DimDivider:
    """The :class:`DimDivider` for dividends of ``bits`` bits (``(dim - 1).bit_length()`` is ``ceil(log2 dim)``).

    ``mult`` is below ``2^(bits + 1)``, so ``bits`` is at most 63 for it to fit the templates' 64-bit constant.
    """
    if bits > 63:
        raise ValueError(
            f"the LayerNorm's floor(n / {dim}) would take {bits}-bit dividends (at most 63, so its constant fits "
            "64 bits): use fewer activation integer bits or a narrower activation width"
        )
    shift = bits + (dim - 1).bit_length()
    return DimDivider(bits, -(-(1 << shift) // dim), shift)


@dataclass(frozen=True)
class LayerNormWidths:
    """Worst-case bit widths of the LayerNorm datapath (``ea_layernorm.h``, docs/hls.md "LayerNorm widths").

    Signed widths (two's complement) except ``var``, ``s`` and ``inv``, which are unsigned. ``ranges`` holds the
    integer bounds ``(lo, hi)`` each width is derived from: every value the golden model's LayerNorm computes, for
    any activations and any gamma/beta of the activation type, lies inside them.
    """

    sum: int
    mean: int
    d: int
    e: int
    e2: int  # e * e
    sq: int  # sum of e * e
    var: int
    sqrt_iters: int  # bit-serial isqrt iterations: ceil(var / 2)
    s: int  # isqrt(var)
    inv: int  # 2^(LN_F + LN_R) / s
    dinv: int  # d * inv
    yn: int  # (d * inv) >> LN_R
    yg: int  # yn * gamma
    z: int  # ((yn * gamma) >> ACT_F) + beta, before the wrap to the activation width
    mean_bias_q: int  # floor(sum / D) = floor((sum + D * mean_bias_q) / D) - mean_bias_q, a dividend >= 0
    mean_div: DimDivider  # floor((sum + D * mean_bias_q) / D): sum + bias < 2^(sum + 1)
    var_div: DimDivider  # floor(sum(e * e) / D): 0 <= sum(e * e) < 2^(sq - 1)
    ranges: dict[str, tuple[int, int]]

    def defines(self) -> list[tuple[str, int | str, str]]:
        """``(macro, value, comment)`` for parameters.h: the ``EA_LN_*_W`` widths, the isqrt iteration count and
        the two divisions by ``D`` (``EA_LN_MEAN_*``, ``EA_LN_VAR_*``: :class:`DimDivider`)."""
        names = [
            ("SUM", "sum(x)"), ("MEAN", "floor(sum / D)"), ("D", "d = x - mean"), ("E", "e = d >> (ACT_F - LN_F)"),
            ("E2", "e * e"), ("SQ", "sum(e * e)"), ("VAR", "var (unsigned)"), ("S", "s = isqrt(var) (unsigned)"),
            ("INV", "inv = 2^(LN_F + LN_R) / s (unsigned)"), ("DINV", "d * inv"), ("YN", "yn = (d * inv) >> LN_R"),
            ("YG", "yn * gamma"), ("Z", "(yn * gamma >> ACT_F) + beta"),
        ]  # fmt: skip
        out = [(f"EA_LN_{key}_W", getattr(self, key.lower()), f"LayerNorm {what}") for key, what in names]
        out.append(("EA_LN_SQRT_ITERS", self.sqrt_iters, "isqrt iterations: ceil(EA_LN_VAR_W / 2)"))
        log2_d = self.mean_div.shift - self.mean_div.bits  # ceil(log2 D), for the comments
        out += [
            ("EA_LN_MEAN_BIAS_Q", f"{self.mean_bias_q}LL", "mean = floor((sum + D * BIAS_Q) / D) - BIAS_Q"),
            ("EA_LN_MEAN_DIV_N", self.mean_div.bits, "bits of sum + D * BIAS_Q (>= 0)"),
            ("EA_LN_MEAN_DIV_M", f"{self.mean_div.mult}ULL", "ceil(2^S / D): floor(n / D) = (n * M) >> S"),
            ("EA_LN_MEAN_DIV_S", self.mean_div.shift, f"N + ceil(log2 D) = N + {log2_d}"),
            ("EA_LN_VAR_DIV_N", self.var_div.bits, "bits of sum(e * e) (>= 0)"),
            ("EA_LN_VAR_DIV_M", f"{self.var_div.mult}ULL", "ceil(2^S / D)"),
            ("EA_LN_VAR_DIV_S", self.var_div.shift, f"N + {log2_d}"),
        ]
        return out


def _sbits(lo: int, hi: int) -> int:
    """Smallest two's-complement width holding every integer in ``[lo, hi]``."""
    w = 1
    while lo < -(1 << (w - 1)) or hi > (1 << (w - 1)) - 1:
        w += 1
    return w


def _ubits(hi: int) -> int:
    """Smallest unsigned width holding ``0 .. hi``."""
    return max(1, int(hi).bit_length())


def _shift(v: int, s: int) -> int:
    """``v >> s`` (floor), a left shift for negative ``s`` (golden.py's ``_shift`` on one integer)."""
    return v >> s if s >= 0 else v << (-s)


def _sqrt_hi(v: Fraction) -> Fraction:
    """A rational upper bound of ``sqrt(v)`` (``v >= 0``), within ``2^-32`` of it."""
    scaled = math.ceil(v * (1 << 64))
    return Fraction(math.isqrt(scaled) + 1, 1 << 32)


def _sum_sq_bound(dim: int, x_lo: int, x_hi: int, sh: int) -> int:
    """Upper bound of ``sum(e^2)`` over a row of ``dim`` activations in ``[x_lo, x_hi]``.

    ``d = x - floor(mean)``: ``sum(d^2) = sum((x - mu)^2) + D (mu - mean)^2 <= D (x_hi - x_lo)^2 / 4 + (D-1)^2 / D``
    (the spread of values in an interval is at most half its width; ``mu - mean < 1``). ``e = floor(d / 2^sh)``
    gives ``|e| <= |d| / 2^sh + (1 - 2^-sh)``, so by the triangle inequality on the vectors
    ``sqrt(sum(e^2)) <= sqrt(sum(d^2)) / 2^sh + (1 - 2^-sh) sqrt(D)``.
    """
    sum_d2 = Fraction(dim * (x_hi - x_lo) ** 2, 4) + Fraction((dim - 1) ** 2, dim)
    if sh < 0:  # e = d << -sh exactly
        return math.floor(sum_d2 * (1 << (-2 * sh)))
    slack = 1 - Fraction(1, 1 << sh)
    return math.floor((_sqrt_hi(sum_d2) / (1 << sh) + slack * _sqrt_hi(Fraction(dim))) ** 2)


def _dinv_bound(dim: int, frac: int, ln_f: int, eps_raw: int, s_hi: int, d_abs: int) -> int:
    """Upper bound of ``|d * inv|`` over every row (d and inv together, not each at its own extreme).

    A row whose ``s = isqrt(var)`` has ``var <= s^2 + 2s``, so ``sum(e^2) <= D (s^2 + 2s + 1 - eps_raw) - 1``
    and ``|e| <= isqrt`` of that; ``|d| <= 2^sh |e| + 2^sh - 1`` (floor) and ``inv = floor(2^(LN_F + LN_R) / s)``.
    That is evaluated for each ``s`` from the smallest, ``isqrt(eps_raw)``, until the continuous form
    ``2^(ACT_F + LN_R) (sqrt(D) (s + 1) + 1) / s`` (which falls with ``s``) is no larger than the largest value so
    far (after 2^16 steps: needs no more bits than it): it bounds every larger ``s``. (A left shift, ``sh < 0``,
    uses the continuous form alone.)
    """
    sh = frac - ln_f
    one = 1 << (ln_f + LN_INV_FRAC)
    sqrt_d = _sqrt_hi(Fraction(dim))
    scale = Fraction(one << sh) if sh >= 0 else Fraction(one, 1 << (-sh))

    def continuous(s: int) -> int:
        return math.floor(scale * (sqrt_d * (s + 1) + 1) / s)

    s_lo = math.isqrt(eps_raw)
    if sh < 0:
        return continuous(s_lo)
    best = 0
    s = s_lo
    while s <= s_hi and s - s_lo < (1 << 20):
        bound = continuous(s)
        if bound <= best or (s - s_lo >= (1 << 16) and _sbits(-bound, bound) <= _sbits(-best, best)):
            return max(best, bound)  # bounds every s from here on (in no more bits than best)
        q = dim * (s * s + 2 * s + 1 - eps_raw) - 1
        if q >= 0:
            best = max(best, min(d_abs, (math.isqrt(q) << sh) + (1 << sh) - 1) * (one // s))
        s += 1
    return max(best, continuous(s))


@lru_cache(maxsize=64)
def layernorm_widths(formats, dim: int, eps: float = 1e-6) -> LayerNormWidths:
    """Exact worst-case widths of the LayerNorm's intermediates for ``formats`` (an ``HLSFormats``) at ``dim``.

    The inputs, gamma and beta may be any value of the activation type ``ap_fixed<act_width, act_int>``; ``eps``
    (with ``LN_F`` fraction bits twice: ``EA_LN_EPS_RAW``) fixes the smallest variance. Each intermediate's range
    follows from the previous ones (docs/hls.md, "LayerNorm widths"); ``sum(e^2)`` and ``d * inv`` use the joint
    bounds of :func:`_sum_sq_bound` and :func:`_dinv_bound`, the others are attained by some row.
    """
    a, frac, ln_f, r = formats.act_width, formats.act_frac, formats.ln_frac(dim), LN_INV_FRAC
    sh = frac - ln_f
    eps_raw = ln_eps_raw(eps, ln_f)
    x_lo, x_hi = -(1 << (a - 1)), (1 << (a - 1)) - 1
    rg: dict[str, tuple[int, int]] = {"sum": (dim * x_lo, dim * x_hi), "mean": (x_lo, x_hi)}
    # d is largest for one x at the top and every other at the bottom (the floor of the mean only lowers it)
    d_hi = x_hi - (x_hi + (dim - 1) * x_lo) // dim
    d_lo = x_lo - (x_lo + (dim - 1) * x_hi) // dim
    rg["d"] = (d_lo, d_hi)
    rg["e"] = (_shift(d_lo, sh), _shift(d_hi, sh))
    e2_hi = max(v * v for v in rg["e"])
    rg["e2"] = (0, e2_hi)
    rg["sq"] = (0, min(dim * e2_hi, _sum_sq_bound(dim, x_lo, x_hi, sh)))
    rg["var"] = (eps_raw, rg["sq"][1] // dim + eps_raw)
    rg["s"] = (math.isqrt(rg["var"][0]), math.isqrt(rg["var"][1]))
    one = 1 << (ln_f + r)
    rg["inv"] = (one // rg["s"][1], one // rg["s"][0])
    d_abs = max(-d_lo, d_hi)
    dinv = min(d_abs * rg["inv"][1], _dinv_bound(dim, frac, ln_f, eps_raw, rg["s"][1], d_abs))
    rg["dinv"] = (max(-dinv, d_lo * rg["inv"][1]), min(dinv, d_hi * rg["inv"][1]))
    rg["yn"] = (rg["dinv"][0] >> r, rg["dinv"][1] >> r)
    corners = [y * g for y in rg["yn"] for g in (x_lo, x_hi)]
    rg["yg"] = (min(corners), max(corners))
    rg["z"] = ((rg["yg"][0] >> frac) + x_lo, (rg["yg"][1] >> frac) + x_hi)
    var_w = _ubits(rg["var"][1])
    sum_w, sq_w = _sbits(*rg["sum"]), _sbits(*rg["sq"])
    mean_bias_q = -(-(1 << (sum_w - 1)) // dim)  # D * bias_q >= 2^(sum_w - 1) >= -sum
    return LayerNormWidths(
        sum=_sbits(*rg["sum"]),
        mean=_sbits(*rg["mean"]),
        d=_sbits(*rg["d"]),
        e=_sbits(*rg["e"]),
        e2=_sbits(*rg["e2"]),
        sq=_sbits(*rg["sq"]),
        var=var_w,
        sqrt_iters=math.ceil(var_w / 2),
        s=_ubits(rg["s"][1]),
        inv=_ubits(rg["inv"][1]),
        dinv=_sbits(*rg["dinv"]),
        yn=_sbits(*rg["yn"]),
        yg=_sbits(*rg["yg"]),
        z=_sbits(*rg["z"]),
        mean_bias_q=mean_bias_q,
        mean_div=dim_divider(dim, sum_w + 1),  # sum + bias < 2^(sum_w - 1) + 2^(sum_w - 1) + D <= 2^(sum_w + 1)
        var_div=dim_divider(dim, sq_w - 1),  # sq is a signed sq_w-bit value >= 0
        ranges=rg,
    )


def layernorm_dsp(w: LayerNormWidths, act_width: int) -> dict[str, int]:
    """DSP48E2 slices of one LayerNorm lane's three multipliers at the derived widths (``inv`` is unsigned: one
    more bit as a signed operand)."""
    return {
        "e*e": dsp_per_mult(w.e, w.e),
        "d*inv": dsp_per_mult(w.d, w.inv + 1),
        "yn*gamma": dsp_per_mult(w.yn, act_width),
    }


def _pow2(dim: int) -> bool:
    return dim & (dim - 1) == 0


def layernorm_dim_divider_dsp(w: LayerNormWidths, dim: int) -> int:
    """DSP48E2 slices of the row's two multiplies by ``ceil(2^S / D)`` (``n * M``, both unsigned: one more bit
    each as signed operands); none for a power-of-two ``D``, where the product is a shift."""
    if _pow2(dim):
        return 0
    return sum(dsp_per_mult(div.bits + 1, div.bits + 3) for div in (w.mean_div, w.var_div))


def layernorm_row_latency(w: LayerNormWidths, ln_f: int, dim: int) -> int:
    """Cycles a row spends outside its three lane loops: the two divisions by ``D`` (``D_DIV_DIM`` each, none
    for a power-of-two ``D``), the isqrt, then the divider ``2^(LN_F + LN_R) / s`` (one quotient bit per cycle
    + 2, like ``D_RECIP``)."""
    return (0 if _pow2(dim) else 2 * D_DIV_DIM) + w.sqrt_iters + ln_f + LN_INV_FRAC + 2


BRAM18K_SHAPES = ((1, 16384), (2, 8192), (4, 4096), (9, 2048), (18, 1024), (36, 512))  # (width, depth)


def _bram(width: int, depth: int, banks: int = 1) -> int:
    """BRAM18K blocks of a ``width``-bit, ``depth``-deep buffer split into ``banks`` cyclic banks."""
    per_bank_depth = math.ceil(depth / banks)
    per_bank = min(math.ceil(width / w) * math.ceil(per_bank_depth / d) for w, d in BRAM18K_SHAPES)
    return banks * per_bank


def _linear_cycles(n: int, fin: int, fout: int, r: int, c: int) -> int:
    tiles = math.ceil(fin / r)
    return math.ceil(fout / c) * (c + D_DDR + tiles * c + n + tiles * (c + n + D_MAC))


def _weight_words(fin: int, fout: int, r: int, c: int) -> int:
    """DDR words of one ``fin -> fout`` weight matrix: whole ``c x r`` tiles, one word per tile row."""
    return math.ceil(fout / c) * math.ceil(fin / r) * c


def _hls_section(hls: Any) -> Any:
    """The ``hls`` section :func:`estimate` reads: ``hls`` itself, or a DeviceProfile's ``hls``."""
    from edgeattn.device_profile import DeviceProfile, HLSSpec

    if isinstance(hls, DeviceProfile):
        hls.require_target("hls")  # ProfileError naming the profile when it has no hls section
        return hls.hls
    if not isinstance(hls, HLSSpec):
        raise EdgeAttnError(
            f"hls must be a profile's hls section (profile.hls) or a DeviceProfile, got {type(hls).__name__}"
        )
    return hls


def estimate(shape: LayerShape, hls: Any, formats: HLSFormats) -> dict:
    """Cycles, DSPs, BRAM and latency of ``shape`` on the profile's ``hls`` section with ``formats`` widths.

    ``hls`` is a profile's ``hls`` section (``profile.hls``); a :class:`~edgeattn.device_profile.DeviceProfile` is
    taken too, for its ``hls`` section (the one thing it could mean), and refused when it has none.

    Returns a JSON-able dict: ``cycles`` (per part and total), ``dsp``, ``bram18k``, ``latency_us`` at
    ``hls.clock_mhz``, ``dsp_floor_us`` (every DSP busy with a MAC every cycle), ``efficiency`` (floor /
    latency), ``budget`` (the profile's DSP and BRAM18K), ``fits`` (within them) and ``arithmetic`` (the
    formulas with numbers).
    """
    if not isinstance(shape, LayerShape):
        raise EdgeAttnError(f"shape must be a LayerShape, got {type(shape).__name__}")
    if not isinstance(formats, HLSFormats):
        raise EdgeAttnError(f"formats must be an HLSFormats, got {type(formats).__name__}")
    hls = _hls_section(hls)
    n, d, h, f = shape.tokens, shape.dim, shape.heads, shape.hidden
    hd = d // h
    r, c, p = hls.mac_rows, hls.mac_cols, attn_slots(shape, hls)
    lines: list[str] = []
    cyc: dict[str, int] = {}
    if p != hls.attn_parallel:
        lines.append(f"attention slots P = min(attn_parallel {hls.attn_parallel}, tokens {n}) = {p}")

    qkv = _linear_cycles(n, d, 3 * d, r, c)
    proj = _linear_cycles(n, d, d, r, c)
    lines.append(
        f"linear(n,IN,OUT) = ceil(OUT/{c}) * ({c} bias + {D_DDR} DDR latency + ceil(IN/{r})*{c} weight column "
        f"+ n drain + ceil(IN/{r}) * ({c} + n + {D_MAC}))"
    )
    lines.append(f"qkv  = linear({n},{d},{3 * d}) = {qkv}")
    lines.append(f"proj = linear({n},{d},{d}) = {proj}")
    rounds = math.ceil(n / p)
    steps = (rounds - 1) * (n + p) + (p - 1) + n
    attn = h * (2 * (steps + D_EXP) + D_RECIP)
    lines.append(f"attention steps/pass = (ceil({n}/{p})-1)*({n}+{p}) + {p}-1 + {n} = {steps}")
    lines.append(
        f"attention = heads * (2*(steps + D_exp {D_EXP}) + D_recip {D_RECIP}) = "
        f"{h}*(2*({steps}+{D_EXP})+{D_RECIP}) = {attn}"
    )
    lnw = layernorm_widths(formats, d, shape.ln_eps)
    ln_f = formats.ln_frac(d)
    d_ln = layernorm_row_latency(lnw, ln_f, d)
    ln = 2 * n * (3 * math.ceil(d / r) + d_ln)
    mean_var = f"sum/{d} and sq/{d} " + ("shifts 0" if _pow2(d) else f"multiplies 2*{D_DIV_DIM}")
    lines.append(
        f"layernorm row = 3 passes * ceil(D/{r} lanes) + {mean_var} + isqrt {lnw.sqrt_iters} (var {lnw.var} bits) "
        f"+ divider {ln_f + LN_INV_FRAC + 2} (2^{ln_f + LN_INV_FRAC} / s); layernorm x2 = 2 * n * "
        f"(3 * {math.ceil(d / r)} + {d_ln}) = {ln}"
    )
    resid = 2 * n * math.ceil(d / c)
    lines.append(f"residual adds = 2 * n * ceil(D/{c} lanes) = {resid}")
    dense_mlp = _linear_cycles(n, d, f, r, c) + D_GELU + _linear_cycles(n, f, d, r, c)
    lines.append(f"dense mlp = linear({n},{d},{f}) + D_gelu {D_GELU} + linear({n},{f},{d}) = {dense_mlp}")
    moe_mlp = 0
    if shape.experts:
        e, k = shape.experts, shape.top_k
        per_expert = math.ceil(n * k / e)  # balanced routing: n*k token slots over e experts
        gate = _linear_cycles(n, d, e, r, c)
        route = n * k * e
        experts = e * (
            per_expert * d
            + _linear_cycles(per_expert, d, f, r, c)
            + D_GELU
            + _linear_cycles(per_expert, f, d, r, c)
        )
        moe_mlp = gate + route + experts
        lines.append(
            f"moe mlp = gate linear({n},{d},{e}) {gate} + routing n*k*E {route} + E*(gather + expert linears "
            f"over "
            f"ceil(n*k/E)={per_expert} rows) {experts} = {moe_mlp}"
        )
    dense_layers = shape.depth - shape.moe_layers
    per_layer_common = qkv + proj + attn + ln + resid
    total = shape.depth * per_layer_common + dense_layers * dense_mlp + shape.moe_layers * moe_mlp
    cyc.update(
        qkv=qkv, proj=proj, attention=attn, layernorm=ln, residual=resid, mlp_dense=dense_mlp, mlp_moe=moe_mlp
    )
    lines.append(
        f"total = depth {shape.depth} * (qkv+proj+attn+ln+resid) + {dense_layers} dense mlp + "
        f"{shape.moe_layers} moe mlp"
    )
    if shape.patch_dim:
        gather = (n - 1) * shape.patch_dim
        embed = gather + _linear_cycles(n - 1, shape.patch_dim, d, r, c) + n * d
        head = (3 * math.ceil(d / r) + d_ln) + _linear_cycles(1, d, shape.classes, r, c)
        cyc.update(patch_embed=embed, head=head)
        total += embed + head
        lines.append(
            f"+ image gather {gather} + patch embed linear({n - 1},{shape.patch_dim},{d}) + tokens {n}*{d} = "
            f"{embed}, + norm/head = {head}"
        )
    else:
        io = 2 * n * d
        cyc.update(io=io)
        total += io
        lines.append(f"+ layer input and output copies 2*{n}*{d} = {io}")
    cyc["total"] = total
    lines.append(f"total cycles = {total}")

    # MACs actually needed (linear layers + attention), for the DSP-limited floor
    macs_layer = n * d * 3 * d + n * d * d + 2 * h * n * n * hd
    macs_dense = 2 * n * d * f
    macs_moe = (n * d * shape.experts + shape.top_k * n * 2 * d * f) if shape.experts else 0
    macs = shape.depth * macs_layer + dense_layers * macs_dense + shape.moe_layers * macs_moe
    if shape.patch_dim:
        macs += (n - 1) * shape.patch_dim * d + d * shape.classes

    aw, ww = formats.act_width, formats.weight_width
    qk_bits = formats.act_int + 16
    dsp_mac = dsp_per_mult(aw, ww)
    ln_dsp = layernorm_dsp(lnw, aw)
    dsp = {
        "mac_array": r * c * dsp_mac,
        "attention_qk": p * hd * dsp_per_mult(qk_bits, qk_bits),
        "attention_av": p * hd * dsp_per_mult(formats.prob_frac, aw),
        "softmax_exp": 2 * p * (dsp_per_mult(25, 25) + dsp_per_mult(17, 25) + dsp_per_mult(17, 25)),
        "gelu": c * dsp_per_mult(18, 18),
        # per lane: e*e, d*inv, yn*gamma at the derived widths; per row: the two multiplies of the divisions by D
        "layernorm": r * sum(ln_dsp.values()) + layernorm_dim_divider_dsp(lnw, d),
    }
    dsp["total"] = sum(dsp.values())
    lines.append(
        f"DSP: MAC array {r}x{c} x {dsp_mac} ({aw}x{ww}-bit) = {dsp['mac_array']}; q.k {p}x{hd} x "
        f"{dsp_per_mult(qk_bits, qk_bits)} ({qk_bits}x{qk_bits}) = {dsp['attention_qk']}; A.V {p}x{hd} x "
        f"{dsp_per_mult(formats.prob_frac, aw)} = {dsp['attention_av']}; exp/prob {dsp['softmax_exp']}; "
        f"GELU {dsp['gelu']}; LayerNorm {r} lanes x (e*e {lnw.e}x{lnw.e} {ln_dsp['e*e']} + d*inv "
        f"{lnw.d}x{lnw.inv + 1} {ln_dsp['d*inv']} + yn*gamma {lnw.yn}x{aw} {ln_dsp['yn*gamma']}) + /{d} "
        f"{layernorm_dim_divider_dsp(lnw, d)} = {dsp['layernorm']}; "
        f"total {dsp['total']} of {hls.dsp_budget}"
    )
    width, banks = buffer_width(shape, hls), buffer_banks(shape, hls)
    buffers = 3 + (1 if shape.experts else 0)  # x and the scratch buffers a, b (+ c: the MoE's gathered tokens)
    params = shape.depth * 4 * d  # 4 LayerNorm ROMs (gamma, beta of both norms), each in mac_rows banks
    biases = shape.depth * 4 * d + (shape.depth - shape.moe_layers) * (f + d)
    biases += shape.moe_layers * (shape.experts + shape.experts * (f + d))
    if shape.patch_dim:
        biases += d + shape.classes
    tokens = (d + n * d + 2 * d) if shape.patch_dim else 0  # class token, positions, final norm
    bram = {
        "activations": buffers * _bram(aw, n * width, banks),
        "mac_accumulator": _bram(64, n, 1) * c,
        "weight_column": _bram(r * formats.weight_width, weight_column_words(shape, hls)),
        "scores": _bram(formats.score_width, n * n, p),
        "softmax_stats": _bram(64, n),
        "parameters": 4 * _bram(aw, params // 4, r) + _bram(aw, biases) + (_bram(aw, tokens) if tokens else 0),
    }
    bram["total"] = sum(bram.values())
    lines.append(
        f"BRAM18K: {buffers} activation buffers [{n}][{width}] x {aw}b in {banks} banks = {bram['activations']}; "
        f"acc {c} banks x 64b x {n} = {bram['mac_accumulator']}; weight column {weight_column_words(shape, hls)} x "
        f"{r * formats.weight_width}b = {bram['weight_column']}; scores {n}x{n}x{formats.score_width}b in {p} "
        f"banks = {bram['scores']}; stats {bram['softmax_stats']}; parameters (LayerNorm 4 x {params // 4} in {r} "
        f"banks, biases {biases}, tokens {tokens}) = {bram['parameters']}; total {bram['total']} of "
        f"{hls.bram_budget}"
    )
    clock = float(hls.clock_mhz)
    latency_us = total / clock
    floor_cycles = macs * dsp_mac / hls.dsp_budget
    floor_us = floor_cycles / clock
    lines.append(
        f"latency = {total} cycles / {clock:g} MHz = {latency_us:.1f} us; "
        f"DSP floor = MACs {macs} x {dsp_mac} "
        f"DSP/MAC / {hls.dsp_budget} DSPs = {floor_cycles:.0f} cycles = {floor_us:.1f} us; "
        f"efficiency = floor / latency = {floor_us / latency_us:.3f}"
    )
    ww = _weight_words
    words = shape.depth * (ww(d, 3 * d, r, c) + ww(d, d, r, c)) + dense_layers * (ww(d, f, r, c) + ww(f, d, r, c))
    if shape.experts:
        e = shape.experts
        words += shape.moe_layers * (ww(d, e, r, c) + e * (ww(d, f, r, c) + ww(f, d, r, c)))
    if shape.patch_dim:
        words += ww(shape.patch_dim, d, r, c) + ww(d, shape.classes, r, c)
    word_bits = r * formats.weight_width
    weight_bytes = words * word_bits // 8
    ddr = {
        "weight_words": words,
        "word_bits": word_bits,
        "weight_bytes": weight_bytes,  # read once per inference (every expert active, as balanced routing assumes)
        "peak_gb_s": word_bits * clock * 1e6 / 8 / 1e9,  # during a weight-column burst: one word per cycle
        "average_gb_s": weight_bytes / (latency_us * 1e-6) / 1e9,
    }
    lines.append(
        f"DDR weights: {words} words x {word_bits}b = {weight_bytes} bytes per inference; peak {word_bits}b x "
        f"{clock:g} MHz = {ddr['peak_gb_s']:.2f} GB/s during weight-column bursts, average "
        f"{ddr['average_gb_s']:.3f} GB/s"
    )
    return {
        "shape": shape.__dict__,
        # attn_parallel: the slots built; attn_parallel_requested: the profile's or --parallel's (more than the
        # tokens is clamped to them)
        "parallelism": {"mac_rows": r, "mac_cols": c, "attn_parallel": p, "attn_parallel_requested": hls.attn_parallel},
        "clock_mhz": clock,
        "macs": macs,
        "cycles": cyc,
        "dsp": dsp,
        "bram18k": bram,
        "ddr": ddr,
        "latency_us": latency_us,
        "dsp_floor_us": floor_us,
        "efficiency": floor_us / latency_us,
        "budget": {"dsp": hls.dsp_budget, "bram18k": hls.bram_budget},
        "fits": dsp["total"] <= hls.dsp_budget and bram["total"] <= hls.bram_budget,
        "arithmetic": lines,
    }
