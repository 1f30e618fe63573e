"""edgeattn export on bad input and failing converters: one line, the documented exit code, nothing written.

Also the fixes that go with them: explicit Core ML precision, the OpenVINO kernel report's fused attention
Subgraphs, TensorRT's max batch, and the module paths docs/export.md names.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _export_models import TinyViT, host_bits, tiny_quant_vit  # noqa: E402
from edgeattn.export import export_all, export_model  # noqa: E402

from edgeattn.cli import main  # noqa: E402
from edgeattn.device_profile import load_profile  # noqa: E402
from edgeattn.errors import EdgeAttnError  # noqa: E402

X = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
SMALL = ("--img-size", "32", "--precision", "fp32", "--n-inputs", "2")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"


class Det(torch.nn.Module):
    """torch.linalg.det: ONNX has Det, but coremltools and OpenVINO's ONNX frontend have no conversion for it."""

    input_size = (3, 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.det(x).flatten(1)


def _cli(capsys, model: str, target: str, out: str | Path, *extra: str, profile: str = "host-cpu"):
    """Run ``edgeattn export``; (exit code, stderr)."""
    code = main(["export", model, "--target", target, "--profile", profile, "-o", str(out), *extra])
    return code, capsys.readouterr().err


def _one_line_error(err: str) -> str:
    """stderr must be exactly one ``error: ...`` line (no traceback); returns it."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _leftovers(folder: Path) -> list[str]:
    """Staging folders (``.NAME.tmp-*``, ``.model.mlpackage.*``) left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------- 1: -o . / -o .. / a file
@pytest.mark.parametrize("out", [".", ".."])
def test_output_that_holds_the_working_directory_is_refused_and_nothing_is_deleted(out, user_cwd, capsys):
    work, tmp_path = user_cwd, user_cwd.parent
    code, err = _cli(capsys, "mobilenetv2", "onnx", out, *SMALL, "--force")
    line = _one_line_error(err)
    assert code == 2 and "working directory" in line
    assert (work / "keep.txt").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"] and _leftovers(work) == []


def test_output_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    target = tmp_path / "report.txt"
    target.write_text("not a folder")
    code, err = _cli(capsys, "mobilenetv2", "onnx", target, *SMALL, "--force")
    assert code == 2 and "is not a folder" in _one_line_error(err)
    assert target.read_text() == "not a folder" and _leftovers(tmp_path) == []


def test_export_all_refuses_a_target_folder_that_is_the_working_directory(tmp_path, monkeypatch):
    """export_all replaces OUT/<target>: run from a folder named 'onnx' with OUT '..' that is the cwd itself."""
    work = tmp_path / "onnx"
    work.mkdir()
    (work / "keep.txt").write_text("user data")
    monkeypatch.chdir(work)
    with pytest.raises(EdgeAttnError) as info:
        export_all(TinyViT(), "..", targets=["onnx"], force=True, n_inputs=2)
    assert info.value.exit_code == 2 and "working directory" in str(info.value)
    assert (work / "keep.txt").read_text() == "user data"


def test_force_replaces_an_output_folder_through_staging(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("old")
    rep = export_model(TinyViT().eval(), "onnx", "host-cpu", out, inputs=X[:2], n_inputs=2, force=True)
    assert rep.passed and sorted(p.name for p in out.iterdir()) == ["model.onnx", "report.json"]
    assert _leftovers(tmp_path) == []
    # report.json names the published artifacts, not the staging folder they were written in
    assert Path(rep.artifacts["onnx"]) == out.resolve() / "model.onnx"
    assert '.o.tmp-' not in (out / "report.json").read_text()


# ------------------------------------------------------------------------------------------------- 2: --cpu-isa
@pytest.mark.parametrize("atol", ["-1", "0", "nan", "inf"])
def test_atol_that_is_not_a_positive_fraction_is_refused_before_any_work(tmp_path, capsys, atol):
    out = tmp_path / "out"
    code, err = _cli(capsys, "mobilenetv2", "onnx", out, *SMALL, f"--atol={atol}")
    assert code == 2 and "--atol must be a finite number > 0" in _one_line_error(err)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_unknown_cpu_isa_is_refused_before_any_work(tmp_path, capsys):
    code, err = _cli(
        capsys, "mobilenetv2", "openvino", tmp_path / "o", *SMALL, "--cpu-isa", "AVX3", profile="intel-vnni-openvino"
    )
    line = _one_line_error(err)
    assert code == 2 and "--cpu-isa 'AVX3' is not a oneDNN ISA" in line and "AVX512_CORE_VNNI" in line
    assert not (tmp_path / "o").exists() and _leftovers(tmp_path) == []


def test_cpu_isa_on_a_target_that_is_not_openvino_is_refused(tmp_path, capsys):
    # only OpenVINO's CPU plugin runs the capped oneDNN kernels: on another target the flag would do nothing
    code, err = _cli(capsys, "mobilenetv2", "onnx", tmp_path / "o", *SMALL, "--cpu-isa", "AVX2")
    assert code == 2 and "--cpu-isa applies to --target openvino only" in _one_line_error(err)
    assert not (tmp_path / "o").exists()


def test_export_all_refuses_cpu_isa_without_the_openvino_target(tmp_path):
    with pytest.raises(EdgeAttnError, match="--cpu-isa applies to the openvino target"):
        export_all("mobilenetv2", tmp_path / "o", ["onnx"], cpu_isa="AVX2", model_kwargs={"img_size": 32}, n_inputs=2)
    assert not (tmp_path / "o").exists()


def test_cpu_isa_names_are_oneDNNs_in_any_case():
    from edgeattn.export.openvino_target import OpenVINORunner, normalize_isa

    assert normalize_isa("avx2") == "AVX2" and normalize_isa(" Avx512_Core_Vnni ") == "AVX512_CORE_VNNI"
    assert normalize_isa("avx10_1_512_amx_fp16") == "AVX10_1_512_AMX_FP16" and normalize_isa("default") == "DEFAULT"
    for bad in ("AVX-2", "avx512", "AVX512_VNNI", "sse4.1", ""):
        with pytest.raises(EdgeAttnError):
            normalize_isa(bad)
    with pytest.raises(EdgeAttnError):
        OpenVINORunner("unused.xml", isa="avx2x")
    with OpenVINORunner("unused.xml", isa="avx2") as r:
        assert r.isa == "AVX2"  # what the child's ONEDNN_MAX_CPU_ISA gets


# -------------------------------------------------------------------------------- 3: fused attention Subgraphs
def test_onnx_origin_of_runtime_node_names():
    from edgeattn.export.openvino_target import _onnx_origin

    onnx_names = {"/blocks/blocks.0/attn/MatMul", "/blocks/blocks.0/attn/MatMul_1", "/attn/qkv/MatMul"}
    assert _onnx_origin("/blocks/blocks.0/attn/MatMul_1", onnx_names) == "/blocks/blocks.0/attn/MatMul_1"
    assert _onnx_origin("/attn/qkv/MatMul/DequantizationMultiply", onnx_names) == "/attn/qkv/MatMul"
    assert _onnx_origin("/blocks/blocks.0/Add", onnx_names) is None
    assert _onnx_origin("/blocks/blocks.0/attn/q_quant/QuantizeLinear", onnx_names) is None


def test_kernel_report_counts_the_attention_matmuls(tmp_path):
    pytest.importorskip("openvino")
    from edgeattn.export.openvino_target import _onnx_origin

    weight_bits, kv_bits = host_bits()  # what this CPU's int8 kernels add without saturating
    model = tiny_quant_vit(weight_bits=weight_bits, kv_bits=kv_bits)
    rep = export_model(model, "openvino", "host-cpu", tmp_path / "ov", inputs=X, n_inputs=8)
    nodes = rep.kernels["nodes"]
    attention = {"/attn/MatMul", "/attn/MatMul_1"}  # q @ k^T and attn @ v of tests/_export_models.TinyAttention
    from_attention = [n for n in nodes if _onnx_origin(n["name"], attention)]
    # OpenVINO fuses both matmuls (+ softmax) into one Subgraph named after the last; unfused, they are MatMuls
    assert from_attention, nodes
    assert rep.kernels["count"] == len(nodes) >= 7  # stem, qkv, attention, proj, fc1, fc2, head
    assert rep.kernels["all_int8"], nodes


# ------------------------------------------------------------------------------- 4: --n-inputs below the batch
def test_n_inputs_below_a_static_batch_is_refused(tmp_path, capsys):
    code, err = _cli(capsys, "mobilenetv2", "onnx", tmp_path / "o", *SMALL, "--batch", "4", "--static-batch")
    line = _one_line_error(err)
    assert code == 2 and "2 parity input(s) cannot fill one static batch of 4" in line and "--n-inputs 4" in line
    assert not (tmp_path / "o").exists() and _leftovers(tmp_path) == []
    with pytest.raises(EdgeAttnError, match="static batch of 4"):  # export_all checks every target first
        export_all(TinyViT(), tmp_path / "all", targets=["onnx"], batch=4, dynamic_batch=False, n_inputs=3)
    assert not (tmp_path / "all").exists()
    from edgeattn.export.parity import run_batched

    with pytest.raises(ValueError, match="at least one input"):  # what callers of the helper itself see
        run_batched(lambda b: b, X[:0], 4)


def test_n_inputs_below_a_dynamic_batch_still_runs(tmp_path):
    rep = export_model(TinyViT().eval(), "onnx", "host-cpu", tmp_path / "d", batch=4, dynamic_batch=True, n_inputs=2)
    assert rep.passed and rep.parity_inputs["random"] == 2


# ------------------------------------------------------------------------ 5: converter failures -> exit 5
def test_coreml_converter_failure_is_exit_5_one_line_nothing_written(tmp_path, capsys, monkeypatch):
    pytest.importorskip("coremltools")
    import edgeattn.export.api as api

    monkeypatch.setattr(api, "resolve_model", lambda *a, **k: (Det().eval(), "Det", None))
    out = tmp_path / "cm"
    code, err = _cli(capsys, "vit_tiny", "coreml", out, "--n-inputs", "1", profile="apple-a17-coreml")
    line = _one_line_error(err)
    assert code == 5 and line.startswith("error: coreml: ") and "linalg_det" in line, line
    assert not out.exists() and _leftovers(tmp_path) == []


def test_openvino_frontend_failure_is_exit_5_nothing_written(tmp_path):
    pytest.importorskip("openvino")
    out = tmp_path / "ov"
    with pytest.raises(EdgeAttnError) as info:
        export_model(Det(), "openvino", "intel-vnni-openvino", out, precision="fp32", n_inputs=2)
    msg = str(info.value)
    assert info.value.exit_code == 5 and msg.startswith("openvino: ") and "Det" in msg and "\n" not in msg, msg
    assert "Exception from src" not in msg  # OpenVINO's source-location lines are dropped
    assert not out.exists() and _leftovers(tmp_path) == []


def test_openvino_child_process_failure_is_exit_5(tmp_path):
    pytest.importorskip("openvino")
    from edgeattn.export.onnx_export import export_onnx, save_onnx
    from edgeattn.export.openvino_target import OpenVINORunner

    x = np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)
    path = save_onnx(export_onnx(Det(), torch.from_numpy(x)).model, tmp_path / "det.onnx")
    with OpenVINORunner(path, isa="AVX2") as runner, pytest.raises(EdgeAttnError) as info:
        runner(x)
    assert info.value.exit_code == 5 and str(info.value).startswith("openvino (AVX2): ") and "Det" in str(info.value)


def _fake_tensorrt(parses: bool) -> mock.MagicMock:
    """A stand-in ``tensorrt`` module (TensorRT is not installable here) whose parser fails or succeeds."""
    trt = mock.MagicMock(name="tensorrt")
    parser = trt.OnnxParser.return_value
    parser.parse.return_value = parses
    parser.num_errors = 0 if parses else 1
    parser.get_error.return_value = "In node 0 with name: Det and operator: Det (parseNode):\nUNSUPPORTED_NODE"
    trt.Builder.return_value.build_serialized_network.return_value = b"engine"
    return trt


def test_tensorrt_parse_failure_is_exit_5(tmp_path, monkeypatch):
    from edgeattn.export.tensorrt_target import build_engine

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(parses=False))
    spec = load_profile("jetson-orin-trt10").tensorrt
    with pytest.raises(EdgeAttnError) as info:
        build_engine(b"onnx", tmp_path / "m.engine", spec, "fp32", "input", (1, 3, 4, 4), False)
    msg = str(info.value)
    assert info.value.exit_code == 5 and msg.startswith("tensorrt: could not parse") and "UNSUPPORTED_NODE" in msg
    assert "\n" not in msg and not (tmp_path / "m.engine").exists()


