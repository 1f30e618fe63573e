"""Differentiable float (torch) versions of the hardware-friendly softmax and GELU approximations.

Each function evaluates the *approximation formula* in real (float) arithmetic, so it can sit inside a model
that is trained (including brevitas QAT) and exported with ``torch.onnx.export``. Only standard ops are used
(floor/ceil, abs, sign, clamp, where, Gather on a constant table, exp, reciprocal, reductions), so the
exported graph runs in ONNX Runtime, OpenVINO, TensorRT and Core ML without custom ops.

Gradients: the integer parts (``floor``/``ceil`` of the exponent split, the table index) are piecewise
constant, and every approximation below is continuous (or nearly: i-exp jumps by 8.7e-5 relative, down, at
multiples of ln2), so the autograd derivative *is* the derivative of the piecewise formula; no
straight-through estimator is needed for the float emulation. Quantization of inputs/outputs is the job of
the quant points around these ops (brevitas), and of :mod:`edgeattn.approx.fixed` for the integer model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SOFTMAX_METHODS: tuple[str, ...] = ("exact", "online", "ibert", "shift", "base2")
GELU_METHODS: tuple[str, ...] = ("exact", "tanh", "edgemoe", "edgemoe_mm", "ibert", "sigmoid", "respoly")

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)

# I-BERT i-exp polynomial: exp(p) ~ A*(p + B)^2 + C on p in (-ln2, 0].
IBERT_EXP_A, IBERT_EXP_B, IBERT_EXP_C = 0.3585, 1.353, 0.344
# I-BERT i-GELU: L(t) = sgn(t) * (A*(min(|t|, -B) + B)^2 + 1), GELU(x) ~ x/2 * (1 + L(x/sqrt2)).
IBERT_GELU_A, IBERT_GELU_B = -0.2888, -1.769
# I-ViT Shiftmax: x*log2(e) ~ x + x/2 - x/16 (shifts), 2^r ~ 1 + r/2 on r in (-1, 0].
SHIFT_LOG2E = 1.0 + 0.5 - 1.0 / 16.0
# Softermax-style base-2: 2^f on f in [0, 1) by linear interpolation over BASE2_SEGMENTS equal segments.
BASE2_SEGMENTS = 8
# Edge-MoE GELU: delta(t) = t * Phi(-t) tabulated for t in [0, 5.5] at step 1/32 (177 entries).
EDGEMOE_STEP_LOG2 = 5
EDGEMOE_ENTRIES = 177
EDGEMOE_LIMIT = (EDGEMOE_ENTRIES - 1) / (1 << EDGEMOE_STEP_LOG2)  # 5.5
EDGEMOE_TABLE_KINDS: tuple[str, ...] = ("exact", "mm")  # Edge-MoE's knots; this project's near-minimax knots


def _check_method(method: str, allowed: tuple[str, ...], what: str) -> None:
    if method not in allowed:
        raise ValueError(
            f"argument 'method': unknown {what} method {method!r}; allowed: {', '.join(allowed)}"
        )


def _as_tensor(x: torch.Tensor, fn: str) -> torch.Tensor:
    """``x`` itself, or the float ``.value`` of a quantized-tensor wrapper (e.g. brevitas' QuantTensor, which
    is not a torch.Tensor), checked to be floating point."""
    if not isinstance(x, torch.Tensor) and isinstance(getattr(x, "value", None), torch.Tensor):
        x = x.value
    _check_float(x, fn)
    return x


def _check_float(x: torch.Tensor, fn: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{fn}: argument 'x' must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise ValueError(
            f"{fn}: argument 'x' must be a floating-point tensor (float16/bfloat16/float32/float64), "
            f"got dtype {x.dtype}"
        )


def _pow2_int(n: torch.Tensor) -> torch.Tensor:
    """2**n for integer-valued float ``n`` (n <= 0 here), as ``exp(n*ln2)``: ONNX ``Exp`` is a fast kernel in
    every runtime while ``Pow`` is a slow generic one; the result is 2**n to within float rounding."""
    return torch.exp(n * LN2)


# Exp arguments are clamped here before the integer/fraction split: exp(-128) underflows float32 anyway, and
# without the clamp a masked score of -inf would give floor(inf) - inf = NaN. float64 keeps exp(-128) = 2.6e-56,
# so a masked score would get a tiny non-zero weight there: it is clamped at -1100 instead, below float64's
# smallest exp (exp(-745.2)), so masks give exactly 0 in every dtype.
MIN_EXP_ARG = 128.0
MIN_EXP_ARG_F64 = 1100.0


def _min_exp_arg(dtype: torch.dtype) -> float:
    """The clamp of the shifted exp arguments for ``dtype``: where exp is exactly 0 in that dtype."""
    return MIN_EXP_ARG_F64 if dtype == torch.float64 else MIN_EXP_ARG


def _shifted(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x - max(x)`` along ``dim``, clamped below at ``-MIN_EXP_ARG`` (``-MIN_EXP_ARG_F64`` in float64)."""
    return torch.clamp(x - torch.amax(x, dim=dim, keepdim=True), min=-_min_exp_arg(x.dtype))


