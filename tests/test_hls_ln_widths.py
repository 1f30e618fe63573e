"""The LayerNorm datapath's derived widths, and ``--parallel`` above the token count.

- the widths (``layernorm_widths``, the ``EA_LN_*_W`` constants) against a case worked out by hand; every
  intermediate of an independent integer LayerNorm (written here from docs/hls.md, not taken from golden.py) stays
  inside its width for every row of a small format (exhaustive) and for extreme rows and extreme gamma/beta at
  the default widths, and the extreme rows reach each width's top bit (the widths are not loose);
- the C++ ``layernorm`` and ``ln_isqrt`` at those widths, compiled with g++, equal the golden model and
  ``math.isqrt`` on those extreme rows; with one width a bit narrower they do not;
- ``--parallel`` above the token count builds (and the estimate counts) as many attention slots as tokens, and
  says so.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from _hls_toolchain import require_toolchain
from edgeattn.fpga_hls import HLSFormats, LayerShape, estimate, estimate_model, find_ap_types, generate_project
from edgeattn.fpga_hls import golden as G
from edgeattn.fpga_hls.estimate import dim_divider, dsp_per_mult, layernorm_dsp, layernorm_widths

from edgeattn.cli import main
from edgeattn.device_profile import load_profile
from edgeattn.errors import EdgeAttnError
from edgeattn.models import create_model

FIELDS = ("sum", "mean", "d", "e", "e2", "sq", "var", "s", "inv", "dinv", "yn", "yg", "z")
UNSIGNED = ("var", "s", "inv")


def _small(**kw):
    torch.manual_seed(0)
    args = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 16, "patch_size": 4, **kw}
    return create_model("edge_moe_vit", **args).eval()  # 17 tokens, D = 32


# ----------------------------------------------------------------------------------- an independent reference
def _ln_steps(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, frac: int, ln_f: int, eps_raw: int) -> dict:
    """Every intermediate of the integer LayerNorm of docs/hls.md for rows ``x`` (Python integers, objects)."""
    x = np.asarray(x, dtype=object)
    dim = x.shape[1]
    sh = frac - ln_f
    out = {"sum": x.sum(axis=1)}
    out["mean"] = np.array([v // dim for v in out["sum"]], dtype=object)
    out["d"] = x - out["mean"][:, None]
    out["e"] = np.vectorize(lambda v: v >> sh if sh >= 0 else v << -sh, otypes=[object])(out["d"])
    out["e2"] = out["e"] * out["e"]
    out["sq"] = out["e2"].sum(axis=1)
    out["var"] = np.array([v // dim + eps_raw for v in out["sq"]], dtype=object)
    out["s"] = np.array([math.isqrt(v) for v in out["var"]], dtype=object)
    out["inv"] = np.array([(1 << (ln_f + G.LN_INV_FRAC)) // v for v in out["s"]], dtype=object)
    out["dinv"] = out["d"] * out["inv"][:, None]
    out["yn"] = np.vectorize(lambda v: v >> G.LN_INV_FRAC, otypes=[object])(out["dinv"])
    out["yg"] = out["yn"] * np.asarray(gamma, dtype=object)[None, :]
    out["z"] = np.vectorize(lambda v: v >> frac, otypes=[object])(out["yg"]) + np.asarray(beta, dtype=object)
    return out


def _fits(values: np.ndarray, width: int, unsigned: bool) -> bool:
    lo, hi = (0, (1 << width) - 1) if unsigned else (-(1 << (width - 1)), (1 << (width - 1)) - 1)
    flat = [int(v) for v in np.ravel(values)]
    return lo <= min(flat) and max(flat) <= hi


def _needs(values: np.ndarray, unsigned: bool) -> int:
    """The width the largest magnitude among ``values`` needs."""
    flat = [int(v) for v in np.ravel(values)]
    if unsigned:
        return max(1, max(flat).bit_length())
    return max(max(v.bit_length() + 1 if v >= 0 else (-v - 1).bit_length() + 1 for v in flat), 1)


def _extreme_rows(width: int, dim: int) -> np.ndarray:
    """Rows at the corners of the activation range (and a few inside it) that drive each intermediate to its
    extreme: one value at one end and the rest at the other, half and half, all equal, a lone spike."""
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    rows = [[hi] + [lo] * (dim - 1), [lo] + [hi] * (dim - 1), [hi] * dim, [lo] * dim]
    rows += [[hi] * (dim // 2) + [lo] * (dim - dim // 2), [lo] * (dim // 2) + [hi] * (dim - dim // 2)]
    rows += [[hi if j % 2 else lo for j in range(dim)], [0] * (dim - 1) + [hi], [0] * (dim - 1) + [lo]]
    rng = np.random.default_rng(0)
    rows += rng.integers(lo, hi, size=(8, dim), endpoint=True).tolist()
    return np.array(rows, dtype=np.int64)


def _spike_rows(fmt: HLSFormats, dim: int, eps: float) -> np.ndarray:
    """The rows ``[k, -c (m times), 0, ...]`` (and their negatives) with the largest ``|d * inv|`` for small
    ``k``: a spike against a variance near eps, where ``1/std`` is largest (c = 1 or 2^sh: e = -1)."""
    ln_f = fmt.ln_frac(dim)
    sh, eps_raw, one = fmt.act_frac - ln_f, G.ln_eps_raw(eps, ln_f), 1 << (ln_f + G.LN_INV_FRAC)
    best: dict[int, tuple[int, int, int]] = {}
    for c in {1, 1 << sh}:
        for k in range(1, (4 * math.isqrt(dim) + 4) << sh):
            for m in range(max(0, k // c - 3), min(dim - 1, k // c + 3) + 1):
                mean = (k - c * m) // dim
                es = [(k - mean) >> sh, (-c - mean) >> sh, (-mean) >> sh]
                var = (es[0] ** 2 + m * es[1] ** 2 + (dim - 1 - m) * es[2] ** 2) // dim + eps_raw
                best[(k - mean) * (one // math.isqrt(var))] = (k, c, m)
    top = [best[v] for v in sorted(best)[-3:]]
    rows = [[k] + [-c] * m + [0] * (dim - 1 - m) for k, c, m in top]
    hi = (1 << (fmt.act_width - 1)) - 1
    return np.array([r for r in rows + [[-v for v in r] for r in rows] if max(map(abs, r)) <= hi], dtype=np.int64)


def _gamma_beta(width: int, dim: int) -> list[tuple[np.ndarray, np.ndarray]]:
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    alt = np.array([hi if j % 2 else lo for j in range(dim)], dtype=np.int64)
    full = np.full(dim, 1, dtype=np.int64)
    return [(full * lo, full * hi), (full * hi, full * lo), (alt, alt[::-1].copy())]


def _check_rows(fmt: HLSFormats, dim: int, eps: float, rows: np.ndarray) -> dict[str, int]:
    """Assert every intermediate of ``rows`` (with each extreme gamma/beta) fits its width; the widths needed."""
    w = layernorm_widths(fmt, dim, eps)
    ln_f = fmt.ln_frac(dim)
    needed: dict[str, int] = {}
    for gamma, beta in _gamma_beta(fmt.act_width, dim):
        steps = _ln_steps(rows, gamma, beta, fmt.act_frac, ln_f, G.ln_eps_raw(eps, ln_f))
        for name in FIELDS:
            assert _fits(steps[name], getattr(w, name), name in UNSIGNED), (name, getattr(w, name))
            needed[name] = max(needed.get(name, 0), _needs(steps[name], name in UNSIGNED))
        # the reference is the golden model: the same outputs after the wrap
        want = G.wrap(np.array([[int(v) for v in r] for r in steps["z"]], dtype=object), fmt.act_width)
        assert np.array_equal(G.layernorm(rows, gamma, beta, eps, fmt), want)
    return needed


# ----------------------------------------------------------------------------------- (a) the widths
def test_widths_of_a_small_case_worked_out_by_hand():
    # ap_fixed<8,3> (F = 5), D = 4: LN_F = min(5, (62 - 2) // 2 - 3) = 5, so e = d; eps 1e-6 -> eps_raw 1, s >= 1
    fmt = HLSFormats(act_width=8, act_int=3, weight_width=8, weight_int=2)
    w = layernorm_widths(fmt, 4, 1e-6)
    # x in [-128, 127]: sum in [-512, 508] -> 10 bits; mean 8 bits
    # d max = 127 - floor((127 - 3*128) / 4) = 127 + 65 = 192, min = -128 - floor((-128 + 3*127) / 4) = -191: 9 bits
    # e*e <= 192^2 = 36864 < 2^16: 17 bits signed; sum(e^2) <= 4 * 255^2 / 4 + 9/4 -> 65027 (half at each end
    # reaches 2 * 128^2 + 2 * 127^2 = 65026): 17 bits; var <= 65027 // 4 + 1 = 16257 < 2^14: 14 bits unsigned,
    # ceil(14/2) = 7 isqrt steps; s <= isqrt(16257) = 127: 7 bits; inv <= 2^29 / 1: 30 bits
    # |d * inv| for each s (naive: 192 * 2^29): s = 1: sum(e^2) <= 4 * (1 + 2 + 1 - 1) - 1 = 11, |d| = |e| <= 3,
    # 3 * 2^29; s = 2: sum(e^2) <= 31, |d| <= 5, 5 * 2^29 / 2; s >= 3: 2^29 * (2 (s + 1) + 1) / s <= 3 * 2^29.
    # So |d * inv| <= 3 * 2^29 < 2^31: 32 bits, reached by [3, -1, -1, 0] (mean 0, var 11 // 4 + 1 = 3, s = 1)
    # yn in [-96, 96]: 8 bits; yn * gamma in [-96 * 128, 96 * 128] = +-12288: 15 bits
    # z = (yg >> 5) + beta in [-384 - 128, 384 + 127] = [-512, 511]: 10 bits
    assert (w.sum, w.mean, w.d, w.e, w.e2, w.sq) == (10, 8, 9, 9, 17, 17)
    assert (w.var, w.sqrt_iters, w.s, w.inv) == (14, 7, 7, 30)
    assert (w.dinv, w.yn, w.yg, w.z) == (32, 8, 15, 10)
    assert w.ranges["sq"] == (0, 65027) and w.ranges["dinv"] == (-3 * 2**29, 3 * 2**29)
    steps = _ln_steps(np.array([[3, -1, -1, 0]]), [1] * 4, [0] * 4, 5, 5, 1)
    assert steps["s"][0] == 1 and steps["dinv"][0, 0] == 3 * 2**29


def test_every_row_of_a_small_format_fits_exhaustively():
    # all 256^2 rows of ap_fixed<8,3> at D = 2, each with extreme gamma and beta
    fmt = HLSFormats(act_width=8, act_int=3, weight_width=8, weight_int=2)
    vals = np.arange(-128, 128, dtype=np.int64)
    rows = np.array(list(itertools.product(vals, vals)), dtype=np.int64)
    needed = _check_rows(fmt, 2, 1e-6, rows)
    w = layernorm_widths(fmt, 2, 1e-6)
    # the ranges not derived from a joint bound are reached exactly
    for name in ("sum", "mean", "d", "e", "e2", "var", "s", "inv"):
        assert needed[name] == getattr(w, name), name


@pytest.mark.parametrize(
    "fmt,dim,eps",
    [
        (HLSFormats(), 192, 1e-6),  # zcu102-hls, the default edge_moe_vit width
        (HLSFormats(), 32, 1e-6),
        (HLSFormats(act_width=16, act_int=6, weight_width=8, weight_int=2), 192, 1e-5),
        (HLSFormats(act_width=24, act_int=8, weight_width=12, weight_int=2), 32, 0.0),  # eps_raw = 1: s >= 1
    ],
)
def test_extreme_rows_fit_and_reach_every_width(fmt, dim, eps):
    rows = np.concatenate([_extreme_rows(fmt.act_width, dim), _spike_rows(fmt, dim, eps)])
    needed = _check_rows(fmt, dim, eps, rows)
    w = layernorm_widths(fmt, dim, eps)
    # every width is reached by one of these rows: none is wider than some input needs
    assert {name: getattr(w, name) - needed[name] for name in FIELDS} == dict.fromkeys(FIELDS, 0)
    assert w.sqrt_iters == math.ceil(w.var / 2)


def test_default_widths_and_the_estimates_layernorm_dsps():
    w = layernorm_widths(HLSFormats(), 192, 1e-6)
    # ap_fixed<32,10>, D = 192, LN_F = 17: the 64-bit datapath narrowed to these
    assert (w.d, w.e, w.e2, w.sq, w.var, w.sqrt_iters, w.s, w.inv) == (33, 28, 55, 61, 53, 27, 27, 34)
    assert (w.dinv, w.yn, w.yg, w.z) == (51, 27, 58, 36)
    est = estimate(LayerShape(tokens=65, dim=192, heads=3, hidden=768), load_profile("zcu102-hls").hls, HLSFormats())
    # per lane, 27 x 18 tiles: e*e 28x28 -> 2*2; d*inv 33 x 35 (inv unsigned) -> 2*2; yn*gamma 27x32 -> 1*2
    assert (dsp_per_mult(28, 28), dsp_per_mult(33, 35), dsp_per_mult(27, 32)) == (4, 4, 2)
    # and once a row, the two divisions by 192 as multiplies: sum + bias (41 bits) x M (43): 2*3; sq (60) x M (62):
    # 3*4, unsigned, so each one bit wider as signed operands
    assert (dsp_per_mult(42, 44), dsp_per_mult(61, 63)) == (6, 12)
    assert est["dsp"]["layernorm"] == 16 * (4 + 4 + 2) + 6 + 12
    # a row: 3 passes of ceil(192/16) = 12; the two multiplies by 1/192's constant, 6 each; isqrt 27; divider
    # 2^41 / s: 41 + 2
    assert est["cycles"]["layernorm"] == 2 * 65 * (3 * 12 + 2 * 6 + 27 + 43)


def test_a_power_of_two_dim_divides_by_shifts():
    hls = load_profile("zcu102-hls").hls
    for dim, cycles, dsps in ((128, 0, 0), (192, 12, 18), (256, 0, 0)):
        w = layernorm_widths(HLSFormats(), dim, 1e-6)
        est = estimate(LayerShape(tokens=65, dim=dim, heads=2, hidden=4 * dim), hls, HLSFormats())
        # LN_F = 17 at all three, so the 1/s divider is 2^41 / s: 41 + 2
        assert est["cycles"]["layernorm"] == 2 * 65 * (3 * dim // 16 + cycles + w.sqrt_iters + 43), dim
        assert est["dsp"]["layernorm"] == 16 * sum(layernorm_dsp(w, 32).values()) + dsps, dim
        assert ("shifts 0" in "".join(est["arithmetic"])) == (cycles == 0)
        if cycles == 0:  # the multiplier is 2^N: the product is a shift
            assert w.mean_div.mult == 1 << w.mean_div.bits and w.var_div.mult == 1 << w.var_div.bits


@pytest.mark.parametrize("dim", [3, 7, 32, 192, 197, 768, 1000])
def test_division_by_the_width_is_exact_at_every_edge(dim):
    """``DimDivider`` against Python's floor division: around every multiple of D at both ends of the range, at
    the range's ends, and 20,000 random dividends; the signed mean through its bias likewise."""
    rng = np.random.default_rng(dim)
    for bits in (8, 20, 41, 60, 62):
        div = dim_divider(dim, bits)
        assert div.mult < 1 << (bits + 2)
        top = (1 << bits) - 1
        edges = {top, top - 1, 0, 1} | {k * dim + o for k in range(4) for o in (-1, 0, 1)}
        edges |= {(top // dim - k) * dim + o for k in range(4) for o in (-1, 0, 1)}
        n = [v for v in edges if 0 <= v <= top] + [int(v) for v in rng.integers(0, top, 20_000, dtype=np.uint64)]
        assert [div(v) for v in n] == [v // dim for v in n], (dim, bits)
    with pytest.raises(ValueError, match="at most 63"):
        dim_divider(dim, 64)
    w = layernorm_widths(HLSFormats(act_width=12, act_int=4), dim, 1e-6)
    lo, hi = w.ranges["sum"]
    assert lo + dim * w.mean_bias_q >= 0 and hi + dim * w.mean_bias_q < 1 << w.mean_div.bits
    for v in [lo, lo + 1, -1, 0, 1, hi - 1, hi] + [int(t) for t in rng.integers(lo, hi, 20_000)]:
        assert w.mean_div(v + dim * w.mean_bias_q) - w.mean_bias_q == v // dim


def test_every_layernorm_must_share_one_eps(tmp_path):
    prof = load_profile("zcu102-hls")
    model = _small()
    model.blocks[1].norm2.eps = 1e-5  # the other three keep 1e-6
    got = r"all LayerNorms must share one eps for the templates, got \[1e-06, 1e-05\]"
    with pytest.raises(EdgeAttnError, match=got):
        estimate_model(model, prof, layer=None)
    with pytest.raises(EdgeAttnError, match="share one eps"):
        generate_project(model, prof, tmp_path / "p", layer=None, vectors=1)
    assert not (tmp_path / "p").exists()
    # one layer holds only its own two: layer 0 builds, layer 1 is refused
    assert estimate_model(model, prof, layer=0)["shape"]["ln_eps"] == 1e-6
    with pytest.raises(EdgeAttnError, match="share one eps"):
        estimate_model(model, prof, layer=1)
    # a model whose LayerNorms all say 1e-5 is estimated at 1e-5 (its larger eps bounds 1/std lower)
    for norm in [b.norm1 for b in model.blocks] + [b.norm2 for b in model.blocks] + [model.norm]:
        norm.eps = 1e-5
    est = estimate_model(model, prof, layer=None)
    assert est["shape"]["ln_eps"] == 1e-5
    fmt = HLSFormats.from_profile(prof.hls)
    assert layernorm_widths(fmt, 32, 1e-5).inv < layernorm_widths(fmt, 32, 1e-6).inv


# ----------------------------------------------------------------------------------- (b) the C++ at these widths
_DRIVER = r"""
#include <cstdio>
#include "firmware/ea/ea_layernorm.h"
using namespace ea;
static act_t xb[EA_MAX_ROWS][EA_BUF_W], yb[EA_MAX_ROWS][EA_BUF_W];
int main() {
    int sets, rows, nvar;
    if (std::scanf("%d %d %d", &sets, &rows, &nvar) != 3) return 2;
    for (int t = 0; t < sets; t++) {
        araw_t g[EA_DIM], b[EA_DIM];
        for (int j = 0; j < EA_DIM; j++) { long v; std::scanf("%ld", &v); g[j] = araw_t(v); }
        for (int j = 0; j < EA_DIM; j++) { long v; std::scanf("%ld", &v); b[j] = araw_t(v); }
        for (int r0 = 0; r0 < rows; r0 += EA_MAX_ROWS) {
            int n = rows - r0 < EA_MAX_ROWS ? rows - r0 : EA_MAX_ROWS;
            for (int r = 0; r < n; r++)
                for (int j = 0; j < EA_DIM; j++) { long v; std::scanf("%ld", &v); xb[r][j] = from_raw<act_t>(v); }
            layernorm(xb, yb, n, g, b);
            for (int r = 0; r < n; r++) {
                for (int j = 0; j < EA_DIM; j++) std::printf("%ld ", (long)act_raw(yb[r][j]).to_int64());
                std::printf("\n");
            }
        }
    }
    for (int i = 0; i < nvar; i++) {
        unsigned long long v; std::scanf("%llu", &v);
        std::printf("%llu\n", (unsigned long long)ln_isqrt(ln_var_t(v)).to_uint64());
    }
    return 0;
}
"""


def _define(prj: Path, name: str) -> int:
    m = re.search(rf"#define {name} (\d+)", (prj / "firmware/parameters.h").read_text())
    assert m is not None, name
    return int(m.group(1))


def _run_driver(prj: Path, tmp: Path, rows: np.ndarray, sets, variances: list[int]) -> tuple[list, list[int]]:
    """Compile the driver against ``prj``'s headers, run ``layernorm`` on ``rows`` for each (gamma, beta) of
    ``sets`` and ``ln_isqrt`` on ``variances``; return the output rows per set and the roots."""
    src, exe = tmp / "ln_driver.cpp", tmp / "ln_driver"
    src.write_text(_DRIVER)
    cmd = ["g++", "-O1", "-std=c++14", "-w", "-I", str(find_ap_types()), "-I", str(prj), str(src), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    lines = [f"{len(sets)} {len(rows)} {len(variances)}"]
    for gamma, beta in sets:
        lines += [" ".join(map(str, gamma)), " ".join(map(str, beta))]
        lines += [" ".join(map(str, r)) for r in rows]
    lines += [str(v) for v in variances]
    proc = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.split("\n")
    n = len(rows)
    got = [np.array([[int(v) for v in out[t * n + r].split()] for r in range(n)]) for t in range(len(sets))]
    roots = [int(v) for v in out[len(sets) * n : len(sets) * n + len(variances)]]
    return got, roots


def _variances(var_w: int) -> list[int]:
    """isqrt inputs at the edges of every root bit: 4^k - 1, 4^k, 4^k + 1, and the largest the width holds."""
    vals = {0, 1, 2, 3, (1 << var_w) - 1, (1 << var_w) - 2}
    for k in range(1, (var_w + 1) // 2 + 1):
        vals |= {v for v in (4**k - 1, 4**k, 4**k + 1, (2**k - 1) ** 2) if v < (1 << var_w)}
    return sorted(vals)


@pytest.mark.parametrize(("act", "dim"), [((32, 10), 32), ((16, 6), 32), ((32, 10), 48), ((16, 6), 48)])
def test_cpp_layernorm_is_bit_exact_on_extreme_rows(tmp_path, act, dim):
    """At D = 32 the divisions by D are shifts; at D = 48 they are multiplies by ceil(2^S / 48) (div_by_dim)."""
    require_toolchain()
    fmt = HLSFormats(act_width=act[0], act_int=act[1], weight_width=16 if act[0] == 32 else 8, weight_int=2)
    prj = tmp_path / "p"
    generate_project(_small(embed_dim=dim, num_heads=dim // 16), "zcu102-hls", prj, layer=0, vectors=1, formats=fmt)
    eps = 1e-6
    assert _define(prj, "EA_DIM") == dim
    w = layernorm_widths(fmt, dim, eps)
    assert _define(prj, "EA_LN_DINV_W") == w.dinv and _define(prj, "EA_LN_SQRT_ITERS") == w.sqrt_iters
    assert _define(prj, "EA_LN_VAR_W") == w.var and _define(prj, "EA_LN_INV_W") == w.inv
    for name, div in (("MEAN", w.mean_div), ("VAR", w.var_div)):  # the divisions by D (exact: the test above)
        assert [_define(prj, f"EA_LN_{name}_DIV_{k}") for k in "NMS"] == [div.bits, div.mult, div.shift]
    rows = np.concatenate([_extreme_rows(fmt.act_width, dim), _spike_rows(fmt, dim, eps)])
    sets = _gamma_beta(fmt.act_width, dim)
    variances = _variances(w.var)
    got, roots = _run_driver(prj, tmp_path, rows, sets, variances)
    for (gamma, beta), out in zip(sets, got, strict=True):
        assert np.array_equal(out, G.layernorm(rows, gamma, beta, eps, fmt))
    assert roots == [math.isqrt(v) for v in variances]
    # one bit less for d * inv wraps the extreme rows' products: the C++ then differs (the width is needed)
    params = prj / "firmware/parameters.h"
    text = params.read_text()
    params.write_text(text.replace(f"#define EA_LN_DINV_W {w.dinv}", f"#define EA_LN_DINV_W {w.dinv - 1}"))
    # (gamma = the largest value, odd: with -2^(W-1) the wrapped bits would fall outside the output's)
    narrow, _ = _run_driver(prj, tmp_path, rows, sets[1:2], [])
    assert not np.array_equal(narrow[0], G.layernorm(rows, *sets[1], eps, fmt))


# ----------------------------------------------------------------------------------- (c) --parallel above the tokens
def test_parallel_above_the_token_count_is_clamped_and_said(tmp_path, capsys):
    net = _small()  # 17 tokens
    prj = tmp_path / "p"
    info = generate_project(net, "zcu102-hls", prj, layer=0, vectors=1, attn_parallel=40)
    assert _define(prj, "EA_ATTN_P") == 17 and info.stats["attn_parallel"] == 17
    assert info.estimate["parallelism"]["attn_parallel"] == 17
    assert info.estimate["parallelism"]["attn_parallel_requested"] == 40
    saved = json.loads((prj / "project.json").read_text())
    assert saved["estimate"]["parallelism"]["attn_parallel"] == 17 and saved["stats"]["attn_parallel_requested"] == 40
    # the estimate charges 17 slots: head_dim 16, q.k 17 * 16 * 2 DSPs (26x26), A.V 17 * 16 * 2 (8x32); the schedule
    # of 17 slots over 17 tokens: (ceil(17/17) - 1) * 34 + 16 + 17 = 33 steps, 2 heads * (2 * (33 + 8) + 42)
    assert info.estimate["dsp"]["attention_qk"] == 17 * 16 * 2 and info.estimate["dsp"]["attention_av"] == 17 * 16 * 2
    assert info.estimate["cycles"]["attention"] == 2 * (2 * (33 + 8) + 42)
    assert "attention slots P = min(attn_parallel 40, tokens 17) = 17" in info.estimate["arithmetic"]
    # the estimate-only path agrees, and asking for 17 gives the same figures
    est = estimate_model(net, "zcu102-hls", layer=0, attn_parallel=40)
    assert est["dsp"] == info.estimate["dsp"] and est["cycles"] == info.estimate["cycles"]
    same = estimate_model(net, "zcu102-hls", layer=0, attn_parallel=17)
    assert same["dsp"] == est["dsp"] and same["cycles"] == est["cycles"]
    assert same["parallelism"]["attn_parallel_requested"] == 17
    # the CLI says so in one note line; at or below the token count it says nothing
    args = ["hls", "edge_moe_vit", "--set", "embed_dim=32", "--set", "img_size=16", "--set", "num_heads=2"]
    assert main([*args, "-o", str(tmp_path / "c"), "--vectors", "1", "--parallel", "40"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.count("note:") == 1
    assert "note: --parallel 40 is more than the model's 17 tokens: the design keeps 17 query rows in flight" in out
    assert main([*args, "-o", str(tmp_path / "d"), "--vectors", "1", "--parallel", "17"]) == 0
    assert "note:" not in capsys.readouterr().out


def test_a_layernorm_too_wide_for_64_bit_divide_constants_is_refused():
    # every format HLSFormats.check accepts stays at or below 61-bit dividends (32-bit activations, D up to 65536);
    # one it refuses (27 integer bits, for the q.k accumulator) would make sum(e * e) at D = 4095 a 65-bit signed
    # value, whose constant ceil(2^S / D) the templates' 64-bit literal would silently wrap: layernorm_widths refuses
    fmt = HLSFormats(act_width=32, act_int=27)
    with pytest.raises(ValueError, match=r"floor\(n / 4095\) would take 64-bit dividends \(at most 63"):
        layernorm_widths(fmt, 4095, 1e-6)
    for dim in (4095, 4096, 65536):
        w = layernorm_widths(HLSFormats(act_width=32, act_int=15), dim, 1e-12)  # the widest check() accepts
        assert max(w.mean_div.bits, w.var_div.bits) <= 61 and w.var_div.mult < 1 << 62, dim


def test_estimate_model_checks_the_profile_formats_as_generate_project_does(tmp_path):
    # 20 integer bits of a 32-bit activation fit the profile schema, but q.k at head_dim 16 overflows the 64-bit
    # accumulator: both entry points refuse it in the same words, naming the profile field
    prof = load_profile("zcu102-hls")
    act = prof.hls.act.model_copy(update={"width": 32, "integer": 20})
    prof = prof.model_copy(update={"hls": prof.hls.model_copy(update={"act": act})})
    got = r"profile 'zcu102-hls': hls\.act\.integer too large for the 64-bit q\.k accumulator at head_dim 16"
    with pytest.raises(EdgeAttnError, match=got):
        estimate_model(_small(), prof, layer=0)
    with pytest.raises(EdgeAttnError, match=got):
        generate_project(_small(), prof, tmp_path / "p", layer=0, vectors=1)
    assert not (tmp_path / "p").exists()