# ---------------------------------------------------------------------------------- 6: Core ML precision
def _coreml_tiny_vit(out: Path, precision: str):
    """A float TinyViT through ``edgeattn export -t coreml -p apple-a17-coreml --precision <precision>``."""
    pytest.importorskip("coremltools")
    torch.manual_seed(0)
    model = TinyViT().eval()
    return export_model(model, "coreml", "apple-a17-coreml", out, precision=precision, inputs=X[:2], n_inputs=2)


def test_coreml_explicit_fp32_computes_in_fp32(tmp_path):
    rep = _coreml_tiny_vit(tmp_path / "cm", "fp32")
    assert rep.precision == "fp32" and rep.coreml["compute_precision"] == "fp32"
    (par,) = rep.parity
    assert par["passed"] and par["max_abs_rel_range"] < 1e-5  # FP16 compute is ~1e-3 here


def test_coreml_int8_of_a_float_model_is_weight_only_and_says_so(tmp_path):
    rep = _coreml_tiny_vit(tmp_path / "cm", "int8")
    assert rep.precision == "int8" and rep.coreml["weight_quantization"] == "int8"
    assert rep.coreml["compute_precision"] == "fp16"  # the profile's
    assert "constexpr_affine_dequantize" in rep.coreml["spec"]["op_counts"]
    assert not any("PTQ" in n and "quantized by" in n for n in rep.notes)
    assert any("weights stored int8" in n and "no PTQ" in n for n in rep.notes), rep.notes


