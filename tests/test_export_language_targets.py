"""Language models (token ids in, logits out) on the TensorRT and Core ML targets.

Core ML: the package takes int32 ids (Core ML has no int64 inputs); its saved program is evaluated by
edgeattn.export.mil_eval on token ids (random ids in [0, vocab) and standard-library text windows), and the ops a
language model's program adds to the vision ones (integer add, comparisons, select, gather of embedding rows) are
each checked here against numpy/torch. TensorRT: the ONNX keeps int64 ids (TensorRT 10+ has INT64 tensors and
int32/int64 Gather indices), every tensor type is checked against TensorRT's data types, the graph is linted,
and the engine gate is exercised with a stand-in ``tensorrt`` module (TensorRT cannot be installed here).
"""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

from edgeattn.cli import main
from edgeattn.errors import EdgeAttnError
from edgeattn.models import create_model

# a small tiny_llama: 2 layers, dim 32, 2 heads, vocab 64, 8 positions (as in test_qa_language_flow.py)
LM = {"vocab_size": 64, "seq_len": 8, "dim": 32, "depth": 2, "num_heads": 2}


def _lm(**over: int) -> nn.Module:
    torch.manual_seed(0)
    return create_model("tiny_llama", **{**LM, **over}).eval()


def _float64_logits(model: nn.Module, ids: np.ndarray) -> np.ndarray:
    """The independent reference: the torch model in float64 on int64 ids."""
    import copy

    with torch.no_grad():
        return copy.deepcopy(model).double()(torch.from_numpy(ids.astype(np.int64))).numpy()


# ------------------------------------------------------------------------------------ MIL evaluator ops
def _mil_program(build, *specs):
    """A MIL program built with coremltools' own Builder for iOS17 (apple-a17-coreml's target), the ops as the
    converter writes them."""
    ct = pytest.importorskip("coremltools", reason="coremltools is not installed")
    from coremltools.converters.mil import Builder as mb

    return mb.program(input_specs=list(specs), opset_version=ct.target.iOS17)(build)


@pytest.mark.parametrize(
    ("op", "ref"),
    [
        ("greater_equal", np.greater_equal),
        ("greater", np.greater),
        ("less", np.less),
        ("less_equal", np.less_equal),
        ("equal", np.equal),
        ("not_equal", np.not_equal),
    ],
)
@pytest.mark.parametrize("dtype", ["int32", "fp16", "fp32"])
def test_mil_comparison_ops_match_numpy(op, ref, dtype):
    """Each comparison on int32, fp16 and fp32 operands (ties included) equals numpy's on the same values."""
    pytest.importorskip("coremltools", reason="coremltools is not installed")
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from edgeattn.export.mil_eval import MILProgram

    np_dtype = {"int32": np.int32, "fp16": np.float16, "fp32": np.float32}[dtype]
    mil_dtype = {"int32": types.int32, "fp16": types.fp16, "fp32": types.fp32}[dtype]
    specs = [mb.TensorSpec(shape=(4, 6), dtype=mil_dtype) for _ in "xy"]  # one spec each: the builder names them
    prog = _mil_program(lambda x, y: getattr(mb, op)(x=x, y=y), *specs)
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, (4, 6)).astype(np_dtype)
    y = rng.integers(-3, 4, (4, 6)).astype(np_dtype)
    assert (x == y).any() and (x < y).any() and (x > y).any()  # every outcome occurs
    (got,) = MILProgram(prog)(x=x, y=y).values()
    want = ref(x.astype(np.float64), y.astype(np.float64))
    assert np.array_equal(got.astype(bool), want)


