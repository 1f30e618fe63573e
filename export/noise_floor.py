"""The rounding noise floor of a quantized reference: how far its output moves when only float rounding changes.

Two correct INT8 implementations of one Q/DQ graph round the same values to the same grid, except where a
float value lies within a few ulps of a rounding boundary: there the runtime's own float arithmetic (fused
ops, another summation order, FP16 compute) can land on the other side and move that element by one step
(1 LSB). How far one such flip travels is a property of the model. In a trained network it fades; in a
random-weight network it can grow layer by layer, so that two correct runtimes disagree at the logits by
more than a fixed tolerance (measured on random-weight ``fmvit_t``: one 1-LSB flip in stage 1 moved the
logits to cosine 0.909, docs/export.md).

:func:`rounding_noise_floor` measures that spread on the PyTorch reference itself. It reruns the fake-quant
model ``members`` times with every activation quantizer's input multiplied by ``1 + rel * N(0, 1)``:
``rel`` is a few ulps of the runtime's compute precision (:data:`ROUNDING_REL`), the size of the float
differences between runtimes, far below one quantization step. The floor is the worst deviation of any
member from the unperturbed reference. :func:`widen` then lets the parity gate accept a max abs error and a
cosine up to ``margin`` times the floor's, never more than ``cap`` times the profile's tolerance. Top-1
agreement keeps the profile's threshold but is counted only on the samples whose reference argmax no member
moved and whose top-1 margin the members' noise cannot cross (near-tied logits flip under rounding noise
alone), and the smallest cosine only on the samples whose reference norm stands clear of the largest per-sample
deviation (``max_norm_rel_range``; a vector near zero is turned any way by noise, see
:func:`edgeattn.export.parity.cosine_resolvable`). A well-conditioned model has a
floor of ~0 and keeps the profile's tolerance, so real failures (saturating kernels, wrong integers) still
fail; a model beyond the cap fails with a message that says it is ill-conditioned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["CAP", "MARGIN", "NEAR_ZERO", "ROUNDING_REL", "NoiseFloor", "rounding_noise_floor", "widen"]

# relative size of the float differences between two runtimes, per compute precision: 16 ulps of float32
# (a dot product of a few hundred terms summed in another order), 1 ulp of float16 / bfloat16
ROUNDING_REL = {"fp32": 2.0**-20, "fp16": 2.0**-11, "bf16": 2.0**-8}
MARGIN = 2.0  # accept up to this multiple of the floor ...
CAP = 4.0  # ... but never more than this multiple of the profile's tolerance
NEAR_ZERO = 0.25  # a sample's cosine may be left out only below this fraction of the batch's median output norm


@dataclass(frozen=True)
class NoiseFloor:
    """Worst deviation of ``members`` rounding-perturbed reference runs from the unperturbed reference."""

    compute: str
    rel: float
    members: int
    max_abs_rel_range: float
    cosine: float
    top1: float
    # per sample: no member moved the reference's argmax (at any position) and, for a classifier, its top-1 margin
    # is beyond twice the largest logit move a member showed on it (:func:`_margin_clear`)
    top1_stable: tuple[bool, ...]
    max_norm_rel_range: float = 0.0  # largest per-sample norm of a member's deviation, over the output range
    sample_cosine: tuple[float, ...] = ()  # per sample: the smallest cosine of any member (``cosine`` is their min)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for report.json."""
        return asdict(self)


def _act_quant_proxies(model: Any) -> list[Any]:
    try:
        from brevitas.proxy.runtime_quant import ActQuantProxyFromInjector
    except ImportError:  # no brevitas: no quantizers to perturb
        return []
    return [m for m in model.modules() if isinstance(m, ActQuantProxyFromInjector)]