# -------------------------------------------------------------------------------------------- 7: the docs
def test_module_paths_in_the_export_docs_exist():
    """Every `edgeattn.x.y[.name]` docs/export.md names imports (module) or resolves (attribute)."""
    names = sorted(set(re.findall(r"`(edgeattn(?:\.\w+)+)`", DOCS.read_text())))
    assert "edgeattn.atomic.publish_modes" in names
    missing = []
    for dotted in names:
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(dotted)
            break
        else:
            missing.append(dotted)
    assert missing == []


# ------------------------------------------------------------------------------------ 8: TensorRT max batch
def test_trtexec_max_shape_is_never_below_the_batch():
    from edgeattn.export.tensorrt_target import trtexec_command

    spec = load_profile("jetson-orin-trt10").tensorrt
    big = trtexec_command("m.onnx", "m.engine", spec, "int8", "input", (64, 3, 32, 32), True)
    assert "--optShapes=input:64x3x32x32" in big and "--maxShapes=input:64x3x32x32" in big
    small = trtexec_command("m.onnx", "m.engine", spec, "int8", "input", (8, 3, 32, 32), True)
    assert "--optShapes=input:8x3x32x32" in small and "--maxShapes=input:32x3x32x32" in small
    assert "Shapes" not in trtexec_command("m.onnx", "m.engine", spec, "int8", "input", (64, 3, 32, 32), False)


