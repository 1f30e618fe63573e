"""The parity gate: an exported artifact, run in its own runtime, against the PyTorch reference.

Figures per comparison (outputs flattened per sample, all inputs pooled):

* ``max_abs``: largest absolute difference;
* ``max_abs_rel_range``: ``max_abs`` divided by the reference output range (``max - min``); this is
  what the profile's ``tolerance.max_abs`` bounds, so one threshold works for logits of any scale;
* ``max_rel``: largest ``|a - r| / max(|r|, 1e-3 * range)`` (the floor keeps near-zeros from dominating);
* ``cosine``: the smallest per-sample cosine similarity; with a noise floor, only over the samples whose
  reference is far enough from zero for the cosine to mean anything (:func:`cosine_resolvable`):
  ``cosine_samples`` of ``cosine_of`` samples (all of them without a floor);
* ``top1``: fraction of samples whose argmax over the last axis agrees (every position for sequence
  outputs); with a noise floor, only over the samples whose argmax the floor found stable: ``top1_samples`` of
  ``top1_of`` samples (all of them without a floor).

A gate passes when ``max_abs_rel_range <= max_abs``, ``cosine >= min_cosine`` and
``top1 >= min_top1_agreement``. For a quantized model the gate can be given the reference's rounding noise
floor (:mod:`edgeattn.export.noise_floor`): the thresholds then widen to twice the spread the reference itself
shows when only float rounding changes, at most four times the profile's.

ONNX models can be bisected: :func:`first_diverging_node` adds single
intermediate outputs and binary-searches the topological order of the data path (constant weight chains
left out) for the first node whose value in the runtime under test departs from ONNX Runtime with graph
optimisations disabled, then walks upstream while an input of that node departs too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError

__all__ = [
    "ParityResult",
    "compare_outputs",
    "cosine_resolvable",
    "first_diverging_node",
    "ort_reference_session",
    "reference_outputs",
    "run_batched",
    "run_ort",
    "top1_per_sample",
    "worst_batch",
]


@dataclass
class ParityResult:
    """Outcome of one parity comparison."""

    runtime: str
    reference: str
    n_inputs: int
    max_abs: float
    max_abs_rel_range: float
    max_rel: float
    cosine: float
    top1: float
    tolerance: dict[str, float]
    passed: bool
    failures: list[str] = field(default_factory=list)
    first_diverging_node: dict[str, Any] | None = None
    note: str = ""
    profile_tolerance: dict[str, float] | None = None  # before widening by the noise floor
    noise_floor: dict[str, Any] | None = None
    passed_profile_tolerance: bool | None = None  # set where a noise floor widened the tolerance
    top1_samples: int | None = None  # samples ``top1`` is computed over (the stable ones, with a noise floor)
    top1_of: int | None = None  # samples compared in all
    cosine_samples: int | None = None  # samples ``cosine`` is the smallest over (see cosine_resolvable)
    cosine_of: int | None = None  # samples compared in all

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for report.json."""
        return asdict(self)


def _span(ref: np.ndarray) -> float:
    """The reference's output range (``max - min``; its largest magnitude for a constant output)."""
    span = float(ref.max() - ref.min()) if ref.size else 0.0
    return span if span > 0 else max(float(np.abs(ref).max(initial=0.0)), 1e-12)


