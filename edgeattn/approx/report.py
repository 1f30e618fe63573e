"""Accuracy report of every softmax/GELU method, float and fixed point, against float64 references.

Input distributions (fixed seeds, documented in docs/approx.md):

- softmax: attention-like score rows of lengths :data:`SOFTMAX_LENGTHS` at score standard deviations
  :data:`SOFTMAX_SCALES`; per (length, scale) 64 rows of ``scale * N(0, 1)`` of which half get one "attended"
  key raised by ``3 * scale`` (peaked rows). Scores are first quantized to the fixed-point input format so the
  float and fixed-point versions see the same values; the reference is float64 softmax of those values.
- GELU: every representable input of the fixed-point input format in [-8, 8] (the error curve), and a
  "realistic" activation sample: 100,000 draws of 0.9 N(0, 1) + 0.1 N(0, 3^2) (pre-GELU MLP activations
  have a unit-scale body and heavy tails), clipped to the format's range.

Float versions run in float32 (as inside a model); fixed-point ones are the integer models of
:mod:`edgeattn.approx.fixed_methods`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np

from edgeattn.approx import float_ops as fo
from edgeattn.approx.fixed import FixedFormat
from edgeattn.atomic import atomic_path

SOFTMAX_LENGTHS: tuple[int, ...] = (16, 64, 197, 512)
SOFTMAX_SCALES: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
ROWS_PER_CASE = 64
GELU_RANGE = 8.0
GELU_REAL_SAMPLES = 100_000


# Cost per element (docs/approx.md): multiplies in the float form and in the integer model (shifts, adds,
# compares, clips and multiplies by powers of two are free), other operations, and table bytes. Per-row work
# (the max, the sum, one reciprocal or division) is not counted.
def _cost(float_mults: int, int_mults: int | None, other: str, table_bytes: int = 0) -> dict[str, Any]:
    return {"float_mults": float_mults, "int_mults": int_mults, "other": other, "table_bytes": table_bytes}


COSTS: dict[tuple[str, str], dict[str, Any]] = {
    ("softmax", "exact"): _cost(1, None, "exp"),
    ("softmax", "online"): _cost(1, 5, "exp (int: 2 table reads per exp, +1 multiply on a new max)", 2048),
    ("softmax", "ibert"): _cost(5, 3, "none"),
    ("softmax", "shift"): _cost(3, 1, "none"),
    ("softmax", "base2"): _cost(3, 3, "none", 27),
    ("gelu", "exact"): _cost(2, None, "erf"),
    ("gelu", "tanh"): _cost(5, 8, "tanh (int: exp + 1 division)"),
    ("gelu", "edgemoe"): _cost(2, 1, "1 table read pair", 354),
    ("gelu", "edgemoe_mm"): _cost(2, 1, "1 table read pair", 354),
    ("gelu", "ibert"): _cost(5, 3, "none"),
    ("gelu", "sigmoid"): _cost(2, 5, "exp + divide (int: exp + 1 division)"),
    ("gelu", "respoly"): _cost(4, 4, "none"),
}


@dataclass(frozen=True)
class ReportBits:
    """Fixed-point widths used by the report (``--bits``).

    ``softmax_in``: signed score width, with ``softmax_in - 8`` fraction bits (range [-128, 128));
    ``softmax_out``: unsigned probability bits, all fractional (1.0 saturates to ``1 - 2^-out``);
    ``gelu_in``: signed GELU input width with ``gelu_in - 5`` fraction bits (range [-16, 16));
    ``gelu_out_frac``: GELU output fraction bits (the Edge-MoE table has 16).
    """

    softmax_in: int = 16
    softmax_out: int = 8
    gelu_in: int = 16
    gelu_out_frac: int = 16

    def __post_init__(self) -> None:
        if not 10 <= self.softmax_in <= 32:
            raise ValueError(
                f"softmax input bits must be in 10..32 (8 integer bits + >= 2 fraction), got "
                f"{self.softmax_in}"
            )
        if not 2 <= self.softmax_out <= 24:
            raise ValueError(f"softmax output bits must be in 2..24, got {self.softmax_out}")
        if not 10 <= self.gelu_in <= 20:
            raise ValueError(
                f"GELU input bits must be in 10..20 (5 integer bits, >= 5 fraction), got {self.gelu_in}"
            )
        if not 8 <= self.gelu_out_frac <= 24:
            raise ValueError(f"GELU output fraction bits must be in 8..24, got {self.gelu_out_frac}")

    @property
    def softmax_fmt(self) -> FixedFormat:
        return FixedFormat(self.softmax_in, self.softmax_in - 8, True)

    @property
    def gelu_fmt(self) -> FixedFormat:
        return FixedFormat(self.gelu_in, self.gelu_in - 5, True)


def parse_bits(text: str | None) -> ReportBits:
    """Parse ``--bits``: ``"IN,OUT"`` (softmax) or ``"IN,OUT,GIN,GOUT"`` (softmax then GELU)."""
    if text is None or text == "":
        return ReportBits()
    parts = [v.strip() for v in text.split(",")]
    # ASCII digits only: int() would also take '1_6' and other scripts' digits ('١٦' as 16)
    if not all(re.fullmatch(r"[0-9]+", v) for v in parts):
        raise ValueError(
            f"--bits must be integers 'IN,OUT' or 'IN,OUT,GELU_IN,GELU_OUT_FRAC', got {text!r}"
        )
    vals = [int(v) for v in parts]
    if len(vals) not in (2, 4):
        raise ValueError(f"--bits takes 2 or 4 comma-separated integers, got {text!r}")
    return ReportBits(*vals)


# -------------------------------------------------------------------------------------------------- data
def softmax_cases(fmt: FixedFormat, seed: int = 0) -> list[tuple[int, float, np.ndarray]]:
    """``(length, scale, int scores (rows, length))`` for the softmax distribution."""
    rng = np.random.default_rng(seed)
    cases = []
    for n in SOFTMAX_LENGTHS:
        for sc in SOFTMAX_SCALES:
            s = sc * rng.standard_normal((ROWS_PER_CASE, n))
            hot = rng.integers(0, n, ROWS_PER_CASE // 2)
            s[np.arange(ROWS_PER_CASE // 2), hot] += 3.0 * sc
            cases.append((n, sc, fmt.quantize(s)))
    return cases


def gelu_inputs(fmt: FixedFormat, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(grid, realistic)`` integer GELU inputs (see module docstring)."""
    lim = int(GELU_RANGE * 2**fmt.frac)
    grid = np.arange(max(-lim, fmt.min_int), min(lim, fmt.max_int) + 1, dtype=np.int64)
    rng = np.random.default_rng(seed)
    wide = rng.random(GELU_REAL_SAMPLES) < 0.1
    x = rng.standard_normal(GELU_REAL_SAMPLES) * np.where(wide, 3.0, 1.0)
    return grid, fmt.quantize(x)


