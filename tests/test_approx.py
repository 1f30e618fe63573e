"""Float (torch) approximations: accuracy against float64 references, published-error reproduction,
property tests (hypothesis) and gradients against finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeattn.approx import (
    GELU_METHODS,
    SOFTMAX_METHODS,
    ApproxGELU,
    ApproxSoftmax,
    OnlineSoftmaxStream,
    gelu,
    online_softmax_chunked,
    softmax,
)

torch.set_num_threads(1)


def _gelu64(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return 0.5 * x * torch.erfc(-x / math.sqrt(2.0))


GRID = torch.linspace(-8, 8, 160_001, dtype=torch.float64)


def test_gelu_published_errors() -> None:
    err = {m: (gelu(GRID, m) - _gelu64(GRID)).abs().max().item() for m in GELU_METHODS}
    assert err["exact"] < 1e-12
    assert abs(err["ibert"] - 1.8e-2) <= 0.1 * 1.8e-2  # I-BERT's published ~1.8e-2, within 10%
    assert 9e-5 < err["edgemoe"] <= 1e-4  # interpolation of the 1/32 table (Edge-MoE measured 9.8e-5)
    assert err["edgemoe_mm"] <= 0.51 * err["edgemoe"]  # same datapath, near-minimax table: half the error
    assert err["tanh"] < 5e-4
    assert 1.5e-2 < err["sigmoid"] < 2.5e-2
    assert err["respoly"] < 0.35 * err["ibert"]  # this project's form: same op count, 3x lower max error


def test_softmax_methods_accuracy_float64() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 197, generator=g, dtype=torch.float64) * 3
    ref = torch.exp(x - x.amax(-1, keepdim=True))
    ref = ref / ref.sum(-1, keepdim=True)
    tol = {"exact": 1e-14, "online": 1e-14, "ibert": 2e-3, "shift": 5e-2, "base2": 1e-3}
    for m in SOFTMAX_METHODS:
        y = softmax(x, method=m)
        assert (y - ref).abs().max().item() <= tol[m], m
        assert torch.allclose(y.sum(-1), torch.ones(64, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_online_stream_equals_exact_for_every_chunking(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 37, generator=g) * 5).to(dtype)
    ref = torch.softmax(x, -1)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    for chunk in range(1, 38):
        y = online_softmax_chunked(x, chunk)
        assert (y - ref).abs().max().item() <= tol, chunk
    st_ = OnlineSoftmaxStream()
    st_.update(x[:, :10])
    st_.update(x[:, 10:])
    m, inv_d = st_.finalize()
    assert torch.equal(m, x.amax(-1, keepdim=True))
    assert (OnlineSoftmaxStream.weights(x[:, 5:9], m, inv_d) - ref[:, 5:9]).abs().max() <= tol
    # other dims than the last
    y = online_softmax_chunked(x.T.contiguous(), 4, dim=0)
    assert (y - ref.T).abs().max().item() <= tol


def test_masked_scores() -> None:
    x = torch.tensor([[0.0, 1.0, float("-inf"), 2.0]])
    for m in SOFTMAX_METHODS:
        y = softmax(x, method=m)
        assert torch.isfinite(y).all() and y[0, 2].item() == 0.0, m


# --------------------------------------------------------------------------------------- properties
rows = st.lists(st.floats(-30, 30, allow_nan=False), min_size=2, max_size=24)
SHIFT_TOL = {"exact": 1e-12, "online": 1e-12, "ibert": 1e-4, "shift": 1e-12, "base2": 5e-3}
# i-exp jumps by 8.7e-5 (relative, down as x rises) at multiples of ln2: its polynomial is 1.000273 at p=0 and
# 0.500093*2 = 1.000186 at p=-ln2 (test_ibert_exp_jump_is_the_documented_figure)
MONO_TOL = {"exact": 1e-13, "online": 1e-13, "ibert": 1e-4, "shift": 1e-13, "base2": 1e-13}


def test_ibert_exp_jump_is_the_documented_figure() -> None:
    """i-exp's relative step at x = -k ln2 is the same for every k, and the docs state it (to 2 digits)."""
    import re
    from pathlib import Path

    from edgeattn.approx import float_ops

    eps = 1e-9
    jumps = []
    for k in range(1, 9):
        x = torch.tensor([-k * math.log(2) + eps, -k * math.log(2) - eps], dtype=torch.float64)
        above, below = float_ops.ibert_exp(x)
        jumps.append(((above - below) / below).item())
    assert max(jumps) - min(jumps) < 1e-9 and -8.75e-5 < jumps[0] < -8.73e-5
    assert abs(jumps[0]) < MONO_TOL["ibert"]  # the monotonicity tolerance covers the step
    docs = (Path(__file__).resolve().parents[1] / "docs" / "approx.md").read_text()
    for text in (float_ops.__doc__, docs):
        stated = float(re.search(r"i-exp jumps by ([0-9.]+e-[0-9]+) relative", " ".join(text.split())).group(1))
        assert abs(stated - abs(jumps[0])) <= 0.01 * abs(jumps[0]), stated


