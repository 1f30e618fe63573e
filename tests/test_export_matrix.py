"""The model matrix: every registered vision model, FP32 and INT8, through every target that runs here.

Per (model, precision) the ONNX graph is exported once (the artifact all ONNX-based targets share) and checked
in ONNX Runtime (no optimisations and default), OpenVINO CPU (plus its int8-kernel counters for INT8) and
TensorRT's lint + attention-fusion check; Core ML converts and is evaluated by the MIL reference evaluator.
INT8 models are the registry model's deploy form quantized with edgeattn.quant (the profile's bits) and
calibrated on digits samples. img_size 32 keeps it small.

The INT8 gates use the reference's rounding noise floor, as ``edgeattn export`` does: these random-weight
models fed Gaussian noise amplify a single 1-LSB rounding flip (fmvit_t: cosine 0.9915-0.9947 in OpenVINO, 6.5%
of range in the Core ML reference vs 5%), and the floor measures how far the PyTorch reference itself moves
under the same float-rounding noise (test_noise_floor.py checks that it still fails real errors).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from edgeattn.export.lint import lint_tensorrt
from edgeattn.export.noise_floor import rounding_noise_floor
from edgeattn.export.onnx_export import export_onnx
from edgeattn.export.parity import compare_outputs, ort_reference_session, reference_outputs, run_ort

from edgeattn.device_profile import load_profile
from edgeattn.models import create_model, list_models

VISION = [m for m in list_models() if m != "tiny_llama"]
# OpenVINO runs here, on this machine's CPU: host-cpu's bits are the ones its int8 kernels add without saturating
# (8-bit with VNNI; 7-bit weights, K and V without it)
PROFILE = load_profile("host-cpu")
X = np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)


def _model(name: str, precision: str, profile=PROFILE):
    from edgeattn.quant import ptq

    from edgeattn.data import digits_dataset
    from edgeattn.reparameterize import reparameterize

    torch.manual_seed(0)
    deploy = reparameterize(create_model(name, num_classes=10, img_size=32)).eval()
    if precision == "fp32":
        return deploy
    calib = digits_dataset(img_size=32, in_chans=3, split="train").tensors[0][:32]
    return ptq(deploy, profile, [calib]).eval()


CASES = [(name, prec) for name in VISION for prec in ("fp32", "int8")]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "precision"), CASES)
def test_model_matrix_onnx_openvino_tensorrt(name, precision):
    pytest.importorskip("openvino")
    from edgeattn.export.openvino_target import OpenVINORunner, for_openvino, kernel_report

    model = _model(name, precision)
    exported = export_onnx(model, torch.from_numpy(X[:1]), precision=precision, dynamic_batch=True)
    # TensorRT lint first: it must hold even where a runtime diverges
    findings = lint_tensorrt(exported.model, major=10, precision=precision)
    assert [f.message for f in findings if f.severity == "error"] == []
    tol = PROFILE.tolerance_for(precision)
    ref = reference_outputs(model, X)
    floor = rounding_noise_floor(model, X, ref, compute="fp32")
    assert (floor is None) == (precision == "fp32")
    got = run_ort(ort_reference_session(exported.model.SerializeToString()), X)
    res = compare_outputs(ref, got, tol, runtime="onnxruntime-noopt", noise_floor=floor)
    assert res.passed, res
    ov_model, _ = for_openvino(exported.model)
    with OpenVINORunner(ov_model) as ov:
        res = compare_outputs(ref, ov(X), tol, runtime="openvino-cpu", noise_floor=floor)
        assert res.passed, res
        if precision == "int8":
            kernels = kernel_report(ov, X[:1], ov_model)
            slow = [(n["name"], n["exec_type"]) for n in kernels["nodes"] if not n["int8"]]
            assert kernels["all_int8"], slow


@pytest.mark.slow
@pytest.mark.parametrize(("name", "precision"), CASES)
def test_model_matrix_coreml(name, precision, tmp_path):
    """Core ML: FP32 models convert with FP16 compute, INT8 ones with int8 weights and activation
    fake-quant; the spec is checked and the MIL reference evaluator runs the saved program."""
    pytest.importorskip("coremltools")
    from edgeattn.export.coreml_target import convert_coreml, validate_spec
    from edgeattn.export.mil_eval import MILProgram

    prof = load_profile("apple-a17-coreml")
    model = _model(name, precision, prof)
    path = tmp_path / "m.mlpackage"
    coreml_precision = "fp16" if precision == "fp32" else "int8"
    convert_coreml(model, torch.from_numpy(X[:1]), prof, coreml_precision, path)
    assert validate_spec(path, deployment_target="iOS17", input_shape=(1, 3, 32, 32))["passed"]
    prog = MILProgram.from_package(path)
    assert prog.unsupported() == []
    got = np.concatenate([prog(input=X[i : i + 1])["output"] for i in range(4)])
    ref = reference_outputs(model, X[:4])
    floor = rounding_noise_floor(model, X[:4], ref, compute="fp16")  # Core ML computes in FP16
    tol = prof.tolerance_for(coreml_precision)
    res = compare_outputs(ref, got, tol, runtime="mil", noise_floor=floor)
    assert res.passed, res


@functools.lru_cache(maxsize=1)
def _trained_fmvit_t() -> tuple[torch.nn.Module, np.ndarray]:
    """fmvit_t trained for 2 epochs on digits (32x32, about 90% top-1) and 8 validation images."""
    from edgeattn.data import digits_dataset
    from edgeattn.reparameterize import reparameterize

    torch.manual_seed(0)
    train = digits_dataset(img_size=32, in_chans=3, split="train")
    model = create_model("fmvit_t", num_classes=10, img_size=32)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    x_all, y_all = train.tensors
    for _ in range(2):
        for idx in torch.randperm(len(x_all)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x_all[idx]), y_all[idx]).backward()
            opt.step()
    val_x, val_y = digits_dataset(img_size=32, in_chans=3, split="val").tensors
    deploy = reparameterize(model.eval())
    with torch.no_grad():
        top1 = (deploy(val_x).argmax(1) == val_y).float().mean().item()
    assert top1 > 0.6, f"the 2-epoch fmvit_t should learn digits, got top-1 {top1:.2f}"
    return deploy, val_x[:8].numpy()


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["openvino", "coreml-mil"])
def test_trained_fmvit_t_int8_passes_where_random_weights_do_not(runtime, tmp_path):
    """Trained weights on digits pass at the profile's own tolerance: no noise floor needed (random-weight
    fmvit_t needs it above), because a trained network does not amplify a 1-LSB rounding flip."""
    from edgeattn.quant import ptq

    from edgeattn.data import digits_dataset

    deploy, x = _trained_fmvit_t()
    calib = digits_dataset(img_size=32, in_chans=3, split="train").tensors[0][:32]
    if runtime == "openvino":
        pytest.importorskip("openvino")
        from edgeattn.export.openvino_target import OpenVINORunner, for_openvino

        model = ptq(deploy, PROFILE, [calib]).eval()
        exported = export_onnx(model, torch.from_numpy(x[:1]), precision="int8", dynamic_batch=True)
        ov_model, _ = for_openvino(exported.model)
        with OpenVINORunner(ov_model) as ov:
            res = compare_outputs(reference_outputs(model, x), ov(x), PROFILE.tolerance_for("int8"), runtime=runtime)
    else:
        pytest.importorskip("coremltools")
        from edgeattn.export.coreml_target import convert_coreml
        from edgeattn.export.mil_eval import MILProgram

        prof = load_profile("apple-a17-coreml")
        model = ptq(deploy, prof, [calib]).eval()
        path = tmp_path / "m.mlpackage"
        convert_coreml(model, torch.from_numpy(x[:1]), prof, "int8", path)
        prog = MILProgram.from_package(path)
        got = np.concatenate([prog(input=x[i : i + 1])["output"] for i in range(4)])
        res = compare_outputs(reference_outputs(model, x[:4]), got, prof.tolerance_for("int8"), runtime=runtime)
    assert res.passed, res