def test_build_engine_profile_max_is_never_below_the_batch(tmp_path, monkeypatch):
    from edgeattn.export.tensorrt_target import build_engine

    trt = _fake_tensorrt(parses=True)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    spec = load_profile("jetson-orin-trt10").tensorrt
    path = build_engine(b"onnx", tmp_path / "m.engine", spec, "int8", "input", (64, 3, 8, 8), True)
    assert path.read_bytes() == b"engine"
    set_shape = trt.Builder.return_value.create_optimization_profile.return_value.set_shape
    set_shape.assert_called_once_with("input", (1, 3, 8, 8), (64, 3, 8, 8), (64, 3, 8, 8))


# ------------------------------------------------------- 6: the bisection runs where the output diverges most
def _optimised_ort_flips(monkeypatch, mark: np.ndarray) -> None:
    """ONNX Runtime *with* graph optimisations (the runtime under test) returns every output negated for the
    input ``mark``, and exact outputs for every other input; the no-optimisation reference stays exact."""
    import onnxruntime as ort

    real = ort.InferenceSession

    class Flipping:
        def __init__(self, model, opts=None, providers=None):
            self.sess = real(model, opts, providers=providers)
            self.flip = opts is None or opts.graph_optimization_level != ort.GraphOptimizationLevel.ORT_DISABLE_ALL

        def __getattr__(self, name):
            return getattr(self.sess, name)

        def run(self, names, feeds):
            x = next(iter(feeds.values()))
            outs = self.sess.run(names, feeds)
            hit = np.array([np.array_equal(row, mark) for row in x])
            return [np.where(hit.reshape(-1, *[1] * (o.ndim - 1)), -o, o) if self.flip else o for o in outs]

    monkeypatch.setattr(ort, "InferenceSession", Flipping)


