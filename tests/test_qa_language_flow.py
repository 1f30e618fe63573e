"""The language-model path (tiny_llama): export to ONNX and OpenVINO with token-id parity, one-line refusals of
vision flags, and the profiler on an LM artifact (TensorRT and Core ML: test_export_language_targets.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeattn.cli import main
from edgeattn.errors import EdgeAttnError
from edgeattn.models import create_model

# a small tiny_llama: 2 layers, dim 32, 2 heads (head dim 16), SwiGLU width 96, vocab 64, 8 positions
LM = {"vocab_size": 64, "seq_len": 8, "dim": 32, "depth": 2, "num_heads": 2}
IMG_SIZE_REFUSAL = (
    "error: --img-size: model 'tiny_llama' takes no image size (a language model: its input is token ids)"
)


def _err_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def _lm_checkpoint(path: Path) -> Path:
    from edgeattn.quant.checkpoint import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(path, create_model("tiny_llama", **LM), {"model": "tiny_llama", "model_kwargs": dict(LM)})
    return path


def test_export_refuses_img_size_for_a_language_model(tmp_path, capsys):
    """--img-size on tiny_llama used to be judged as a vision flag ("takes no argument 'img_size'", or for a
    checkpoint "rebuilt ... with its own img_size"); now one line naming the flag, before anything is built."""
    out = tmp_path / "out"
    assert main(["export", "tiny_llama", "-t", "onnx", "-p", "host-cpu", "--img-size", "32", "-o", str(out)]) == 2
    assert _err_lines(capsys) == [IMG_SIZE_REFUSAL]
    ckpt = _lm_checkpoint(tmp_path / "lm.pt")
    for args in ([str(ckpt)], ["tiny_llama", "--checkpoint", str(ckpt)]):
        code = main(["export", *args, "-t", "openvino", "-p", "host-cpu", "--img-size", "32", "-o", str(out)])
        assert code == 2
        assert _err_lines(capsys) == [IMG_SIZE_REFUSAL]
    for target, profile in (("tensorrt", "jetson-orin-trt10"), ("coreml", "apple-a17-coreml")):
        code = main(["export", str(ckpt), "-t", target, "-p", profile, "--img-size", "32", "-o", str(out)])
        assert code == 2  # every target refuses it (they export language models: test_export_language_targets.py)
        assert _err_lines(capsys) == [IMG_SIZE_REFUSAL]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm.pt"]  # nothing staged or half-written


def test_export_refuses_an_in_memory_module_that_cannot_take_the_input(tmp_path):
    """A module whose forward takes token ids and that says neither input_size nor vocab_size/seq_len used to die
    in PTQ with torch's RuntimeError (a traceback); now one EdgeAttnError naming the input it was given."""
    from edgeattn.export import export_model

    lm = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4))
    with pytest.raises(EdgeAttnError) as info:
        export_model(lm, "onnx", "host-cpu", tmp_path / "o")
    assert info.value.exit_code == 2
    assert str(info.value).startswith("the model cannot run on the export input, float32 [1, 3, 224, 224] (")
    assert "'indices'" in str(info.value)  # torch's own reason, first line
    assert list(tmp_path.iterdir()) == []
    lm.vocab_size, lm.seq_len = 10, 4  # the example_input convention for language models: token ids (B, 4)
    rep = export_model(lm, "onnx", "host-cpu", tmp_path / "o", precision="fp32", n_inputs=4)
    assert rep.passed and rep.inputs[0] == {"name": "input", "shape": [1, 4], "dtype": "int64"}


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_a_token_model_exports_with_token_id_parity(tmp_path, target):
    """A token-id model exports to ONNX and OpenVINO: int64 ids in [0, vocab) as the input, PTQ calibrated on
    token ids, the gate passing; ONNX Runtime's logits on other ids equal a float64 run of the model."""
    import onnxruntime as ort
    from edgeattn.export import export_model

    torch.manual_seed(0)
    lm = create_model("tiny_llama", **LM).eval()
    fp32 = export_model(lm, target, "host-cpu", tmp_path / "fp32", precision="fp32", n_inputs=8, force=True)
    int8 = export_model(lm, target, "host-cpu", tmp_path / "int8", n_inputs=8, force=True)
    for rep in (fp32, int8):
        assert rep.passed and rep.inputs[0]["dtype"] == "int64" and rep.inputs[0]["shape"][1:] == [8]
        assert rep.parity_inputs == {"random": 8, "real": 0}  # vocab 64 < 256: no byte text
    assert int8.precision == "int8" and any("PTQ" in note for note in int8.notes)
    onnx_path = tmp_path / "fp32" / "model.onnx"
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(1).integers(0, 64, (1, 8))
    got = sess.run(None, {sess.get_inputs()[0].name: ids})[0]
    with torch.no_grad():
        want = lm.double()(torch.from_numpy(ids)).numpy()  # float64 reference
    assert got.shape == (1, 8, 64) and np.abs(got - want).max() < 1e-4 * np.ptp(want)