@settings(max_examples=60, deadline=None)
@given(row=rows, c=st.floats(-50, 50, allow_nan=False), method=st.sampled_from(SOFTMAX_METHODS))
def test_softmax_invariant_to_constant_and_in_unit_interval(row: list[float], c: float, method: str) -> None:
    x = torch.tensor(row, dtype=torch.float64)
    y = softmax(x, method=method)
    assert y.min() >= 0 and y.max() <= 1
    assert abs(y.sum().item() - 1) < 1e-12
    assert (softmax(x + c, method=method) - y).abs().max().item() <= SHIFT_TOL[method]


@settings(max_examples=60, deadline=None)
@given(row=rows, i=st.integers(0, 23), bump=st.floats(1e-3, 10), method=st.sampled_from(SOFTMAX_METHODS))
def test_softmax_monotone_in_each_input(row: list[float], i: int, bump: float, method: str) -> None:
    x = torch.tensor(row, dtype=torch.float64)
    i = i % len(row)
    x2 = x.clone()
    x2[i] += bump
    y, y2 = softmax(x, method=method), softmax(x2, method=method)
    tol = MONO_TOL[method]
    assert y2[i] >= y[i] * (1 - tol) - 1e-15
    others = torch.arange(len(row)) != i
    assert (y2[others] <= y[others] * (1 + tol) + 1e-15).all()


@settings(max_examples=60, deadline=None)
@given(a=st.floats(-0.75, 8), b=st.floats(-0.75, 8), method=st.sampled_from(GELU_METHODS))
def test_gelu_increasing_where_gelu_increases(a: float, b: float, method: str) -> None:
    lo, hi = sorted((a, b))
    y = gelu(torch.tensor([lo, hi], dtype=torch.float64), method)
    assert y[0] <= y[1] + 1e-12


@settings(max_examples=60, deadline=None)
@given(a=st.floats(-12, -0.84), b=st.floats(-12, -0.84), method=st.sampled_from(GELU_METHODS))
def test_gelu_decreasing_where_gelu_decreases(a: float, b: float, method: str) -> None:
    # GELU decreases below its minimum at -0.7518; every approximation's minimum lies in [-0.834, -0.75]
    lo, hi = sorted((a, b))
    y = gelu(torch.tensor([lo, hi], dtype=torch.float64), method)
    assert y[0] >= y[1] - 1e-12


# ---------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("method", SOFTMAX_METHODS)
def test_softmax_gradients_match_finite_differences(method: str) -> None:
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(3, 9, generator=g, dtype=torch.float64) * 2).requires_grad_()
    w = torch.randn(3, 9, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: softmax(t, method=method) * w, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("method", GELU_METHODS)
def test_gelu_gradients_match_finite_differences(method: str) -> None:
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(64, generator=g, dtype=torch.float64) * 2.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: gelu(t, method), (x,), eps=1e-6, atol=1e-5)


def test_modules_and_half_precision() -> None:
    x = torch.randn(2, 3, 8)
    for m in SOFTMAX_METHODS:
        mod = ApproxSoftmax(m, dim=1)
        assert torch.allclose(mod(x).sum(1), torch.ones(2, 8), atol=1e-5)
        assert softmax(x.half(), method=m).dtype == torch.float16
    for m in GELU_METHODS:
        y = ApproxGELU(m)(x)
        assert (y - _gelu64(x)).abs().max().item() < 2.1e-2
        assert gelu(x.bfloat16(), m).dtype == torch.bfloat16