def test_mil_token_id_embedding_matches_torch():
    """The converter's id path: int32 ids, ``greater_equal`` + integer ``add`` + ``select`` (negative ids wrap),
    int16 ``cast``, then ``gather`` of FP16 embedding rows; equal to torch's embedding of ``ids mod vocab``."""
    pytest.importorskip("coremltools", reason="coremltools is not installed")
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from edgeattn.export.mil_eval import MILProgram

    vocab, dim = 50, 6
    weight = np.random.default_rng(1).standard_normal((vocab, dim)).astype(np.float16)

    def build(ids):
        wrapped = mb.select(
            cond=mb.greater_equal(x=ids, y=np.int32(0)), a=ids, b=mb.add(x=ids, y=np.int32(vocab))
        )
        idx = mb.cast(x=wrapped, dtype="int16")
        return mb.gather(x=mb.const(val=weight), indices=idx, axis=0)

    prog = _mil_program(build, mb.TensorSpec(shape=(3, 7), dtype=types.int32))
    evaluator = MILProgram(prog)
    assert evaluator.input_dtype("ids") == np.int32 and evaluator.unsupported() == []
    ids = np.random.default_rng(2).integers(-vocab, vocab, (3, 7)).astype(np.int32)
    (got,) = evaluator(ids=ids).values()
    emb = torch.nn.functional.embedding(torch.from_numpy(ids % vocab).long(), torch.from_numpy(weight).double())
    assert got.shape == (3, 7, dim) and np.array_equal(got, emb.numpy().astype(np.float32))
    changed = ids.copy()
    changed[0, 0] = (ids[0, 0] % vocab + 1) % vocab  # another id: another row there, the same rows elsewhere
    (other,) = evaluator(ids=changed).values()
    assert not np.array_equal(other[0, 0], got[0, 0]) and np.array_equal(other[1:], got[1:])


def test_mil_integer_add_stays_integer():
    """``add`` of two int32 tensors is exact int32 (it was computed in float32, which loses ids above 2**24)."""
    pytest.importorskip("coremltools", reason="coremltools is not installed")
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from edgeattn.export.mil_eval import MILProgram

    specs = [mb.TensorSpec(shape=(3,), dtype=types.int32) for _ in "xy"]
    prog = _mil_program(lambda x, y: mb.add(x=x, y=y), *specs)
    x = np.array([2**24 + 1, -5, 7], np.int32)
    y = np.array([2, 5, -9], np.int32)
    (got,) = MILProgram(prog)(x=x, y=y).values()
    assert np.array_equal(got.astype(np.int64), x.astype(np.int64) + y)


# ------------------------------------------------------------------------------------------- Core ML
@pytest.mark.parametrize(("precision", "bound"), [("fp32", 1e-5), ("fp16", 5e-3)])
def test_coreml_token_model_exports_with_token_id_parity(tmp_path, precision, bound):
    """tiny_llama to Core ML: an int32 (1, 8) input, the gate run by the MIL evaluator on token ids, and the saved
    program's logits on other ids equal to a float64 torch run (to FP32 or FP16 rounding)."""
    pytest.importorskip("coremltools", reason="coremltools is not installed")
    from edgeattn.export import export_model
    from edgeattn.export.mil_eval import MILProgram

    lm = _lm()
    rep = export_model(lm, "coreml", "apple-a17-coreml", tmp_path / "cm", precision=precision, n_inputs=4)
    assert rep.passed and rep.inputs[0] == {"name": "input", "shape": [1, 8], "dtype": "int32"}
    assert rep.coreml["spec"]["input_dtype"] == "int32" and rep.coreml["compute_precision"] == precision
    assert {"gather", "greater_equal", "select"} <= set(rep.coreml["spec"]["op_counts"])
    (gate,) = rep.parity
    assert gate["runtime"] == "coreml-mil-reference" and gate["passed"] and gate["max_abs_rel_range"] < bound
    assert rep.parity_inputs == {"random": 4, "real": 0}
    prog = MILProgram.from_package(tmp_path / "cm" / "model.mlpackage")
    ids = np.random.default_rng(5).integers(0, LM["vocab_size"], (1, 8)).astype(np.int32)
    got = prog(input=ids)["output"]
    want = _float64_logits(lm, ids)
    assert got.shape == (1, 8, LM["vocab_size"]) and np.abs(got - want).max() < bound * np.ptp(want)


def test_coreml_byte_vocabulary_model_is_checked_on_real_text(tmp_path):
    """With every byte in the vocabulary, half of the Core ML parity inputs are standard-library text windows."""
    pytest.importorskip("coremltools", reason="coremltools is not installed")
    from edgeattn.export import export_model

    rep = export_model(_lm(vocab_size=256), "coreml", "apple-a17-coreml", tmp_path / "cm", n_inputs=4)
    assert rep.passed and rep.parity_inputs == {"random": 2, "real": 2}
    assert rep.parity[0]["runtime"] == "coreml-mil-reference"