def rounding_noise_floor(
    model: Any,
    inputs: np.ndarray,
    reference: np.ndarray,
    *,
    compute: str = "fp32",
    members: int = 4,
    seed: int = 0,
) -> NoiseFloor | None:
    """The rounding noise floor of ``model`` (a brevitas fake-quant module) on ``inputs``.

    ``reference`` is the model's unperturbed output on ``inputs``; ``compute`` (``fp32``/``fp16``/``bf16``)
    is the float precision the runtime under test computes in. Returns None for a model without activation
    quantizers (a float model has no rounding grid to flip across).
    """
    import torch
    from edgeattn.export.parity import _cosines, _metrics, _span, reference_outputs, top1_per_sample

    proxies = _act_quant_proxies(model)
    if not proxies:
        return None
    if compute not in ROUNDING_REL:
        raise ValueError(f"compute must be one of {', '.join(ROUNDING_REL)}, got '{compute}'")
    rel = ROUNDING_REL[compute]
    worst = {"max_abs_rel_range": 0.0, "cosine": 1.0, "top1": 1.0, "max_norm_rel_range": 0.0}
    ref64 = np.asarray(reference, dtype=np.float64)
    n = len(ref64)
    stable = np.ones(len(reference), dtype=bool)
    sample_cos = np.ones(len(reference))
    sample_dev = np.zeros(len(reference))  # per sample: the largest element deviation of any member
    for k in range(members):
        gen = torch.Generator().manual_seed(seed + k)

        def nudge(_module: Any, args: tuple[Any, ...], gen: Any = gen) -> tuple[Any, ...] | None:
            x = args[0]
            if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
                return None
            noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
            return (x * (1.0 + rel * noise), *args[1:])

        hooks = [p.register_forward_pre_hook(nudge) for p in proxies]
        try:
            out = reference_outputs(model, inputs)
        finally:
            for h in hooks:
                h.remove()
        m = _metrics(reference, out)
        worst["max_abs_rel_range"] = max(worst["max_abs_rel_range"], m["max_abs_rel_range"])
        worst["cosine"] = min(worst["cosine"], m["cosine"])
        worst["top1"] = min(worst["top1"], m["top1"])
        out64 = np.asarray(out, dtype=np.float64)
        moved = (out64 - ref64).reshape(n, -1)  # this member's deviation, per sample
        dev = np.linalg.norm(moved, axis=1)
        worst["max_norm_rel_range"] = max(worst["max_norm_rel_range"], float(dev.max(initial=0.0)) / _span(ref64))
        stable &= top1_per_sample(reference, out) == 1.0
        sample_cos = np.minimum(sample_cos, _cosines(ref64, out64))
        sample_dev = np.maximum(sample_dev, np.abs(moved).max(axis=1, initial=0.0))
    stable &= _margin_clear(ref64, sample_dev)
    return NoiseFloor(
        compute=compute,
        rel=rel,
        members=members,
        top1_stable=tuple(bool(s) for s in stable),
        sample_cosine=tuple(float(c) for c in sample_cos),
        **worst,
    )


def _margin_clear(reference: np.ndarray, deviation: np.ndarray) -> np.ndarray:
    """Per sample of a classifier output (N, classes): whether its top-1 margin exceeds twice ``deviation``, the
    largest logit move the members showed on it (both logits can move that far). A few members can miss a flip
    that a runtime's rounding makes: on random-weight MobileNet-V2-ULSAM INT8 no member of 16 moved a sample whose
    margin was 0.02 with logits moving 0.15 under noise, and ONNX Runtime flipped it. Outputs with several
    positions per sample (language models) keep the members' verdict alone: one near tie among hundreds of
    positions would leave no sample to count."""
    if reference.ndim != 2 or reference.shape[1] < 2:
        return np.ones(len(reference), dtype=bool)
    top2 = np.sort(reference, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) > 2.0 * deviation


def widen(
    tolerance: dict[str, float], floor: NoiseFloor | None, margin: float = MARGIN, cap: float = CAP
) -> tuple[dict[str, float], bool]:
    """``tolerance``'s ``max_abs`` and ``min_cosine`` widened to ``margin`` x the floor, at most ``cap`` x the
    original (``min_top1_agreement`` is kept); returns (the tolerance to apply, whether the cap limited it)."""
    if floor is None:
        return dict(tolerance), False
    # each figure as a distance from perfect agreement: error, 1 - cosine
    pairs = {
        "max_abs": (tolerance["max_abs"], floor.max_abs_rel_range),
        "min_cosine": (1.0 - tolerance["min_cosine"], 1.0 - floor.cosine),
    }
    out = dict(tolerance)
    capped = False
    for key, (allowed, measured) in pairs.items():
        wanted = max(allowed, margin * measured)
        limit = cap * allowed
        capped |= wanted > limit
        dist = min(wanted, limit)
        out[key] = dist if key == "max_abs" else max(0.0, 1.0 - dist)
    return out, capped