def test_failing_gate_bisects_the_batch_with_the_worst_output(tmp_path, monkeypatch):
    """Only input 5 diverges: the first static batch (batch 1, input 0) agrees, so bisecting there named nothing;
    the gate now bisects on the batch holding input 5 and names the first node."""
    import onnx
    from edgeattn.export.parity import _float_outputs

    _optimised_ort_flips(monkeypatch, X[5])
    with pytest.raises(EdgeAttnError) as info:
        export_model(TinyViT().eval(), "onnx", "host-cpu", tmp_path / "o", precision="fp32", inputs=X, n_inputs=8)
    assert info.value.exit_code == 3
    ort_gate = info.value.report.parity[-1]
    assert ort_gate["runtime"] == "onnxruntime" and ort_gate["cosine"] == pytest.approx(-1.0)
    node = ort_gate["first_diverging_node"]
    onnx_model = onnx.load(str(tmp_path / "o" / "model.FAILED_PARITY.onnx"))
    first_tensor, first_node = _float_outputs(onnx_model)[0]  # every node's output is negated for input 5
    assert node["inputs"] == [5, 6] and node["index"] == 0 and node["node"] == first_node
    assert node["tensor"] == first_tensor and f"first diverging node {first_node}" in str(info.value)


def test_worst_batch_is_the_static_batch_holding_the_worst_input():
    from edgeattn.export.parity import worst_batch

    tol = load_profile("host-cpu").tolerance_for("fp32")
    ref = np.tile(np.array([[0.0, 1.0, 2.0]]), (6, 1))
    out = ref.copy()
    out[1, 2] += 0.2  # 10% of the range: the largest error
    out[4] *= 0.999  # a tiny, exactly proportional one: cosine 1
    assert worst_batch(ref, out, 2, tol) == slice(0, 2)
    assert worst_batch(ref, out, 4, tol) == slice(0, 4)
    out[3] = [2.0, 1.0, 0.0]  # reversed: the worst cosine, and the largest error (the whole range)
    assert worst_batch(ref, out, 2, tol) == slice(2, 4)
    assert worst_batch(ref, out, 4, tol) == slice(0, 4)
    out[5, 0] = np.nan  # a non-finite output is the worst of all
    assert worst_batch(ref, out, 4, tol) == slice(4, 6)