def test_coreml_token_gate_fails_on_wrong_embedding_rows(tmp_path, monkeypatch):
    """The gate really evaluates the program on the ids: a gather that reads the next row fails it (exit 3), and
    the package is kept under a FAILED_PARITY name."""
    pytest.importorskip("coremltools", reason="coremltools is not installed")
    from edgeattn.export import export_model
    from edgeattn.export.mil_eval import MILProgram
    from edgeattn.export.report import ParityFailure

    right = MILProgram._op_gather

    def off_by_one(self, x, indices, **kw):
        rows = np.asarray(x).shape[0]
        return right(self, x, (np.asarray(indices).astype(np.int64) + 1) % rows, **kw)

    monkeypatch.setattr(MILProgram, "_op_gather", off_by_one)
    with pytest.raises(ParityFailure) as info:
        export_model(_lm(), "coreml", "apple-a17-coreml", tmp_path / "cm", precision="fp32", n_inputs=4)
    assert info.value.exit_code == 3 and "coreml-mil-reference" in str(info.value)
    assert (tmp_path / "cm" / "model.FAILED_PARITY.mlpackage").is_dir()


def test_coreml_quantized_token_model(tmp_path):
    """A brevitas-quantized tiny_llama (PTQ here; a QAT checkpoint is the same kind of module) converts through
    its float twin (activation quantizers as round/clip) and its gate runs on token ids."""
    pytest.importorskip("coremltools", reason="coremltools is not installed")
    from edgeattn.export import export_model
    from edgeattn.quant import ptq

    from edgeattn.device_profile import load_profile

    prof = load_profile("apple-a17-coreml")
    calib = torch.randint(0, LM["vocab_size"], (16, LM["seq_len"]), generator=torch.Generator().manual_seed(0))
    qlm = ptq(_lm(), prof, [calib]).eval()
    rep = export_model(qlm, "coreml", prof, tmp_path / "cm", n_inputs=4)
    assert rep.precision == "int8" and rep.inputs[0]["dtype"] == "int32"
    assert rep.passed and rep.parity[0]["runtime"] == "coreml-mil-reference"
    assert {"round", "clip"} <= set(rep.coreml["spec"]["op_counts"])