def _softmax64(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _gelu64(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * np.vectorize(math.erfc)(-x / math.sqrt(2.0))


def _kl(p: np.ndarray, q: np.ndarray, floor: float) -> float:
    """Mean over rows of KL(p || q). An output 0 stands for "below half an LSB": it is replaced by
    ``min(p, floor)`` (the most favourable value it may round from) and ``q`` is renormalised."""
    q = np.where(q <= 0, np.minimum(p, floor), q)
    q = q / q.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return max(0.0, float(np.mean(terms.sum(axis=-1))))


# ------------------------------------------------------------------------------------------------ report
def softmax_records(bits: ReportBits, seed: int = 0, progress: Any = None) -> list[dict[str, Any]]:
    """One record per (softmax, method, repr) over the softmax distribution."""
    import torch

    from edgeattn.approx.fixed_methods import softmax_fixed

    fmt = bits.softmax_fmt
    lsb = 2.0**-bits.softmax_out
    cases = softmax_cases(fmt, seed)
    records = []
    for method in fo.SOFTMAX_METHODS:
        for repr_ in ("float", "fixed"):
            errs, sums, kls, per_case, n_el = [], [], [], [], 0
            err_sum = 0.0
            for n, sc, q in cases:
                x = fmt.dequantize(q)
                ref = _softmax64(x)
                if repr_ == "float":
                    y = fo.softmax(torch.tensor(x, dtype=torch.float32), method=method).double().numpy()
                    floor = 1e-30
                else:
                    y = softmax_fixed(q, fmt, method, bits.softmax_out) * lsb
                    floor = lsb / 2
                e = np.abs(y - ref)
                errs.append(float(e.max()))
                err_sum += float(e.sum())
                n_el += e.size
                sums.append(float(np.abs(y.sum(-1) - 1.0).max()))
                kls.append(_kl(ref, y, floor))
                per_case.append({"length": n, "scale": sc, "max_abs_err": float(e.max())})
                if progress is not None:
                    progress()
            rec = {
                "op": "softmax",
                "method": method,
                "repr": repr_,
                "max_abs_err": max(errs),
                "mean_abs_err": err_sum / n_el,
                "worst_row_sum_dev": max(sums),
                "kl_div": float(np.mean(kls)),
                "cases": per_case,
                "cost": COSTS[("softmax", method)],
            }
            if repr_ == "fixed":
                rec.update(
                    {
                        "in_format": str(fmt),
                        "out_bits": bits.softmax_out,
                        "max_abs_err_lsb": max(errs) / lsb,
                        "worst_row_sum_dev_lsb": max(sums) / lsb,
                    }
                )
            records.append(rec)
    return records


def gelu_records(bits: ReportBits, seed: int = 0, progress: Any = None) -> tuple[list[dict[str, Any]], dict]:
    """One record per (gelu, method, repr), and the error curves ``{method: {repr: (x, err)}}``."""
    import torch

    from edgeattn.approx.fixed_methods import gelu_fixed

    fmt = bits.gelu_fmt
    out_lsb = 2.0**-bits.gelu_out_frac
    grid, real = gelu_inputs(fmt, seed)
    xs = {"grid": fmt.dequantize(grid), "real": fmt.dequantize(real)}
    refs = {k: _gelu64(v) for k, v in xs.items()}
    ints = {"grid": grid, "real": real}
    records, curves = [], {}
    for method in fo.GELU_METHODS:
        curves[method] = {}
        for repr_ in ("float", "fixed"):
            res = {}
            for k in ("grid", "real"):
                if repr_ == "float":
                    y = fo.gelu(torch.tensor(xs[k], dtype=torch.float32), method=method).double().numpy()
                else:
                    y = gelu_fixed(ints[k], fmt, method, bits.gelu_out_frac) * out_lsb
                res[k] = np.abs(y - refs[k])
            curves[method][repr_] = (xs["grid"], res["grid"])
            rec = {
                "op": "gelu",
                "method": method,
                "repr": repr_,
                "max_abs_err": float(res["grid"].max()),
                "mean_abs_err": float(res["grid"].mean()),
                "range": [-GELU_RANGE, GELU_RANGE],
                "realistic": {
                    "max_abs_err": float(res["real"].max()),
                    "mean_abs_err": float(res["real"].mean()),
                },
                "cost": COSTS[("gelu", method)],
            }
            if repr_ == "fixed":
                rec.update({"in_format": str(fmt), "out_frac": bits.gelu_out_frac, "table_frac": 16})
            records.append(rec)
            if progress is not None:
                progress()
    return records, curves


def build_report(bits: ReportBits | None = None, seed: int = 0, progress: Any = None) -> dict[str, Any]:
    """The whole report: ``{"bits", "distribution", "records"}`` (+ ``_curves`` for plotting)."""
    bits = bits or ReportBits()
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"argument 'seed' must be a non-negative integer, got {seed!r}")
    sm = softmax_records(bits, seed, progress)
    gl, curves = gelu_records(bits, seed, progress)
    return {
        "bits": {
            "softmax_in": str(bits.softmax_fmt),
            "softmax_out_bits": bits.softmax_out,
            "gelu_in": str(bits.gelu_fmt),
            "gelu_out_frac": bits.gelu_out_frac,
        },
        "distribution": {
            "softmax": {
                "lengths": list(SOFTMAX_LENGTHS),
                "scales": list(SOFTMAX_SCALES),
                "rows_per_case": ROWS_PER_CASE,
                "description": "scale*N(0,1) scores, half the rows with one key raised by 3*scale",
            },
            "gelu": {
                "grid": f"every representable input in [-{GELU_RANGE}, {GELU_RANGE}]",
                "realistic": f"{GELU_REAL_SAMPLES} draws of 0.9 N(0,1) + 0.1 N(0,9)",
            },
            "seed": seed,
        },
        "records": sm + gl,
        "_curves": curves,
    }


def progress_steps() -> int:
    """Number of progress callbacks :func:`build_report` makes."""
    return len(fo.SOFTMAX_METHODS) * 2 * len(SOFTMAX_LENGTHS) * len(SOFTMAX_SCALES) + len(fo.GELU_METHODS) * 2


def plot_report(report: dict[str, Any], path: str) -> None:
    """GELU error curves per method (float and fixed) and a softmax error summary, as a PNG (atomic write)."""
    from pathlib import Path

    from matplotlib.figure import Figure  # not pyplot: the caller's backend and figure list stay untouched

    curves = report["_curves"]
    fig = Figure(figsize=(17, 5))
    axes = fig.subplots(1, 3)
    colors = {m: f"C{i}" for i, m in enumerate(curves)}
    for ax, repr_ in zip(axes[:2], ("float", "fixed"), strict=False):
        for method, by_repr in curves.items():
            if method == "exact" and repr_ == "float":
                continue  # torch's erf GELU vs float64: only float32 rounding
            x, err = by_repr[repr_]
            ax.semilogy(x, np.maximum(err, 1e-9), lw=0.8, color=colors[method], label=method)
        ax.set_title(f"GELU |error| vs float64, {repr_}")
        ax.set_xlabel("x")
        ax.set_ylim(1e-9, 1e-1)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    recs = [r for r in report["records"] if r["op"] == "softmax"]
    methods = list(dict.fromkeys(r["method"] for r in recs))
    pos = np.arange(len(methods))
    for k, repr_ in enumerate(("float", "fixed")):
        vals = [
            next(r["max_abs_err"] for r in recs if r["method"] == m and r["repr"] == repr_) for m in methods
        ]
        axes[2].bar(pos + (k - 0.5) * 0.38, np.maximum(vals, 1e-9), width=0.38, label=f"{repr_} max |err|")
    axes[2].set_yscale("log")
    axes[2].set_xticks(pos, methods)
    axes[2].set_title(
        f"softmax max |error| vs float64 ({report['bits']['softmax_in']} in, "
        f"{report['bits']['softmax_out_bits']}-bit out)"
    )
    axes[2].axhline(
        2.0 ** -report["bits"]["softmax_out_bits"], color="k", ls="--", lw=0.8, label="1 output LSB"
    )
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