def _take(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``table[idx]`` for a 1-D constant table, written so that it exports as a plain ONNX Gather."""
    return torch.index_select(table, 0, idx.reshape(-1)).reshape(idx.shape)


# ----------------------------------------------------------------------------------------------- softmax
def softmax_exact(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference softmax (torch's own kernel)."""
    return torch.softmax(x, dim=dim)


def softmax_online(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Online softmax in its deferred form ``exp(s - m) * (1/d)`` on a whole tensor.

    In a batched graph the single-pass running max/sum gives exactly the row max and the row sum, so this is
    mathematically the exact softmax; it is written in the deployed form (one reciprocal per row, one
    multiply per element). The streaming form is :class:`OnlineSoftmaxStream`.
    """
    m = torch.amax(x, dim=dim, keepdim=True)
    e = torch.exp(x - m)
    inv_d = torch.reciprocal(torch.sum(e, dim=dim, keepdim=True))
    return e * inv_d


def ibert_exp(x: torch.Tensor) -> torch.Tensor:
    """I-BERT i-exp for ``x <= 0``: ``x = -z*ln2 + p``, ``exp(p) ~ A(p+B)^2 + C``, result ``>> z``."""
    z = torch.floor(-x / LN2)
    p = x + z * LN2
    pb = p + IBERT_EXP_B
    poly = IBERT_EXP_A * (pb * pb) + IBERT_EXP_C
    return poly * _pow2_int(-z)


def softmax_ibert(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """I-BERT softmax: i-exp of ``x - max`` normalised by its row sum."""
    e = ibert_exp(_shifted(x, dim))
    return e / torch.sum(e, dim=dim, keepdim=True)


def shift_exp(x: torch.Tensor) -> torch.Tensor:
    """I-ViT ShiftExp for ``x <= 0``: ``t = 1.4375 x`` (shift-add log2e), ``2^t ~ (1 + r/2) * 2^-q``."""
    t = x * SHIFT_LOG2E
    q = torch.floor(-t)
    r = t + q  # in (-1, 0]
    return (1.0 + 0.5 * r) * _pow2_int(-q)


def softmax_shift(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """I-ViT Shiftmax: ShiftExp of ``x - max`` normalised by its row sum."""
    e = shift_exp(_shifted(x, dim))
    return e / torch.sum(e, dim=dim, keepdim=True)


def base2_pow2_frac(f: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``2^f`` on ``f in [0, 1)``, :data:`BASE2_SEGMENTS` equal segments, exact at knots.

    The knot values ``2^(j/S)`` are computed as ``exp(j*ln2/S)`` rather than read from a 9-entry table: the
    same numbers to float rounding, and an ONNX ``Exp`` is much faster than a ``Gather`` in the CPU runtimes.
    """
    s = f * BASE2_SEGMENTS
    j = torch.clamp(torch.floor(s), 0, BASE2_SEGMENTS - 1)
    lo = torch.exp(j * (LN2 / BASE2_SEGMENTS))
    return lo * (1.0 + _BASE2_STEP_M1 * (s - j))


_BASE2_STEP_M1 = 2.0 ** (1.0 / BASE2_SEGMENTS) - 1.0  # knot[j+1] / knot[j] - 1


def softmax_base2(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softermax-style softmax: base 2, integer running max, piecewise-linear ``2^frac``.

    ``t = x*log2(e)`` (in deployment the constant folds into the 1/sqrt(d) score scale),
    ``m = ceil(max t)`` is an integer so rescaling a running sum by a change of max is a shift;
    ``2^(t-m) = 2^floor * 2^frac``.
    """
    u = torch.clamp(_base2_exponent(x, dim), min=-_min_exp_arg(x.dtype) * LOG2E)
    k = torch.floor(u)
    e = base2_pow2_frac(u - k) * _pow2_int(k)
    return e / torch.sum(e, dim=dim, keepdim=True)


def _base2_exponent(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``t - ceil(max t)`` for ``t = x*log2(e)``, as ``(x - max x)*log2(e) + (t_max - ceil(t_max))``.

    The same value, but ``x*log2(e)`` is never formed: for finite scores above ``finfo.max / log2(e)`` (2.4e38 in
    float32, 45400 in float16) it is inf, and inf - inf gave a NaN row where every other method gives 1 and 0.
    ``t_max`` is taken from the row max clamped to half the dtype's range, where every float is an integer and
    so the fractional offset is 0 anyway.
    """
    x_max = torch.amax(x, dim=dim, keepdim=True)
    limit = torch.finfo(x.dtype).max / 2
    t_max = torch.clamp(x_max, -limit, limit) * LOG2E
    return (x - x_max) * LOG2E + (t_max - torch.ceil(t_max))


class OnlineSoftmaxStream:
    """Float streaming form of the Edge-MoE single-pass softmax (running max ``m`` and running sum ``d``).

    Feed a row in chunks along the last dim with :meth:`update`; nothing but ``(m, d)`` is kept. ``finalize``
    gives ``(m, 1/d)`` and :meth:`weights` (or :func:`deferred_weights`) computes ``exp(s - m) * (1/d)`` for
    any score chunk on the fly, as the A·V pass does. Works on batched rows (leading dims are broadcast).
    """

    def __init__(self) -> None:
        self.m: torch.Tensor | None = None
        self.d: torch.Tensor | None = None

    def update(self, chunk: torch.Tensor) -> None:
        """Consume the next scores ``chunk`` (..., n) of the rows."""
        _check_float(chunk, "OnlineSoftmaxStream.update")
        cmax = torch.amax(chunk, dim=-1, keepdim=True)
        if self.m is None:
            self.m = cmax
            self.d = torch.sum(torch.exp(chunk - _finite_max(cmax)), dim=-1, keepdim=True)
            return
        m_new = torch.maximum(self.m, cmax)
        # A row masked (-inf) so far has d = 0: rescaling it by exp(-inf - -inf) = NaN would poison the row, so
        # an all -inf max subtracts 0 instead (exp(-inf) = 0 keeps d = 0).
        safe = _finite_max(m_new)
        self.d = self.d * torch.exp(self.m - safe) + torch.sum(torch.exp(chunk - safe), dim=-1, keepdim=True)
        self.m = m_new

    def finalize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(m, inv_d)`` with shape (..., 1)."""
        if self.m is None:
            raise ValueError("OnlineSoftmaxStream.finalize: no scores were given (call update first)")
        return self.m, torch.reciprocal(self.d)

    @staticmethod
    def weights(s: torch.Tensor, m: torch.Tensor, inv_d: torch.Tensor) -> torch.Tensor:
        """Deferred probabilities ``exp(s - m) * inv_d``."""
        return deferred_weights(s, m, inv_d)


def _finite_max(m: torch.Tensor) -> torch.Tensor:
    """``m`` with ``-inf`` (a row whose scores so far are all masked) replaced by 0, for subtracting from scores."""
    return torch.where(torch.isneginf(m), torch.zeros_like(m), m)


def deferred_weights(s: torch.Tensor, m: torch.Tensor, inv_d: torch.Tensor) -> torch.Tensor:
    """The deferred softmax weights ``exp(s - m) * inv_d`` used inside A·V."""
    return torch.exp(s - m) * inv_d


def online_softmax_chunked(x: torch.Tensor, chunk: int, dim: int = -1) -> torch.Tensor:
    """Softmax of ``x`` by streaming each row through :class:`OnlineSoftmaxStream`, ``chunk`` at a time."""
    _check_float(x, "online_softmax_chunked")
    if chunk < 1:
        raise ValueError(f"online_softmax_chunked: argument 'chunk' must be >= 1, got {chunk}")
    xt = x.movedim(dim, -1)
    st = OnlineSoftmaxStream()
    for start in range(0, xt.shape[-1], chunk):
        st.update(xt[..., start : start + chunk])
    m, inv_d = st.finalize()
    return deferred_weights(xt, m, inv_d).movedim(-1, dim)


_SOFTMAX = {
    "exact": softmax_exact,
    "online": softmax_online,
    "ibert": softmax_ibert,
    "shift": softmax_shift,
    "base2": softmax_base2,
}


def softmax(x: torch.Tensor, dim: int = -1, method: str = "exact") -> torch.Tensor:
    """Softmax of ``x`` along ``dim`` by ``method`` (one of :data:`SOFTMAX_METHODS`). Differentiable."""
    _check_method(method, SOFTMAX_METHODS, "softmax")
    x = _as_tensor(x, "softmax")
    rank = max(x.dim(), 1)  # a 0-d tensor is one score, as torch.softmax takes it
    if isinstance(dim, bool) or not isinstance(dim, int) or not -rank <= dim < rank:
        raise IndexError(f"softmax: dim must be an integer in [{-rank}, {rank - 1}] for a {x.dim()}-D input, "
                         f"got {dim!r}")
    if x.dim() == 0:
        return torch.softmax(x, dim=dim)
    if x.shape[dim] == 0:  # no scores: an empty result, as torch.softmax gives (the row max would not exist)
        return torch.softmax(x, dim=dim)
    return _SOFTMAX[method](x, dim=dim)


# -------------------------------------------------------------------------------------------------- GELU
def edgemoe_table_f64(kind: str = "exact") -> torch.Tensor:
    """The 177 table values: ``"exact"`` = ``delta(t_i)``; ``"mm"`` = ``delta(t_i) - delta''(t_i) h^2/16``.

    The ``mm`` (near-minimax) table shifts each knot by half the chord's midpoint error, ``delta'' h^2 / 8``,
    so linear interpolation errs by about +-``|delta''| h^2/16`` instead of ``0..|delta''| h^2/8``: the same
    datapath with half the maximum error. ``delta''(t) = (t^2 - 2) phi(t)``, ``h = 1/32``.

    The single definition of the table: :func:`edgeattn.approx.fixed.edgemoe_table` (and so the HLS C++
    tables) rounds these float64 values.
    """
    if kind not in EDGEMOE_TABLE_KINDS:
        raise ValueError(f"argument 'kind': unknown table kind {kind!r}; allowed: {', '.join(EDGEMOE_TABLE_KINDS)}")
    # on the CPU whatever the default device (imported under `with torch.device("meta")` it was a meta tensor)
    t = torch.arange(EDGEMOE_ENTRIES, dtype=torch.float64, device="cpu") / (1 << EDGEMOE_STEP_LOG2)
    delta = t * 0.5 * torch.erfc(t / math.sqrt(2.0))  # t * Phi(-t)
    if kind == "exact":
        return delta
    phi = torch.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    return delta - (t * t - 2.0) * phi / (16.0 * (1 << (2 * EDGEMOE_STEP_LOG2)))


_EDGEMOE_TABLE = edgemoe_table_f64("exact")
_EDGEMOE_MM_TABLE = edgemoe_table_f64("mm")
# the tables on each (device, dtype) they have been used on: one copy each, not one per forward (a GPU copy from
# pageable host memory would block every call)
_TABLE_COPIES: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}


def _table_like(kind: str, a: torch.Tensor) -> torch.Tensor:
    """The ``kind`` ("exact" or "mm") table on ``a``'s device in ``a``'s dtype."""
    table = _EDGEMOE_TABLE if kind == "exact" else _EDGEMOE_MM_TABLE
    if type(a) is not torch.Tensor or torch.jit.is_tracing() or torch.compiler.is_compiling():
        # a graph is being built (a fake tensor under torch.export/dynamo, or jit.trace): its copy is a graph
        # constant, and a cached one would hand later eager calls a FakeTensor or make two traces differ
        return table.to(device=a.device, dtype=a.dtype)
    key = (kind, a.device, a.dtype)
    if key not in _TABLE_COPIES:
        _TABLE_COPIES[key] = table.to(device=a.device, dtype=a.dtype)
    return _TABLE_COPIES[key]


def edgemoe_delta(a: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
    """``delta(|x|) = |x| Phi(-|x|)`` from the 1/32-step table, interpolated, 0 for ``|x| >= 5.5``."""
    # the constant table lives on the CPU: it follows the input to its device (a GPU model) and dtype
    table = _table_like("exact", a) if table is None else table.to(device=a.device, dtype=a.dtype)
    # ``where`` rather than ``clamp``: clamp keeps NaN, whose int64 cast is not a valid table index. NaN fails
    # ``a < LIMIT`` here and below, so it reads a valid entry, gets delta 0, and ReLU(NaN) - 0 stays NaN.
    s = torch.where(a < EDGEMOE_LIMIT, a, EDGEMOE_LIMIT) * (1 << EDGEMOE_STEP_LOG2)
    i = torch.clamp(torch.floor(s), max=EDGEMOE_ENTRIES - 2)
    w = s - i
    idx = i.to(torch.int64)
    lo = _take(table, idx)
    hi = _take(table, idx + 1)
    delta = lo + (hi - lo) * w
    return torch.where(a < EDGEMOE_LIMIT, delta, torch.zeros_like(delta))


def _relu(x: torch.Tensor) -> torch.Tensor:
    """``max(x, 0)``, whose autograd slope at exactly 0 is 1/2 (torch splits a tie), where ``torch.relu``'s is 0.

    The residual GELUs ``ReLU(x) - delta(|x|)`` are smooth at 0 with slope 1/2 (``delta'(0) = 1/2``), but
    ``relu`` and ``abs`` both differentiate to 0 there, so autograd gave 0. Same values as ``relu`` (NaN stays
    NaN, -inf gives 0); exported as ONNX ``Max``.
    """
    return torch.maximum(x, x.new_zeros(()))


def gelu_edgemoe(x: torch.Tensor) -> torch.Tensor:
    """Edge-MoE GELU: ``ReLU(x) - delta(|x|)``."""
    return _relu(x) - edgemoe_delta(torch.abs(x))


def gelu_edgemoe_mm(x: torch.Tensor) -> torch.Tensor:
    """Edge-MoE GELU with this project's near-minimax table (same datapath, half the max error)."""
    a = torch.abs(x)
    return _relu(x) - edgemoe_delta(a, _table_like("mm", a))


def gelu_ibert(x: torch.Tensor) -> torch.Tensor:
    """I-BERT i-GELU: ``x/2 * (1 + L(x/sqrt2))`` with the clipped second-order erf polynomial ``L``."""
    t = x * (1.0 / math.sqrt(2.0))
    c = torch.clamp(torch.abs(t), max=-IBERT_GELU_B)
    cb = c + IBERT_GELU_B
    erf = torch.sign(t) * (IBERT_GELU_A * (cb * cb) + 1.0)
    return 0.5 * x * (1.0 + erf)


# "respoly": this project's own GELU at the cost of i-GELU (4 multiplies, a clip, no table, no exp): the
# Edge-MoE residual form ReLU(x) - delta(|x|) with delta(t) = t*Phi(-t) replaced by a clipped cubic that has a
# double root at the clip point (so the curve is C1 there):
# delta(t) ~ tc*(c - tc)^2*(k1 + k2*tc), tc = min(t, c).
# Constants from a minimax fit on [0, 8] (docs/approx.md); max abs error 5.9e-3 vs i-GELU's 1.8e-2.
RESPOLY_K1, RESPOLY_K2, RESPOLY_C = 0.0511279, -0.0163458, 3.12988


def respoly_delta(a: torch.Tensor) -> torch.Tensor:
    """The clipped-cubic residual ``tc*(c - tc)^2*(k1 + k2*tc)`` for ``a = |x|`` (0 beyond ``c``)."""
    tc = torch.clamp(a, max=RESPOLY_C)
    u = RESPOLY_C - tc
    return (tc * (RESPOLY_K1 + RESPOLY_K2 * tc)) * (u * u)


def gelu_respoly(x: torch.Tensor) -> torch.Tensor:
    """This project's GELU ``ReLU(x) - respoly_delta(|x|)``: ``ibert``'s op count, 3x lower max error."""
    return _relu(x) - respoly_delta(torch.abs(x))


def gelu_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(1.702 x)``."""
    return x * torch.sigmoid(1.702 * x)


_GELU = {
    "exact": lambda x: F.gelu(x),
    "tanh": lambda x: F.gelu(x, approximate="tanh"),
    "edgemoe": gelu_edgemoe,
    "edgemoe_mm": gelu_edgemoe_mm,
    "ibert": gelu_ibert,
    "sigmoid": gelu_sigmoid,
    "respoly": gelu_respoly,
}


def gelu(x: torch.Tensor, method: str = "exact") -> torch.Tensor:
    """GELU of ``x`` by ``method`` (one of :data:`GELU_METHODS`). Differentiable."""
    _check_method(method, GELU_METHODS, "gelu")
    x = _as_tensor(x, "gelu")
    return _GELU[method](x)


class ApproxSoftmax(torch.nn.Module):
    """``softmax(x, dim, method)`` as a module (what the attention blocks hold)."""

    def __init__(self, method: str = "exact", dim: int = -1) -> None:
        super().__init__()
        _check_method(method, SOFTMAX_METHODS, "softmax")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"ApproxSoftmax: dim must be an integer, got {dim!r}")
        self.method = method
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softmax(x, dim=self.dim, method=self.method)

    def extra_repr(self) -> str:
        return f"method={self.method!r}, dim={self.dim}"


class ApproxGELU(torch.nn.Module):
    """``gelu(x, method)`` as a module (what the MLP blocks hold)."""

    def __init__(self, method: str = "exact") -> None:
        super().__init__()
        _check_method(method, GELU_METHODS, "gelu")
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(x, method=self.method)

    def extra_repr(self) -> str:
        return f"method={self.method!r}"
