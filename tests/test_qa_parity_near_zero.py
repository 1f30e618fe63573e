"""The parity gate's smallest per-sample cosine on a batch with a near-zero output.

A sample whose logits are all near zero is turned any way by rounding noise, so its cosine says nothing about the
artifact. With a noise floor the gate leaves such a sample out of the smallest cosine (it still counts in the max
abs error) and records how many samples the cosine was taken over. References: hand-made float64 batches whose
cosines are written out below, and a real export of a tiny quantized ViT whose head bias puts one input's logits
at the scale of the rounding flip that optimised ONNX Runtime makes on it, recomputed here in numpy float64.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _export_models import corrupt_weight_scale, host_bits, tiny_quant_vit  # noqa: E402
from edgeattn.export import export_model  # noqa: E402
from edgeattn.export.noise_floor import NoiseFloor, rounding_noise_floor  # noqa: E402
from edgeattn.export.parity import compare_outputs, cosine_resolvable, reference_outputs, worst_batch  # noqa: E402
from edgeattn.export.report import ExportReport  # noqa: E402

INT8 = SimpleNamespace(max_abs=0.05, min_cosine=0.995, min_top1_agreement=0.9)  # host-cpu's int8 tolerance

# three samples with logits of several units and one near zero; output range 5 - (-4) = 9
REF = np.array([[4.0, -2.0, 1.0], [-3.0, 5.0, 0.5], [2.0, 2.0, -4.0], [0.05, -0.12, 0.19]])
# rounding noise of 0.03 per logit (0.0033 of the range), at the scale the floor below measured
NOISE = np.array([[0.03, -0.03, 0.03], [0.03, -0.03, 0.03], [0.03, -0.03, 0.03], [0.03, 0.03, -0.03]])


def _floor(max_norm: float, cosine: float = 0.999, n: int = 4, per_sample: tuple[float, ...] = ()) -> NoiseFloor:
    """A measured floor: worst element 0.025 (of range 9), worst per-sample deviation norm ``max_norm``."""
    return NoiseFloor(
        "fp32", 2.0**-20, 4, 0.025 / 9, cosine, 1.0, (True,) * n, max_norm_rel_range=max_norm / 9,
        sample_cosine=per_sample,
    )


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_near_zero_sample_under_noise_passes_and_is_counted_out():
    out = REF + NOISE
    # the near-zero sample: r = (0.05, -0.12, 0.19), o = (0.08, -0.09, 0.16): r.o = 0.0452, |r| = 0.23022,
    # |o| = 0.20025, cosine 0.98046 < 0.995; the others stay above 0.9999
    cos = _cos(REF, out)
    assert cos[3] == pytest.approx(0.0452 / (0.230217 * 0.200250), rel=1e-5) and cos[3] < 0.981
    assert cos[:3].min() > 0.9999
    res = compare_outputs(REF, out, INT8, runtime="x", noise_floor=_floor(0.04))
    # floor cosine 0.999 and max abs 0.0028 are within the profile's: the tolerance stays 0.995 / 0.05. Noise the
    # gate accepts: 2 x 0.04 = 0.08; it can turn a vector of norm < 0.08 / sqrt(1 - 0.995^2) = 0.801 past 0.995.
    # Norms 4.583, 5.852, 4.899, 0.230: median 4.741, a quarter of it 1.185; only sample 3 is below both
    assert res.tolerance["min_cosine"] == pytest.approx(0.995)
    assert res.passed, res.failures
    assert (res.cosine_samples, res.cosine_of) == (3, 4)
    assert res.cosine == pytest.approx(cos[:3].min(), abs=1e-12)
    assert res.max_abs_rel_range == pytest.approx(0.03 / 9)  # every sample, the near-zero one included
    d = res.to_dict()
    assert (d["cosine_samples"], d["cosine_of"]) == (3, 4)
    assert d["noise_floor"]["max_norm_rel_range"] == pytest.approx(0.04 / 9)
    # the old rule (smallest cosine over every sample) is what the strict verdict still reports
    assert res.passed_profile_tolerance is False


def test_without_a_floor_every_sample_counts():
    res = compare_outputs(REF, REF + NOISE, INT8, runtime="x")
    assert not res.passed and (res.cosine_samples, res.cosine_of) == (4, 4)
    assert res.cosine == pytest.approx(_cos(REF, REF + NOISE).min(), abs=1e-12)
    assert res.failures == ["cosine 0.980456 < 0.995"]


def test_a_real_fault_still_fails_on_a_batch_with_a_near_zero_sample():
    # a wrong weight adds 0.4 x (1, 1, 1) to every sample: max abs 0.4 / 9 = 0.044 (within 0.05), but the typical
    # samples turn: sample 2: r = (2, 2, -4), o = (2.4, 2.4, -3.6): r.o = 24, |r|^2 = 24, |o|^2 = 24.48,
    # cosine sqrt(24 / 24.48) = 0.990148 < 0.995 (samples 0 and 1: 0.99135, 0.99384)
    out = REF + 0.4
    assert _cos(REF, out)[:3] == pytest.approx([0.991348, 0.993844, np.sqrt(24 / 24.48)], abs=1e-6)
    res = compare_outputs(REF, out, INT8, runtime="x", noise_floor=_floor(0.04))
    assert res.max_abs_rel_range == pytest.approx(0.4 / 9) and res.max_abs_rel_range <= res.tolerance["max_abs"]
    assert not res.passed and (res.cosine_samples, res.cosine_of) == (3, 4)
    assert res.cosine == pytest.approx(_cos(REF, out)[:3].min(), abs=1e-12)
    assert res.cosine == pytest.approx(np.sqrt(24 / 24.48), abs=1e-12)
    assert res.failures[0] == "cosine 0.990148 < 0.995 (over 3/4 samples clear of the rounding noise)"


def test_a_near_zero_sample_does_not_widen_the_cosine_bound_for_the_others():
    # the floor's own noise turned the near-zero sample to 0.90 and the others to 0.9999 at worst: only the latter
    # widen the bound (2 x 1e-4 < the profile's 0.005: it stays 0.995). Over every sample, 2 x (1 - 0.90) would
    # have opened it to the cap, 0.98, and let the 0.99015 of the fault below through
    floor = _floor(0.04, cosine=0.90, per_sample=(0.9999, 0.9999, 0.9999, 0.90))
    res = compare_outputs(REF, REF + 0.4, INT8, runtime="x", noise_floor=floor)
    assert res.tolerance["min_cosine"] == pytest.approx(0.995) and not res.passed
    assert res.noise_floor["cosine"] == pytest.approx(0.9999)  # the floor's cosine over the samples counted
    assert compare_outputs(REF, REF + NOISE, INT8, runtime="x", noise_floor=floor).passed


def test_a_large_floor_leaves_out_only_outliers_below_a_quarter_of_the_median_norm():
    # noise of norm 3 reaches every sample here (3 / 0.0999 = 30 > 5.9), yet only the one below
    # 0.25 x median norm (1.185) may leave the cosine: the typical samples are always judged
    res = compare_outputs(REF, REF + 0.4, INT8, runtime="x", noise_floor=_floor(3.0))
    assert (res.cosine_samples, res.cosine_of) == (3, 4) and not res.passed
    # a floor that measured no deviation at all leaves nothing out
    res = compare_outputs(REF, REF + NOISE, INT8, runtime="x", noise_floor=_floor(0.0))
    assert (res.cosine_samples, res.cosine_of) == (4, 4) and not res.passed


def test_bisection_starts_on_the_worst_judged_sample_not_the_near_zero_one():
    # batches of 2: samples 2..3 hold the near-zero sample (3), whose noisy cosine is the lowest of all
    # (0.980456 by hand, 1 - cos = 3.9x what 0.995 allows, while its error is 0.03 / 9 = 0.07x max_abs); sample 0
    # has a real fault of 0.3 on one logit: error 0.33 / 9 / 0.05 = 0.73x, cosine 0.99967 (0.07x). Judged with the
    # floor, sample 3's cosine is not counted, so bisection goes to batch 0..1
    got = REF + NOISE
    got[0, 0] += 0.3
    assert worst_batch(REF, got, 2, INT8) == slice(2, 4)  # every cosine scored: the near-zero batch
    clear = cosine_resolvable(REF, _floor(0.06), INT8.min_cosine)
    assert clear.tolist() == [True, True, True, False]
    assert worst_batch(REF, got, 2, INT8, clear) == slice(0, 2)


def test_bisection_counts_the_cosine_on_the_samples_the_gate_judged():
    """The search gets, with the worst batch's inputs, which of them the gate's cosine counted: with a fault on
    sample 2, the batch 2..3 and (True, False), sample 3 being the near-zero one; without a floor, None."""
    from edgeattn.export.runners import _bisect_worst

    got = REF + NOISE
    got[2, 2] += 0.5
    calls = []

    def bisect(xb, counted):
        calls.append((xb.copy(), counted))
        return {"node": "n"}

    job = SimpleNamespace(shape=(2, 3), tol=INT8)
    x = np.arange(4.0)[:, None]
    clear = cosine_resolvable(REF, _floor(0.06), INT8.min_cosine)
    node, note = _bisect_worst(job, x, REF, got, bisect, clear)
    assert (node, note) == ({"node": "n", "inputs": [2, 4]}, "")
    assert calls[0][0].ravel().tolist() == [2.0, 3.0] and calls[0][1].tolist() == [True, False]
    _bisect_worst(job, x, REF, got, bisect)
    assert calls[1][1] is None


def test_a_failure_line_never_prints_a_figure_on_the_passing_side_of_its_bound():
    """A cosine of 0.99999992 against --min-cosine 1 once read "cosine 1.000000 < 1"; the figure gets the digits
    that show it below the bound (by hand: (1 + 1.0008) / (sqrt 2 * sqrt(1 + 1.0008^2)) = 0.99999992)."""
    ref, out = np.array([[1.0, 0.0], [1.0, 1.0008]]), np.array([[1.0, 0.0], [1.0, 1.0]])
    tol = SimpleNamespace(max_abs=1.0, min_cosine=1.0, min_top1_agreement=0.0)
    res = compare_outputs(ref, out, tol, runtime="x")
    cos = 2.0008 / (math.sqrt(2) * math.sqrt(1 + 1.0008**2))
    assert res.failures == [f"cosine {cos:.7g} < 1"] and f"{cos:.7g}" == "0.9999999"
    tol = SimpleNamespace(max_abs=10.0, min_cosine=0.99, min_top1_agreement=0.0)  # an ordinary miss: 6 places
    assert compare_outputs(ref, out * [1, -1], tol, runtime="x").failures == ["cosine -0.000400 < 0.99"]


def test_console_line_says_over_how_many_samples_the_cosine_is():
    res = compare_outputs(REF, REF + NOISE, INT8, runtime="onnxruntime", noise_floor=_floor(0.04))
    rep = ExportReport("m", "onnx", "int8", {}, "out", parity=[res.to_dict()])
    assert f"cos {res.cosine:.6f} (3/4 samples clear of noise)  top1 1.000  ok" in rep.summary()
    old = res.to_dict()
    old.pop("cosine_samples"), old.pop("cosine_of")  # a report written before the count was recorded
    assert "samples clear of noise" not in ExportReport("m", "onnx", "int8", {}, "out", parity=[old]).summary()


def test_floor_records_the_largest_per_sample_deviation_norm():
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    model = tiny_quant_vit(weight_bits=8)
    floor = rounding_noise_floor(model, x, reference_outputs(model, x))
    # a vector's norm lies between its largest element and sqrt(length) x it (10 logits)
    assert floor.max_abs_rel_range <= floor.max_norm_rel_range <= np.sqrt(10) * floor.max_abs_rel_range + 1e-15


def test_real_export_with_a_near_zero_logit_input_passes_and_a_corrupted_scale_fails(tmp_path):
    """One input's logits are cancelled by the head's float bias down to the size of the rounding difference
    optimised ONNX Runtime makes on it (a 1-LSB flip upstream, in an int8 kernel, where this CPU makes one; else
    float rounding alone). Every output is correct to that rounding, so the gate must pass; over all samples the
    smallest cosine misses the bound (the old rule), recomputed here in float64."""
    import onnx
    import onnxruntime as ort
    from edgeattn.export.onnx_export import export_onnx
    from edgeattn.export.parity import ort_reference_session, run_batched, run_ort

    n = 16
    x = np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(np.float32)
    model = tiny_quant_vit(*host_bits())
    ref = reference_outputs(model, x).astype(np.float64)
    exported = export_onnx(model, torch.from_numpy(x[:1]), precision="int8", dynamic_batch=True).model
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = 2, 3  # as export_model's optimised ONNX Runtime gate
    sess = ort.InferenceSession(exported.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    # one input at a time, as export_model runs host-cpu's static batch of 1
    dev = np.linalg.norm(run_batched(lambda b: run_ort(sess, b), x, 1).astype(np.float64) - ref, axis=1)
    k = int(dev.argmax())  # sample k's logits shrink to the size of its flip (to float residue without one)
    with torch.no_grad():
        model.head.bias -= torch.from_numpy((1.0 - dev[k] / np.linalg.norm(ref[k])) * ref[k]).float()

    rep = export_model(model, "onnx", "host-cpu", tmp_path / "a", inputs=x, n_inputs=n, dynamic_batch=True)
    entry = next(p for p in rep.parity if p["runtime"] == "onnxruntime")
    artifact = onnx.load(tmp_path / "a" / "model.onnx")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as export_model's reference: another thread count sums in another order
    try:
        ref = reference_outputs(model, x).astype(np.float64)
    finally:
        torch.set_num_threads(threads)
    sess = ort.InferenceSession(artifact.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    got = run_batched(lambda b: run_ort(sess, b), x, 1)
    cos = _cos(ref, got.astype(np.float64))
    norms = np.linalg.norm(ref, axis=1)
    assert norms[k] < 0.05 * np.median(norms)  # the near-zero input
    if cos[k] >= entry["tolerance"]["min_cosine"]:
        pytest.skip(f"this CPU's rounding left the near-zero input at cosine {cos[k]:.6f}: nothing to leave out")
    assert cos.min() == cos[k]  # the old rule, the smallest cosine over every sample, fails the gate on it
    assert rep.passed and entry["passed"], entry["failures"]
    assert entry["passed_profile_tolerance"] is False and entry["noise_floor"]["max_norm_rel_range"] > 0
    assert (entry["cosine_samples"], entry["cosine_of"]) == (n - 1, n)
    assert entry["cosine"] == pytest.approx(np.delete(cos, k).min(), abs=1e-9)
    assert entry["max_abs_rel_range"] == pytest.approx(np.abs(got - ref).max() / (ref.max() - ref.min()), rel=1e-5)

    # the same gate and floor on the artifact with fc1's weight scale off by 25%: fails
    floor = NoiseFloor(**{**entry["noise_floor"], "top1_stable": tuple(entry["noise_floor"]["top1_stable"])})
    bad_model, dq = corrupt_weight_scale(artifact, 3, 1.25)
    assert dq.name.startswith("/fc1/")
    bad = run_ort(ort_reference_session(bad_model.SerializeToString()), x)
    res = compare_outputs(ref, bad, INT8, runtime="onnxruntime", noise_floor=floor)
    assert not res.passed and res.cosine_samples == n - 1, (res.max_abs_rel_range, res.cosine)