def _cosines(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of the flattened outputs (1 where either is all zeros, 0 everywhere when
    the artifact has a non-finite value)."""
    n = ref.shape[0] if ref.ndim else 1
    r2, o2 = ref.reshape(n, -1), out.reshape(n, -1)
    if not np.all(np.isfinite(o2)):
        return np.zeros(n)
    norms = np.linalg.norm(r2, axis=1) * np.linalg.norm(o2, axis=1)
    return np.where(norms > 0, (r2 * o2).sum(1) / np.maximum(norms, 1e-300), 1.0)


def _metrics(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape}, artifact {out.shape}")
    diff = np.abs(out - ref)
    span = _span(ref)
    max_abs = float(diff.max(initial=0.0))
    floor = 1e-3 * span
    max_rel = float((diff / np.maximum(np.abs(ref), floor)).max(initial=0.0))
    cos = _cosines(ref, out)
    if not np.all(np.isfinite(out)):
        max_abs = max_rel = float("inf")
    top1 = float(top1_per_sample(ref, out).mean())
    return {
        "max_abs": max_abs,
        "max_abs_rel_range": max_abs / span,
        "max_rel": max_rel,
        "cosine": float(cos.min(initial=1.0)),
        "top1": top1,
    }


def cosine_resolvable(reference: np.ndarray, floor: Any, min_cosine: float) -> np.ndarray:
    """Per sample (axis 0): whether its cosine can tell a fault from the rounding noise ``floor`` measured.

    An error of norm ``d`` turns a vector of norm ``|r|`` by at most ``asin(d / |r|)``, so rounding noise of
    the size the gate accepts, ``d = MARGIN * floor.max_norm_rel_range * range``, can by itself push the cosine
    of any sample with ``|r| * sqrt(1 - min_cosine**2) < d`` below ``min_cosine`` (the profile's). Such a
    sample is left out of the smallest cosine when it is also near zero for its batch,
    ``|r| < NEAR_ZERO * median |r|``; so at least half the samples always count, and an ill-conditioned model
    cannot talk its way out of the cosine.
    """
    from edgeattn.export.noise_floor import MARGIN, NEAR_ZERO

    ref = np.asarray(reference, dtype=np.float64)
    n = ref.shape[0] if ref.ndim else 1
    norms = np.linalg.norm(ref.reshape(n, -1), axis=1)
    noise = MARGIN * float(floor.max_norm_rel_range) * _span(ref)
    c = min(max(float(min_cosine), 0.0), 1.0)
    turn = np.sqrt(1.0 - c * c)
    reach = noise / turn if turn > 0 else np.inf  # the smallest norm noise cannot turn past min_cosine
    near_zero = norms < NEAR_ZERO * float(np.median(norms))
    return ~((norms < reach) & near_zero) if noise > 0 else np.ones(n, dtype=bool)


def top1_per_sample(reference: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per sample (axis 0): the fraction of positions whose argmax over the last axis agrees (1 or 0 for
    one prediction per sample; all ones for outputs without a class axis)."""
    ref, out = np.asarray(reference), np.asarray(out)
    if ref.ndim < 2:
        return np.ones(max(len(ref), 1) if ref.ndim else 1)
    same = ref.argmax(-1) == out.argmax(-1)
    return same.reshape(len(ref), -1).mean(axis=1)


def compare_outputs(
    reference: np.ndarray,
    artifact: np.ndarray,
    tolerance: Any,
    *,
    runtime: str,
    reference_name: str = "pytorch",
    noise_floor: Any = None,
    atol_given: bool = False,
) -> ParityResult:
    """Compare two stacked outputs (samples on axis 0) against a profile ``Tolerance``, widened by
    ``noise_floor`` (a :class:`~edgeattn.export.noise_floor.NoiseFloor`) when one is given. ``atol_given``: the
    tolerance's ``max_abs`` is the caller's ``--atol``, not the profile's (failure messages name it)."""
    from edgeattn.export.noise_floor import widen

    profile_tol = {
        "max_abs": float(tolerance.max_abs),
        "min_cosine": float(tolerance.min_cosine),
        "min_top1_agreement": float(tolerance.min_top1_agreement),
    }
    floor = noise_floor
    if noise_floor is not None:  # near-zero samples neither widen the cosine bound nor are judged by it
        clear = cosine_resolvable(reference, noise_floor, profile_tol["min_cosine"])
        if len(noise_floor.sample_cosine) == len(clear):
            floor = replace(noise_floor, cosine=float(np.asarray(noise_floor.sample_cosine)[clear].min(initial=1.0)))
    tol, capped = widen(profile_tol, floor)
    m = _metrics(reference, artifact)
    strict = not _failures(m, profile_tol)  # the verdict at the profile's tolerance, top-1 over all samples
    n = int(np.asarray(reference).shape[0])
    counted = cos_counted = n
    if noise_floor is not None:  # top-1 only where rounding noise does not move the reference's argmax
        stable = np.asarray(noise_floor.top1_stable, dtype=bool)
        per_sample = top1_per_sample(reference, artifact)
        m["top1"] = float(per_sample[stable].mean()) if stable.any() else 1.0
        counted = int(stable.sum())
        # ... and the cosine only where the reference stands clear of that noise (max abs still sees every sample)
        cos = _cosines(np.asarray(reference, dtype=np.float64), np.asarray(artifact, dtype=np.float64))
        m["cosine"] = float(cos[clear].min(initial=1.0))
        cos_counted = int(clear.sum())
    failures = _failures(m, tol, cos_counted, n)
    if failures and capped:
        failures.append(_capped_message(profile_tol, floor, atol_given))
    widened = noise_floor is not None
    return ParityResult(
        runtime=runtime,
        reference=reference_name,
        n_inputs=n,
        tolerance=tol,
        passed=not failures,
        failures=failures,
        profile_tolerance=profile_tol if widened else None,
        noise_floor=floor.to_dict() if widened else None,  # its cosine: over the samples clear of noise
        passed_profile_tolerance=strict if widened else None,
        top1_samples=counted,
        top1_of=n,
        cosine_samples=cos_counted,
        cosine_of=n,
        **m,
    )


def _capped_message(tol: dict[str, float], floor: Any, atol_given: bool) -> str:
    """Why widening by the noise floor stopped at its cap: each tolerance that the reference's own float-rounding
    noise exceeds by more than the cap, named by where it came from (the profile, or the caller's --atol)."""
    from edgeattn.export.noise_floor import CAP, MARGIN

    abs_capped = MARGIN * floor.max_abs_rel_range > CAP * tol["max_abs"]
    cos_capped = MARGIN * (1.0 - floor.cosine) > CAP * (1.0 - tol["min_cosine"])
    source = "your --atol" if atol_given else "the profile's max_abs"
    parts = []
    if abs_capped:
        parts.append(f"its max abs error beyond {CAP:g}x {source} {tol['max_abs']:g}")
    if cos_capped:
        parts.append(f"its 1 - cosine beyond {CAP:g}x the profile's {1.0 - tol['min_cosine']:g}")
    if atol_given and not cos_capped:
        verdict = "your --atol is tighter than the reference's own float-rounding noise (pass a larger one)"
    else:
        verdict = "the reference itself is ill-conditioned at this precision"
    return (
        f"{verdict}: float-rounding noise alone moves {' and '.join(parts)} (noise floor: max abs "
        f"{floor.max_abs_rel_range:.3g}, cosine {floor.cosine:.6f})"
    )


def shown_beside(value: float, bound: float, spec: str) -> str:
    """``value`` formatted with ``spec``, with more significant digits where ``spec`` would print it equal to
    ``bound`` or on its other side (a cosine of 0.99999965 against 1 is ``0.9999996``, not ``1.000000``)."""
    text = format(value, spec)
    for digits in range(7, 18):
        shown = float(text)
        if shown != bound and (shown > bound) == (value > bound):
            return text
        text = format(value, f".{digits}g")
    return repr(float(value))


def _failures(m: dict[str, float], tol: dict[str, float], cos_counted: int = 0, n: int = 0) -> list[str]:
    failures = []
    if not m["max_abs_rel_range"] <= tol["max_abs"]:
        err = shown_beside(m["max_abs_rel_range"], tol["max_abs"], ".3g")
        failures.append(f"max abs error {err} of the output range > {tol['max_abs']:.10g}")
    if not m["cosine"] >= tol["min_cosine"]:
        over = f" (over {cos_counted}/{n} samples clear of the rounding noise)" if cos_counted < n else ""
        cos = shown_beside(m["cosine"], tol["min_cosine"], ".6f")
        failures.append(f"cosine {cos} < {tol['min_cosine']:.10g}{over}")
    if not m["top1"] >= tol["min_top1_agreement"]:
        top1 = shown_beside(m["top1"], tol["min_top1_agreement"], ".3f")
        failures.append(f"top-1 agreement {top1} < {tol['min_top1_agreement']:.10g}")
    return failures


def worst_batch(
    reference: np.ndarray, artifact: np.ndarray, batch: int, tolerance: Any, cosine_counted: np.ndarray | None = None
) -> slice:
    """The ``batch`` consecutive inputs (one static batch, aligned to ``batch``) that hold the input whose output
    misses ``tolerance`` the most: its max abs error over the pooled output range, or its ``1 - cosine``, each
    measured in units of what the tolerance allows (non-finite outputs count as the worst). ``cosine_counted``
    (per sample, :func:`cosine_resolvable`): the samples whose cosine the gate judged; the others are scored by
    their error alone."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(artifact, dtype=np.float64)
    n = len(ref)
    r2, o2 = ref.reshape(n, -1), out.reshape(n, -1)
    err = np.abs(o2 - r2).max(axis=1) / _span(ref) / max(float(tolerance.max_abs), 1e-300)
    norms = np.linalg.norm(r2, axis=1) * np.linalg.norm(o2, axis=1)
    cos = np.where(norms > 0, (r2 * o2).sum(1) / np.maximum(norms, 1e-300), 1.0)
    miss = (1.0 - cos) / max(1.0 - float(tolerance.min_cosine), 1e-300)
    if cosine_counted is not None:
        miss = np.where(np.asarray(cosine_counted, dtype=bool), miss, 0.0)
    score = np.where(np.isfinite(o2).all(axis=1), np.maximum(err, miss), np.inf)
    start = (int(np.argmax(score)) // batch) * batch
    return slice(start, min(start + batch, n))


def run_batched(fn: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, batch: int) -> np.ndarray:
    """Run ``fn`` over ``inputs`` in chunks of ``batch`` (the artifact's static batch); stack the outputs."""
    if len(inputs) == 0:  # export_model refuses this up front; a direct caller gets a clear message too
        raise ValueError("run_batched needs at least one input (fewer parity inputs than one static batch?)")
    outs = [np.asarray(fn(inputs[i : i + batch])) for i in range(0, len(inputs), batch)]
    return np.concatenate(outs, axis=0)


def ort_reference_session(model_bytes: bytes, threads: int = 2):
    """An ONNX Runtime CPU session with every graph optimisation disabled (the exact second reference:
    fused int8 paths such as QGemm can saturate on CPUs without VNNI, as measured on an AVX2 host)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def run_ort(session, x: np.ndarray) -> np.ndarray:
    """Run the single-input, first-output ONNX Runtime ``session`` on ``x``."""
    name = session.get_inputs()[0].name
    return session.run([session.get_outputs()[0].name], {name: x})[0]


def _with_output(model, name: str):
    """A copy of an ONNX model whose only graph output is the float tensor ``name``."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return copy


def _input_dependent(model) -> set[str]:
    """Names of the tensors whose value depends on a graph input (the data path; weight chains such as an int8
    initializer's DequantizeLinear are the same for every input and are left out)."""
    inits = {i.name for i in model.graph.initializer}
    live = {i.name for i in model.graph.input if i.name not in inits}
    for node in model.graph.node:
        if any(i in live for i in node.input):
            live.update(o for o in node.output if o)
    return live


def _float_outputs(model) -> list[tuple[str, str]]:
    """(tensor name, node name) of every node output on the data path that holds a float value, in topological
    order. Constant sub-graphs (a weight's DequantizeLinear) are left out: their value does not depend on the
    input, so a bisection landing on one would learn nothing about the data path and skip past the divergence."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.output})
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    skip = {"Constant", "Shape", "QuantizeLinear"}
    live = _input_dependent(model)
    return [
        (out, node.name or node.op_type)
        for node in model.graph.node
        if node.op_type not in skip
        for out in node.output[:1]
        if types.get(out) in floats and out in live
    ]


def _float_parents(model, tensor: str, candidates: set[str]) -> list[str]:
    """The candidate tensors nearest upstream of ``tensor``: its producer's inputs that are candidates, looking
    through producers whose outputs are not (a QuantizeLinear's int8 output, Shape) to their own inputs."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found: list[str] = []
    seen: set[str] = set()
    stack = [i for i in producer[tensor].input if i] if tensor in producer else []
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in candidates:
            found.append(name)
        elif name in producer:
            stack.extend(i for i in producer[name].input if i)
    return found


def first_diverging_node(
    model,
    x: np.ndarray,
    run_candidate: Callable[[Any, np.ndarray], np.ndarray],
    tolerance: Any,
    *,
    max_steps: int = 12,
    cosine_samples: np.ndarray | None = None,
) -> dict[str, Any] | None:
    """Bisect ``model`` (ONNX) for the first node whose output in ``run_candidate`` leaves ``tolerance``.

    ``run_candidate(model_with_one_output, x)`` runs the runtime under test; the reference is ONNX
    Runtime without graph optimisations on the same one-output model. Only tensors on the data path are
    probed (:func:`_float_outputs`). Assumes divergence persists downstream once it appears (binary search over
    the topological order, ``log2(tensors)`` runs), then walks upstream from the node found while one of its
    inputs diverges too (a parallel branch that agrees can hide the divergence from the search), so that the
    node returned has inputs that agree and an output that does not.
    ``cosine_samples`` (one bool per sample of ``x``): the samples whose cosine counts, as the gate counted them
    at the output (:func:`cosine_resolvable`); the max abs error always covers every sample. Without it every
    sample's cosine counts, so a sample the gate left out as near zero could name a node upstream of the fault.
    Returns ``{"node", "tensor", "op_type", "index", "max_abs_rel_range", "cosine", "exact"}`` or None;
    ``exact`` is False when ``max_steps`` ran out before the search converged.
    """
    candidates = _float_outputs(model)
    if not candidates:
        return None
    ops = {n.output[0]: n.op_type for n in model.graph.node if n.output}
    counted = None if cosine_samples is None else np.asarray(cosine_samples, dtype=bool)
    if counted is not None and counted.shape != (len(x),):
        raise ValueError(f"cosine_samples needs one bool per input sample ({len(x)}), got shape {counted.shape}")

    def check(i: int) -> tuple[bool, dict[str, float]]:
        tensor = candidates[i][0]
        sub = _with_output(model, tensor)
        ref = run_ort(ort_reference_session(sub.SerializeToString()), x).reshape(len(x), -1)
        got = np.asarray(run_candidate(sub, x)).reshape(len(x), -1)
        m = _metrics(ref, got)
        if counted is not None:
            m["cosine"] = float(_cosines(ref[counted], got[counted]).min(initial=1.0))
        ok = m["max_abs_rel_range"] <= tolerance.max_abs and m["cosine"] >= tolerance.min_cosine
        return ok, m

    lo, hi = 0, len(candidates) - 1
    last_ok, last_m = check(hi)
    if last_ok:  # the last float tensor agrees: nothing to report
        return None
    found, found_m = hi, last_m
    steps = 0
    while lo < hi and steps < max_steps:
        mid = (lo + hi) // 2
        ok, m = check(mid)
        steps += 1
        if ok:
            lo = mid + 1
        else:
            hi, found, found_m = mid, mid, m
    exact = lo >= hi
    # the order is topological, not a chain: a parallel branch that agrees can sit between the divergence and
    # ``found``. Walk upstream while an input of the named node diverges too, so that every input of the node
    # returned agrees (the node itself is where the values part)
    index = {t: i for i, (t, _) in enumerate(candidates)}
    names = set(index)
    for _ in range(max_steps):
        bad = None
        for parent in sorted(_float_parents(model, candidates[found][0], names), key=index.__getitem__):
            ok, m = check(index[parent])
            if not ok:
                bad = (index[parent], m)
                break
        if bad is None:
            break
        found, found_m = bad
    else:
        exact = False
    tensor, node = candidates[found]
    return {
        "node": node,
        "tensor": tensor,
        "op_type": ops.get(tensor, "?"),
        "index": found,
        "max_abs_rel_range": found_m["max_abs_rel_range"],
        "cosine": found_m["cosine"],
        "exact": exact,
    }


def require_tensor_output(out: Any) -> None:
    """Refuse, in one line, a forward result that is not one tensor (a tuple, a dict, a dataclass): the
    artifact has one output, which the gate compares with this one."""
    import torch

    if not isinstance(out, torch.Tensor):
        raise EdgeAttnError(f"export takes a model with one tensor output; got {type(out).__name__}")


def reference_outputs(model: Any, inputs: np.ndarray, batch: int = 8) -> np.ndarray:
    """The PyTorch reference (eval mode, fake-quant for quantized models) on ``inputs``."""
    import torch

    model = model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(inputs), batch):
            out = model(torch.from_numpy(inputs[i : i + batch]))
            require_tensor_output(out)
            outs.append(out.float().numpy())
    return np.concatenate(outs, axis=0)


def summarize(results: Sequence[ParityResult]) -> bool:
    """True when every result passed."""
    return all(r.passed for r in results)
