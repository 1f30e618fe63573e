"""export_model / export_all called from Python: given inputs set the export shape, bad input is one line.

References: the artifact is run in ONNX Runtime and compared with the module recomputed in numpy float64; file
trees are compared byte for byte before and after a refused run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from edgeattn.export import export_all, export_model
from torch import nn

from edgeattn.cli import main
from edgeattn.errors import EdgeAttnError

RNG = np.random.default_rng(7)


class UserConvNet(nn.Module):
    """A user's vision module without ``input_size``: any H x W goes (global average pool)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((2, 3)))


class Sized(UserConvNet):
    """The same module, declaring the (C, H, W) it is exported with."""

    input_size = (3, 16, 16)


class PairOut(UserConvNet):
    def forward(self, x: torch.Tensor):
        y = super().forward(x)
        return y, y


class DictOut(UserConvNet):
    def forward(self, x: torch.Tensor):
        return {"logits": super().forward(x)}


class DivZero(UserConvNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) / 0.0


class Svd(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svdvals(x)


def _onnx_input_dims(path: Path) -> list[int]:
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value for d in dims]


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])


def _conv_net_f64(m: UserConvNet, x: np.ndarray) -> np.ndarray:
    """UserConvNet's forward in numpy float64 (3x3 conv, padding 1, then mean and the linear head)."""
    w = m.conv.weight.detach().double().numpy()
    b = m.conv.bias.detach().double().numpy()
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, wd = x.shape[2], x.shape[3]
    conv = np.zeros((len(x), w.shape[0], h, wd))
    for i in range(3):
        for j in range(3):
            conv += np.einsum("nchw,oc->nohw", xp[:, :, i : i + h, j : j + wd], w[:, :, i, j])
    pooled = conv.mean((2, 3)) + b
    return pooled @ m.head.weight.detach().double().numpy().T + m.head.bias.detach().double().numpy()