# ------------------------------------------------------------------------------------------ TensorRT
def test_tensorrt_token_model_onnx_is_valid_for_tensorrt(tmp_path):
    """tiny_llama for TensorRT (PTQ int8 on jetson-orin-trt10, fp32, and rtx-trt11's dynamic batch): every tensor
    type is one TensorRT has, the int64 ids feed the embedding Gather directly, the lint is clean, the attention
    blocks are fusable, and ONNX Runtime's gate ran on token ids; the fp32 ONNX equals float64 torch."""
    import onnx
    import onnxruntime as ort
    from edgeattn.export import export_model
    from edgeattn.export.tensorrt_target import unsupported_tensor_types

    lm = _lm()
    int8 = export_model(lm, "tensorrt", "jetson-orin-trt10", tmp_path / "int8", n_inputs=4)
    fp32 = export_model(lm, "tensorrt", "jetson-orin-trt10", tmp_path / "fp32", precision="fp32", n_inputs=4)
    dyn = export_model(lm, "tensorrt", "rtx-trt11", tmp_path / "dyn", precision="fp32", n_inputs=4)
    assert int8.precision == "int8" and int8.lint == [] and all(a["fusable"] for a in int8.attention_fusion)
    assert len(int8.attention_fusion) == LM["depth"]
    assert "--minShapes=input:1x8" in dyn.trtexec and "--maxShapes=input:32x8" in dyn.trtexec
    for rep, folder in ((int8, "int8"), (fp32, "fp32"), (dyn, "dyn")):
        assert rep.passed and rep.inputs[0]["dtype"] == "int64"
        assert [p["runtime"] for p in rep.parity][0] == "onnxruntime-noopt"
        model = onnx.load(tmp_path / folder / "model.onnx")
        assert unsupported_tensor_types(model) == []
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert any(n.op_type == "Gather" and n.input[1] == "input" for n in model.graph.node)
    sess = ort.InferenceSession(str(tmp_path / "fp32" / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(3).integers(0, LM["vocab_size"], (1, 8))
    want = _float64_logits(lm, ids)
    assert np.abs(sess.run(None, {"input": ids})[0] - want).max() < 1e-5 * np.ptp(want)


def test_tensorrt_refuses_a_tensor_type_it_lacks(tmp_path):
    """A float64 tensor in the graph (TensorRT has no FP64) is refused in one line, exit 5, nothing written."""
    from edgeattn.export import export_model
    from edgeattn.export.tensorrt_target import unsupported_tensor_types

    class F64(nn.Module):
        input_size = (3, 4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x.double() * 2).float()

    with pytest.raises(EdgeAttnError) as info:
        export_model(F64(), "tensorrt", "jetson-orin-trt10", tmp_path / "o", precision="fp32", n_inputs=2)
    msg = str(info.value)
    assert info.value.exit_code == 5 and "DOUBLE" in msg and "TensorRT" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []
    from edgeattn.export.onnx_export import export_onnx

    onnx_model = export_onnx(F64(), torch.zeros(1, 3, 4, 4)).model
    assert [t for _, t in unsupported_tensor_types(onnx_model)] and all(
        t == "DOUBLE" for _, t in unsupported_tensor_types(onnx_model)
    )


class _StandInRunner:
    """Stands in for TensorRTRunner (no TensorRT or GPU here): runs the ONNX that was handed to TensorRT with
    ONNX Runtime, records what it was fed, and adds ``shift`` to its logits."""

    fed: list[np.ndarray] = []
    shift = 0.0

    def __init__(self, engine_path: str | Path) -> None:
        import onnxruntime as ort

        self.sess = ort.InferenceSession(
            str(Path(engine_path).with_name("model.onnx")), providers=["CPUExecutionProvider"]
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        type(self).fed.append(x)
        return self.sess.run(None, {"input": x})[0] + type(self).shift


def _fake_tensorrt() -> mock.MagicMock:
    """A stand-in ``tensorrt`` module whose parser accepts the graph and whose builder returns bytes."""
    trt = mock.MagicMock(name="tensorrt")
    trt.OnnxParser.return_value.parse.return_value = True
    trt.OnnxParser.return_value.num_errors = 0
    trt.Builder.return_value.build_serialized_network.return_value = b"engine"
    return trt


def test_tensorrt_engine_gate_runs_on_token_ids(tmp_path, monkeypatch):
    """With a stand-in tensorrt module and runner, the engine path is taken: the engine gate is fed the int64
    token ids in [0, vocab) batch by batch, passes on the right logits and fails (exit 3) on shifted ones."""
    from edgeattn.export import export_model
    from edgeattn.export import tensorrt_target as trt_mod
    from edgeattn.export.report import ParityFailure

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())
    monkeypatch.setattr(trt_mod, "TensorRTRunner", _StandInRunner)
    monkeypatch.setattr(_StandInRunner, "fed", [])
    lm = _lm()
    rep = export_model(lm, "tensorrt", "jetson-orin-trt10", tmp_path / "ok", precision="fp32", n_inputs=4)
    assert [p["runtime"] for p in rep.parity] == ["onnxruntime-noopt", "tensorrt-10"] and rep.passed
    assert (tmp_path / "ok" / "model.engine").read_bytes() == b"engine"
    fed = np.concatenate(_StandInRunner.fed)
    assert fed.dtype == np.int64 and fed.shape == (4, 8) and fed.min() >= 0 and fed.max() < LM["vocab_size"]
    monkeypatch.setattr(_StandInRunner, "shift", 0.1)
    with pytest.raises(ParityFailure) as info:
        export_model(lm, "tensorrt", "jetson-orin-trt10", tmp_path / "bad", precision="fp32", n_inputs=4)
    assert info.value.exit_code == 3 and "tensorrt-10" in str(info.value)


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_exports_a_language_checkpoint_to_tensorrt_and_coreml(tmp_path, capsys):
    """`edgeattn export <tiny_llama checkpoint> -t tensorrt|coreml` used to refuse ("not tensorrt yet"); now
    both exit 0 with a passed report whose input is token ids."""
    import json

    from edgeattn.quant.checkpoint import save_checkpoint

    ckpt = tmp_path / "lm.pt"
    save_checkpoint(ckpt, _lm(), {"model": "tiny_llama", "model_kwargs": dict(LM)})
    cases = [("tensorrt", "jetson-orin-trt10", "int64")]
    try:
        import coremltools  # noqa: F401

        cases.append(("coreml", "apple-a17-coreml", "int32"))
    except ImportError:
        pass
    for target, profile, dtype in cases:
        out = tmp_path / target
        args = ["export", str(ckpt), "-t", target, "-p", profile, "-o", str(out), "--n-inputs", "4"]
        assert main(args) == 0, capsys.readouterr().err
        report = json.loads((out / "report.json").read_text())
        assert report["passed"] and report["inputs"][0]["dtype"] == dtype and report["parity"]
    if len(cases) == 1:
        pytest.skip("coremltools is not installed: the Core ML half did not run")