@pytest.mark.parametrize("method", GELU_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gelu_propagates_nan(method: str, dtype: torch.dtype) -> None:
    """NaN in gives NaN out (Edge-MoE once cast NaN to an int64 table index and raised IndexError)."""
    x = torch.tensor([float("nan"), -1.0, 0.5, 6.0], dtype=dtype)
    y = gelu(x, method)
    assert torch.isnan(y[0]) and torch.isfinite(y[1:]).all()
    assert torch.equal(y[1:], gelu(x[1:], method))


@pytest.mark.parametrize("kind", ["exact", "mm"])
def test_edgemoe_integer_table_is_the_rounded_float_table(kind: str) -> None:
    """One Edge-MoE table: the golden model's integers (and so the HLS C++ tables) round the float model's."""
    from edgeattn.approx import fixed, float_ops

    assert fixed.edgemoe_table_f64 is float_ops.edgemoe_table_f64  # one definition, not a copy
    assert (fixed.EDGEMOE_ENTRIES, fixed.EDGEMOE_STEP_LOG2) == (float_ops.EDGEMOE_ENTRIES, float_ops.EDGEMOE_STEP_LOG2)
    f64 = float_ops.edgemoe_table_f64(kind).numpy()
    for frac in range(1, 41):
        scaled = f64 * 2.0**frac
        assert np.array_equal(fixed.edgemoe_table(frac, kind), np.floor(scaled + 0.5).astype(np.int64)), frac
        # No knot lies within 1e-14 (relative, ~45 ulp) of a rounding tie, so an erfc/exp that differs by an
        # ulp or two on another machine (libm, SIMD) cannot flip a table integer.
        nz = scaled != 0
        assert (np.abs(scaled - np.floor(scaled) - 0.5)[nz] / scaled[nz]).min() > 1e-14, frac


def test_edgemoe_integer_tables_unchanged() -> None:
    """Every generated table integer (both kinds, 1..40 fraction bits) is bit-identical to the release's."""
    import hashlib

    from edgeattn.approx import fixed

    digest = hashlib.sha256()
    for kind in ("exact", "mm"):
        for frac in range(1, 41):
            digest.update(",".join(map(str, fixed.edgemoe_table(frac, kind).tolist())).encode() + b";")
    assert digest.hexdigest() == "954a99fd3ab8690327f8aaf6deba1d29f2d703ea7cf4a7295dbd9692b0ab245d"


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="argument 'method'.*allowed: exact, online, ibert, shift, base2"):
        softmax(torch.zeros(3), method="fast")
    with pytest.raises(ValueError, match="argument 'method'.*allowed: exact, tanh"):
        ApproxGELU("relu")
    with pytest.raises(ValueError, match="floating-point"):
        softmax(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="floating-point"):
        gelu(torch.zeros(3, dtype=torch.int32), "edgemoe")
    with pytest.raises(ValueError, match="chunk"):
        online_softmax_chunked(torch.zeros(3), 0)


@pytest.mark.parametrize("method", SOFTMAX_METHODS)
def test_softmax_of_empty_rows_is_empty(method: str) -> None:
    """No scores to normalise: an empty result of the same shape, as torch.softmax gives (the approximate methods
    took the row max first and raised IndexError)."""
    for shape, dim in (((2, 0), -1), ((0, 3), 0), ((2, 0, 4), 1)):
        out = softmax(torch.empty(shape), dim=dim, method=method)
        assert out.shape == shape
    rows = softmax(torch.empty(0, 3), dim=-1, method=method)  # no rows, 3 scores each: nothing to compute either
    assert rows.shape == (0, 3)


def test_float_and_fixed_agree() -> None:
    """The fixed-point models implement the same formulas: compare them on the same inputs."""
    from edgeattn.approx.fixed import FixedFormat
    from edgeattn.approx.fixed_methods import gelu_fixed, softmax_fixed

    fmt = FixedFormat(16, 8)
    q = fmt.quantize(np.random.default_rng(5).standard_normal((32, 64)) * 3)
    xf = torch.tensor(fmt.dequantize(q))
    for m, tol in {"online": 1.0, "ibert": 1.5, "shift": 2.0, "base2": 1.0}.items():
        p = softmax_fixed(q, fmt, m, 8) / 256
        assert np.abs(p - softmax(xf, method=m).numpy()).max() <= tol / 256, m
    gfmt = FixedFormat(16, 11)
    gq = np.arange(-8 << 11, 8 << 11, 5, dtype=np.int64)
    gx = torch.tensor(gfmt.dequantize(gq))
    for m, tol in {
        "edgemoe": 2e-5,
        "edgemoe_mm": 2e-5,
        "ibert": 3e-4,
        "respoly": 1e-4,
        "sigmoid": 1e-4,
        "tanh": 1e-4,
    }.items():
        y = gelu_fixed(gq, gfmt, m, 16) / 65536
        assert np.abs(y - gelu(gx, m).numpy()).max() <= tol, m


def test_accepts_quant_tensor_wrappers() -> None:
    """brevitas layers with return_quant_tensor=True hand over a QuantTensor (a tuple, not a torch.Tensor)."""
    brevitas_nn = pytest.importorskip("brevitas.nn")
    x = torch.randn(2, 7)
    qt = brevitas_nn.QuantIdentity(return_quant_tensor=True)(x)
    assert not isinstance(qt, torch.Tensor)
    assert torch.equal(gelu(qt, "edgemoe"), gelu(qt.value, "edgemoe"))
    assert torch.equal(softmax(qt, method="ibert"), softmax(qt.value, method="ibert"))