def _tree(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


# ---------------------------------------------------------------------------------------------------------
# defect 1: given inputs set the export shape of a module without input_size
# ---------------------------------------------------------------------------------------------------------
def test_given_inputs_set_export_shape(tmp_path):
    x = RNG.standard_normal((4, 3, 12, 20)).astype(np.float32)
    m = UserConvNet()
    out = tmp_path / "o"
    report = export_model(m, "onnx", "host-cpu", out, precision="fp32", n_inputs=4, inputs=x)
    assert report.inputs[0]["shape"] == [1, 3, 12, 20]
    assert json.loads((out / "report.json").read_text())["inputs"][0]["shape"] == [1, 3, 12, 20]
    assert _onnx_input_dims(out / "model.onnx") == [1, 3, 12, 20]
    got = _run_onnx(out / "model.onnx", x)
    assert np.abs(got - _conv_net_f64(m, x)).max() < 1e-5


def test_non_image_module_takes_given_inputs(tmp_path):
    torch.manual_seed(1)
    m = nn.Linear(10, 3)
    x = RNG.standard_normal((4, 10)).astype(np.float32)
    out = tmp_path / "o"
    report = export_model(m, "onnx", "host-cpu", out, precision="fp32", n_inputs=4, inputs=x)
    assert report.inputs[0]["shape"] == [1, 10] and _onnx_input_dims(out / "model.onnx") == [1, 10]
    want = x.astype(np.float64) @ m.weight.detach().double().numpy().T + m.bias.detach().double().numpy()
    assert np.abs(_run_onnx(out / "model.onnx", x) - want).max() < 1e-5


def test_int8_calibrates_at_the_given_shape_and_says_on_what(tmp_path):
    from edgeattn.data import digits_dataset

    x = RNG.standard_normal((4, 3, 16, 16)).astype(np.float32)
    out = tmp_path / "o"
    report = export_model(UserConvNet(), "onnx", "host-cpu", out, precision="int8", n_inputs=4, inputs=x)
    assert report.inputs[0]["shape"] == [1, 3, 16, 16] and _onnx_input_dims(out / "model.onnx") == [1, 3, 16, 16]
    n = min(64, len(digits_dataset(img_size=16, in_chans=3, split="train", seed=0).tensors[0]))
    assert n == 64
    assert f"PTQ calibrated on {n} digits images at 16x16; pass calib_inputs= for your own data" in report.notes
    # given calibration data: no stand-in to mention
    own = export_model(
        UserConvNet(), "onnx", "host-cpu", tmp_path / "c", precision="int8", n_inputs=4, inputs=x, calib_inputs=x
    )
    assert not [n for n in own.notes if n.startswith("PTQ calibrated on")]


def test_cli_records_the_same_calibration_note(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["export", "vit_tiny", "-t", "onnx", "-p", "host-cpu", "-o", str(out), "--img-size", "32"]
    assert main([*argv, "--n-inputs", "4", "--precision", "int8"]) == 0
    notes = json.loads((out / "report.json").read_text())["notes"]
    assert "PTQ calibrated on 64 digits images at 32x32; pass calib_inputs= for your own data" in notes


def test_inputs_that_do_not_match_input_size_are_refused(tmp_path):
    out = tmp_path / "o"
    x = RNG.standard_normal((4, 3, 8, 8)).astype(np.float32)
    with pytest.raises(EdgeAttnError) as err:
        export_model(Sized(), "onnx", "host-cpu", out, precision="fp32", n_inputs=4, inputs=x)
    assert str(err.value) == (
        "inputs: samples of shape [3, 8, 8] do not match the model's input_size [3, 16, 16]; "
        "give inputs of shape (N, 3, 16, 16)"
    )
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# defect 2: non-finite inputs or reference
# ---------------------------------------------------------------------------------------------------------
def test_nonfinite_inputs_refused_and_good_artifact_kept(tmp_path):
    out = tmp_path / "o"
    x = RNG.standard_normal((4, 3, 16, 16)).astype(np.float32)
    export_model(UserConvNet(), "onnx", "host-cpu", out, precision="fp32", n_inputs=4, inputs=x)
    before = _tree(out)
    bad = np.full((4, 3, 16, 16), np.nan, np.float32)
    bad[0, 0, 0, 0] = 1.0  # 4*3*16*16 - 1 = 3071 NaNs
    with pytest.raises(EdgeAttnError) as err:
        export_model(UserConvNet(), "onnx", "host-cpu", out, precision="fp32", n_inputs=4, inputs=bad, force=True)
    assert str(err.value) == "inputs holds 3071 non-finite value(s) (NaN or inf) of 3072; give finite samples"
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no staging folder left


def test_nonfinite_reference_refused_before_staging(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(EdgeAttnError) as err:
        export_model(DivZero(), "onnx", "host-cpu", out, precision="fp32", n_inputs=4)
    # 4 inputs x 5 logits, all +-inf or NaN after / 0.0
    assert str(err.value).startswith("DivZero's torch output on the parity inputs is not finite (20 of 20 values")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# defect 3: one tensor output
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cls", "kind"), [(PairOut, "tuple"), (DictOut, "dict")])
def test_non_tensor_output_is_one_line(tmp_path, cls, kind):
    with pytest.raises(EdgeAttnError) as err:
        export_model(cls(), "onnx", "host-cpu", tmp_path / "o", precision="fp32", n_inputs=4)
    assert str(err.value) == f"export takes a model with one tensor output; got {kind}"
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# defect 5: the exporter's C++ log stays quiet
# ---------------------------------------------------------------------------------------------------------
def test_unsupported_op_prints_nothing_but_the_error(tmp_path, capfd):
    x = RNG.standard_normal((4, 3, 8, 8)).astype(np.float32)
    with pytest.raises(EdgeAttnError) as err:
        export_model(Svd(), "onnx", "host-cpu", tmp_path / "o", precision="fp32", n_inputs=4, inputs=x)
    assert "aten::linalg_svdvals" in str(err.value) and err.value.exit_code == 5
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    print("after")  # the descriptors are back
    assert capfd.readouterr().out == "after\n"


# ---------------------------------------------------------------------------------------------------------
# defect 6: wrong argument types
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch": "2"}, "batch must be an integer or None, got '2' (str)"),
        ({"n_inputs": "4"}, "n_inputs must be an integer, got '4' (str)"),
        ({"seed": "x"}, "seed must be an integer, got 'x' (str)"),
        ({"batch": True}, "batch must be an integer or None, got True (bool)"),
        ({"atol": "0.1"}, "atol must be a number or None, got '0.1' (str)"),
        ({"exporter": "foo"}, "exporter must be torchscript or dynamo, got 'foo'"),
        ({"inputs": [[1, 2], [3]]}, None),
    ],
)
def test_wrong_argument_types_are_one_line(tmp_path, kwargs, message):
    out = tmp_path / "o"
    with pytest.raises(EdgeAttnError) as err:
        export_model(UserConvNet(), "onnx", "host-cpu", out, precision="fp32", **{"n_inputs": 4, **kwargs})
    if message is not None:
        assert str(err.value) == message
    else:
        assert str(err.value).startswith("inputs must be an array of samples")
    assert err.value.exit_code == 2 and not out.exists()


@pytest.mark.parametrize(("model", "kind"), [(None, "NoneType"), (3, "int")])
def test_model_of_wrong_type(tmp_path, model, kind):
    with pytest.raises(EdgeAttnError) as err:
        export_model(model, "onnx", "host-cpu", tmp_path / "o", n_inputs=4)
    assert str(err.value) == (
        f"model must be a registry model name, a checkpoint path or a torch nn.Module, got {kind}"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"targets": None}, "targets must be a target name or a list of them, got None"),
        ({"targets": ["onnx"], "n_input": 4}, "export_all got an unexpected argument 'n_input'"),
        ({"targets": ["onnx"], "threads": "2"}, "threads must be an integer, got '2' (str)"),
    ],
)
def test_export_all_wrong_arguments(tmp_path, kwargs, message):
    with pytest.raises(EdgeAttnError) as err:
        export_all(UserConvNet(), tmp_path / "all", **kwargs)
    assert str(err.value) == message
    assert list(tmp_path.iterdir()) == []