# ----------------------------------------------------------------- 7: --atol below the reference's rounding noise
def test_failure_beyond_the_cap_names_the_atol_it_came_from():
    from edgeattn.export.noise_floor import NoiseFloor
    from edgeattn.export.parity import compare_outputs

    tol = load_profile("host-cpu").tolerance_for("int8")
    ref = np.array([[0.0, 1.0, 2.0], [3.0, 2.0, 1.0]])
    out = ref + np.array([[0.0, 0.0, 0.003], [0.0, 0.0, 0.0]])  # 1e-3 of the range, cosine ~1
    floor = NoiseFloor("fp32", 1e-3, 4, 0.0005, 0.99999999, 1.0, (True, True))
    tight = tol.model_copy(update={"max_abs": 1e-6})
    res = compare_outputs(ref, out, tight, runtime="x", noise_floor=floor, atol_given=True)
    assert not res.passed and res.tolerance["max_abs"] == pytest.approx(4e-6)
    assert res.failures[-1] == (
        "your --atol is tighter than the reference's own float-rounding noise (pass a larger one): float-rounding "
        "noise alone moves its max abs error beyond 4x your --atol 1e-06 (noise floor: max abs 0.0005, cosine "
        "1.000000)"
    )
    # the same tolerance from a profile: the reference is called ill-conditioned, and the profile named
    res = compare_outputs(ref, out, tight, runtime="x", noise_floor=floor)
    assert res.failures[-1].startswith("the reference itself is ill-conditioned at this precision: ")
    assert "beyond 4x the profile's max_abs 1e-06" in res.failures[-1] and "--atol" not in res.failures[-1]


# -------------------------------------------------------------- 8: model-building flags a checkpoint fixes
def _mnv2_checkpoint(path: Path) -> Path:
    from edgeattn.quant.checkpoint import save_checkpoint

    from edgeattn.models import create_model

    kwargs = {"img_size": 32, "num_classes": 10}
    meta = {"model": "mobilenetv2", "model_kwargs": kwargs, "quant": None, "reparameterized": False}
    return save_checkpoint(path, create_model("mobilenetv2", **kwargs), meta)


@pytest.mark.parametrize("how", ["path", "--checkpoint"])
def test_img_size_that_a_checkpoint_fixes_is_refused_before_any_work(tmp_path, capsys, how):
    ckpt = _mnv2_checkpoint(tmp_path / "mnv2.pt")
    model, extra = (str(ckpt), ()) if how == "path" else ("mobilenetv2", ("--checkpoint", str(ckpt)))
    code, err = _cli(capsys, model, "onnx", tmp_path / "o", *extra, "--img-size", "64", "--n-inputs", "2")
    assert code == 2 and _one_line_error(err) == (
        f"error: --img-size 64 cannot apply to checkpoint '{ckpt}': the model is rebuilt as it was trained, "
        "with img_size 32; leave it out"
    )
    assert not (tmp_path / "o").exists() and _leftovers(tmp_path) == []
    with pytest.raises(EdgeAttnError, match=r"model_kwargs in_chans=1 cannot apply .* with in_chans 3; leave"):
        export_model(str(ckpt), "onnx", "host-cpu", tmp_path / "p", n_inputs=2, model_kwargs={"in_chans": 1})
    assert not (tmp_path / "p").exists()


def test_img_size_equal_to_the_checkpoints_is_accepted(tmp_path):
    ckpt = _mnv2_checkpoint(tmp_path / "mnv2.pt")
    rep = export_model(
        str(ckpt), "onnx", "host-cpu", tmp_path / "o", precision="fp32", n_inputs=2, model_kwargs={"img_size": 32}
    )
    assert rep.passed and rep.inputs[0]["shape"] == [1, 3, 32, 32]
    assert rep.checkpoint == {
        "path": str(ckpt),
        "module": None,
        "quant": "float",
        "token_adaptive_stripped": False,
        "exported_bits": None,
        "profile_quant_applied": False,
        "note": "",
    }