def test_a_byte_vocabulary_model_is_checked_on_real_text(tmp_path):
    """With every byte in the vocabulary, half the parity inputs are windows of the standard library's source."""
    from edgeattn.export import export_model

    from edgeattn.data import stdlib_corpus

    torch.manual_seed(0)
    lm = create_model("tiny_llama", **{**LM, "vocab_size": 256}).eval()
    rep = export_model(lm, "onnx", "host-cpu", tmp_path / "o", precision="fp32", n_inputs=8, force=True)
    assert rep.passed and rep.parity_inputs == {"random": 4, "real": 4}
    real = stdlib_corpus(seq_len=8, split="val", seed=0).tensors[0][:4].numpy()
    assert real.max() < 256 and len(np.unique(real)) > 8  # text, not one repeated id


def test_export_img_size_zero_is_refused_not_dropped(tmp_path, capsys):
    """`--img-size 0` was falsy and silently exported at the profile's 224 px."""
    out = tmp_path / "o"
    assert main(["export", "vit_tiny", "-t", "onnx", "-p", "host-cpu", "--img-size", "0", "-o", str(out)]) == 2
    assert _err_lines(capsys) == ["error: vit: img_size must be a positive integer, got 0"]
    assert not out.exists()


def _lm_onnx(path: Path) -> nn.Module:
    """tiny_llama (LM) exported with a dynamic batch and sequence axis, as a user would do by hand."""
    torch.manual_seed(0)
    model = create_model("tiny_llama", **LM).eval()
    ids = torch.randint(0, LM["vocab_size"], (2, LM["seq_len"]))
    torch.onnx.export(
        model,
        (ids,),
        str(path),
        input_names=["input_ids"],
        output_names=["logits"],
        dynamic_axes={"input_ids": {0: "b", 1: "t"}, "logits": {0: "b", 1: "t"}},
        opset_version=17,
        dynamo=False,
    )
    return model


def _lm_macs(b: int, t: int) -> int:
    """MACs of one tiny_llama forward at (b, t), by hand: per layer qkv, o_proj, SwiGLU (gate, up, down) per
    token, and per head Q @ K^T and P @ V (t x t x head_dim each); lm_head per token."""
    d, h, v, depth = LM["dim"], LM["num_heads"], LM["vocab_size"], LM["depth"]
    hidden = 32 * -(-(8 * d // 3) // 32)  # LLaMA's SwiGLU width rule, 96 here
    per_token = d * 3 * d + d * d + 2 * d * hidden + hidden * d
    attention = 2 * h * t * t * (d // h)
    return b * (depth * (t * per_token + attention) + t * d * v)


@pytest.mark.filterwarnings("ignore")
def test_profile_describes_an_lm_artifact_and_counts_its_macs(tmp_path, capfd):
    """Profiling a token-id ONNX: int64 inputs reported as such, MACs equal to the hand count at two shapes
    (at batch 1 ONNX's shape inference left the 4 attention MatMuls unresolved: 229376 of 237568 MACs), and
    the integer feeds (0/1) are valid ids: ONNX Runtime's logits equal PyTorch's on them."""
    import onnxruntime as ort

    from edgeattn.profile import profile_artifacts
    from edgeattn.profile.runners import make_input

    model = _lm_onnx(tmp_path / "lm.onnx")
    for b, t in ((1, 8), (3, 5)):
        rep = profile_artifacts([tmp_path / "lm.onnx"], warmup=1, iters=3, threads=1, shapes={"input_ids": [b, t]})
        res = rep.results[0]
        assert res.input_shapes == {"input_ids": [b, t]} and res.input_dtypes == {"input_ids": "int64"}
        assert res.efficiency.macs == _lm_macs(b, t)
        assert "unresolved" not in res.efficiency.macs_source
    ids = make_input([3, 5], np.int64, seed=0)
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < LM["vocab_size"]
    sess = ort.InferenceSession(str(tmp_path / "lm.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(torch.from_numpy(ids)).numpy()  # float64 reference
    out = sess.run(None, {"input_ids": ids})[0]
    assert out.shape == (3, 5, LM["vocab_size"])
    assert np.max(np.abs(out - ref)) < 1e-4 * np.ptp(ref) + 1e-6  # float32 runtime vs float64 of torch
    capfd.readouterr()


@pytest.mark.filterwarnings("ignore")
def test_profile_sequence_beyond_max_positions_is_one_line(tmp_path, capfd):
    """--shape input_ids=1x9 on an 8-position model: ONNX Runtime fails inside RoPE. edgeattn said so in one
    line, but ORT's own logger printed its error first (3 lines on stderr)."""
    _lm_onnx(tmp_path / "lm.onnx")
    capfd.readouterr()
    js = tmp_path / "p.json"
    args = ["profile", str(tmp_path / "lm.onnx"), "--iters", "2", "--warmup", "0", "--threads", "1"]
    assert main([*args, "--shape", "input_ids=1x9", "--json", str(js)]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    head = f"error: '{tmp_path / 'lm.onnx'}' failed to run on inputs {{'input_ids': [1, 9]}}: [ONNXRuntimeError]"
    assert len(err) == 1 and err[0].startswith(head)
    assert not js.exists()
    assert main([*args, "--shape", "input_ids=1x0"]) == 2
    assert capfd.readouterr().err.strip().splitlines() == [
        "error: --shape 'input_ids=1x0' is not NAME=D0xD1x... with dimensions >= 1 (e.g. input=1x3x224x224)"
    ]
    assert main([*args, "--shape", "input_ids=1x1", "--json", str(js)]) == 0  # one token is a valid sequence
    assert json.loads(js.read_text())["results"][0]["input_dtypes"] == {"input_ids": "int64"}
