"""The accuracy gate: the fixed-point design's outputs (golden model, C simulation) against the reference model.

Figures, as ``edgeattn export``'s parity gate defines them (``edgeattn.export.parity``), over all test vectors:

* ``max_abs``: the largest absolute difference;
* ``max_abs_rel_range``: ``max_abs`` over the reference output range (``max - min``), what ``max_abs`` bounds;
* ``cosine``: the smallest per-vector cosine similarity (each vector's outputs flattened).

The gate passes when ``max_abs_rel_range <= max_abs`` and ``cosine >= min_cosine``. The defaults pass the
shipped ``zcu102-hls`` profile on ``vit_tiny`` and ``edge_moe_vit`` (one layer or the whole model, random or
real test vectors) with a margin of at least 2x, and fail weights too narrow to hold them (docs/hls.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError

__all__ = ["DEFAULT_TOLERANCE", "figures", "gate_result", "resolve_tolerance"]

# worst measured on zcu102-hls: vit_tiny, whole model, random weights and images: 0.0495 and 0.995
DEFAULT_TOLERANCE = {"max_abs": 0.1, "min_cosine": 0.99}

# the options that set each bound, for the failure messages
_OPTION = {"max_abs": "--atol", "min_cosine": "--min-cosine"}


def figures(fixed: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """``max_abs``, ``max_abs_rel_range`` and ``cosine`` (smallest per vector) of ``fixed`` against ``ref``;
    axis 0 indexes the test vectors."""
    out = np.asarray(fixed, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    n = ref.shape[0]
    o2, r2 = out.reshape(n, -1), ref.reshape(n, -1)
    max_abs = float(np.abs(o2 - r2).max(initial=0.0))
    span = float(r2.max() - r2.min()) if r2.size else 0.0
    span = span if span > 0 else max(float(np.abs(r2).max(initial=0.0)), 1e-12)
    norms = np.linalg.norm(o2, axis=1) * np.linalg.norm(r2, axis=1)
    same = np.all(o2 == r2, axis=1)
    cos = np.where(norms > 0, (o2 * r2).sum(1) / np.maximum(norms, 1e-300), same.astype(np.float64))
    if not np.all(np.isfinite(out)):
        return {"max_abs": math.inf, "max_abs_rel_range": math.inf, "cosine": 0.0}
    return {"max_abs": max_abs, "max_abs_rel_range": max_abs / span, "cosine": float(cos.min(initial=1.0))}


def resolve_tolerance(
    hls: Any = None,
    max_abs: float | None = None,
    min_cosine: float | None = None,
    names: Mapping[str, str] = _OPTION,
) -> dict[str, float]:
    """The gate's bounds: the given ones, else the profile's ``hls.tolerance`` (where its schema has one), else
    :data:`DEFAULT_TOLERANCE`. A given bound that is not a number, or any bound out of range, raises
    :class:`EdgeAttnError` naming it as ``names`` does (the CLI options by default)."""
    tol = dict(DEFAULT_TOLERANCE)
    section = getattr(hls, "tolerance", None)
    for key in tol:
        if section is not None and getattr(section, key, None) is not None:
            tol[key] = float(getattr(section, key))
    for key, value in (("max_abs", max_abs), ("min_cosine", min_cosine)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, Real):  # float("0.1") would pass a string through
            raise EdgeAttnError(f"{names[key]} must be a number, got {value!r} ({type(value).__name__})")
        tol[key] = float(value)
    if not (math.isfinite(tol["max_abs"]) and tol["max_abs"] > 0):
        raise EdgeAttnError(
            f"{names['max_abs']} must be a number > 0 (a fraction of the output range), got {tol['max_abs']:g}"
        )
    if not -1.0 <= tol["min_cosine"] <= 1.0:
        raise EdgeAttnError(f"{names['min_cosine']} must be in [-1, 1], got {tol['min_cosine']:g}")
    return tol


def gate_result(fixed: np.ndarray, ref: np.ndarray, tolerance: dict[str, float]) -> dict[str, Any]:
    """``{"tolerance", "max_abs", "max_abs_rel_range", "cosine", "passed", "failures"}``: the figures of
    ``fixed`` against ``ref`` and the verdict; each failure is one phrase naming the figure and its bound."""
    from edgeattn.export.parity import shown_beside

    fig = figures(fixed, ref)
    failures = []
    if not fig["max_abs_rel_range"] <= tolerance["max_abs"]:
        err = shown_beside(fig["max_abs_rel_range"], tolerance["max_abs"], ".3g")
        failures.append(
            f"max abs error {err} of the output range > {tolerance['max_abs']:.10g} ({_OPTION['max_abs']})"
        )
    if not fig["cosine"] >= tolerance["min_cosine"]:
        cos = shown_beside(fig["cosine"], tolerance["min_cosine"], ".6f")
        failures.append(f"cosine {cos} < {tolerance['min_cosine']:.10g} ({_OPTION['min_cosine']})")
    return {"tolerance": dict(tolerance), **fig, "passed": not failures, "failures": failures}
