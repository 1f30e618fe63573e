"""Swapping softmax/GELU approximations into a model, and the profile's ``approx`` reaching export and QAT."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgeattn.approx import ApproxGELU, ApproxSoftmax, approximations_in, set_approximations
from edgeattn.cli import main
from edgeattn.errors import EdgeAttnError
from edgeattn.models import approximation_kwargs, create_model

HOST = Path(__file__).resolve().parents[1] / "profiles" / "host-cpu.yaml"


def _profile(tmp_path: Path, softmax: str, gelu: str, side: int = 32) -> Path:
    """host-cpu's settings under another name, at ``side`` px, deploying these approximations."""
    text = HOST.read_text()
    text = text.replace("name: host-cpu", "name: approx-cpu").replace(
        "approx: {softmax: exact, gelu: exact}", f"approx: {{softmax: {softmax}, gelu: {gelu}}}"
    )
    text = text.replace("[1, 3, 224, 224]", f"[1, 3, {side}, {side}]")
    path = tmp_path / f"approx-{softmax}-{gelu}.yaml"
    path.write_text(text)
    return path


class UserBlock(nn.Module):
    """A user's own block: torch's Softmax and GELU modules, and one of ours."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = nn.GELU()
        self.inner = nn.Sequential(nn.Linear(8, 8), nn.GELU(approximate="tanh"))
        self.attn = nn.Softmax(dim=-1)
        self.ours = ApproxSoftmax("exact", dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inner(self.act(self.fc(x)))
        return self.attn(h) + self.ours(h)


def _gelu_tanh_f64(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def test_set_approximations_swaps_torch_and_own_modules():
    torch.manual_seed(0)
    model = UserBlock()
    x = torch.randn(4, 8)
    # torch's modules read as the methods they compute (nn.GELU(approximate="tanh") is the tanh formula)
    assert approximations_in(model) == {"softmax": {"exact"}, "gelu": {"exact", "tanh"}}
    counts = set_approximations(model, softmax="base2", gelu="tanh")
    assert counts == {"softmax": 2, "gelu": 2}
    assert isinstance(model.act, ApproxGELU) and isinstance(model.inner[1], ApproxGELU)
    assert isinstance(model.attn, ApproxSoftmax) and model.attn.dim == -1 and model.ours.dim == 1
    assert approximations_in(model) == {"softmax": {"base2"}, "gelu": {"tanh"}}
    # the swapped GELU is the tanh formula, checked in float64
    h = model.fc(x).double().detach().numpy()
    got = model.act(model.fc(x)).detach().numpy()
    np.testing.assert_allclose(got, _gelu_tanh_f64(h), rtol=1e-5, atol=1e-6)
    # base2 softmax: rows sum to ~1, close to (but not equal to) the exact softmax
    s = model.attn(model.fc(x)).detach().numpy()
    exact = torch.softmax(model.fc(x), -1).detach().numpy()
    assert np.abs(s.sum(-1) - 1).max() < 0.02
    assert 0 < np.abs(s - exact).max() < 0.02


def test_set_approximations_leaves_what_is_not_asked():
    model = UserBlock()
    assert set_approximations(model, gelu="ibert") == {"softmax": 0, "gelu": 2}
    assert isinstance(model.attn, nn.Softmax) and model.ours.method == "exact"
    assert set_approximations(nn.Linear(2, 2), softmax="ibert") == {"softmax": 0, "gelu": 0}


def test_set_approximations_refuses_bad_input():
    with pytest.raises(ValueError, match="unknown softmax method 'fast'"):
        set_approximations(UserBlock(), softmax="fast")
    with pytest.raises(ValueError, match="unknown gelu method 'erf'"):
        set_approximations(UserBlock(), gelu="erf")
    legacy = nn.Sequential(nn.Linear(2, 2), nn.Softmax())
    with pytest.raises(ValueError, match="nn.Softmax '1' has no dim"):
        set_approximations(legacy, softmax="ibert")


def test_approximation_kwargs_per_model():
    assert approximation_kwargs("fmvit_t", "ibert", "edgemoe") == {"softmax": "ibert", "gelu": "edgemoe"}
    assert approximation_kwargs("fmvit_t", "exact", "edgemoe") == {"gelu": "edgemoe"}
    assert approximation_kwargs("tiny_llama", "online", "edgemoe") == {"softmax": "online"}  # SwiGLU: no GELU
    assert approximation_kwargs("mobilenetv2", "ibert", "edgemoe") == {}  # no softmax, no GELU
    assert approximation_kwargs("mobilenetv2_ulsam", "ibert", "edgemoe") == {"softmax": "ibert"}  # ULSAM's map
    model = create_model("vit_tiny", img_size=32, **approximation_kwargs("vit_tiny", "ibert", "sigmoid"))
    assert approximations_in(model) == {"softmax": {"ibert"}, "gelu": {"sigmoid"}}


def test_ulsam_softmax_is_swapped_like_an_attention_blocks():
    """mobilenetv2_ulsam's three ULSAM maps are its softmax: built with a method, or switched afterwards."""
    from edgeattn.blocks import ULSAM

    built = create_model("mobilenetv2_ulsam", img_size=32, num_classes=10, softmax="shift")
    assert approximations_in(built) == {"softmax": {"shift"}, "gelu": set()}
    plain = create_model("mobilenetv2_ulsam", img_size=32, num_classes=10)
    assert set_approximations(plain, softmax="shift", gelu="tanh") == {"softmax": 3, "gelu": 0}
    assert all(m.softmax.method == "shift" for m in plain.modules() if isinstance(m, ULSAM))
    # the same weights give the same output either way
    plain.load_state_dict(built.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(plain.eval()(x), built.eval()(x))
    with pytest.raises(ValueError, match="softmax='ibert' needs attention='ulsam'"):
        create_model("mobilenetv2", softmax="ibert")


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_export_builds_a_registry_model_with_the_profiles_approximations(tmp_path):
    from edgeattn.export import export_model

    reps = {}
    for softmax, gelu in (("exact", "exact"), ("ibert", "edgemoe")):
        prof = _profile(tmp_path, softmax, gelu)
        out = tmp_path / f"vit_{softmax}"
        reps[softmax] = export_model("vit_tiny", "onnx", prof, out, precision="fp32", n_inputs=4, seed=0)
        assert reps[softmax].passed
        ops = _ops(out / "model.onnx")
        if softmax == "exact":
            assert "Softmax" in ops and "Erf" in ops
        else:  # i-exp softmax and the table GELU: no Softmax or Erf node, a Floor and a table Gather instead
            assert "Softmax" not in ops and "Erf" not in ops and {"Floor", "Gather"} <= ops


def test_export_refuses_a_trained_model_with_other_approximations(tmp_path, capsys):
    from edgeattn.export import export_model

    prof = _profile(tmp_path, "ibert", "exact")
    model = create_model("vit_tiny", img_size=32)  # exact softmax
    wanted = "the model computes softmax with exact, but profile 'approx-cpu' deploys softmax 'ibert': switch it with"
    with pytest.raises(EdgeAttnError, match=wanted):
        export_model(model, "onnx", prof, tmp_path / "x", precision="fp32", n_inputs=2)
    assert not (tmp_path / "x").exists()
    # torch's own nn.Softmax computes the exact softmax too
    torch_softmax = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10), nn.Softmax(dim=-1))
    with pytest.raises(EdgeAttnError, match=wanted):
        export_model(torch_softmax, "onnx", prof, tmp_path / "x", precision="fp32", n_inputs=2)
    assert not (tmp_path / "x").exists()
    # a checkpoint through the CLI: one line, exit 2, nothing written
    from edgeattn.quant.checkpoint import save_checkpoint

    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model, {"model": "vit_tiny", "model_kwargs": {"img_size": 32}})
    capsys.readouterr()
    rc = main(["export", str(ckpt), "--target", "onnx", "--profile", str(prof), "-o", str(tmp_path / "y")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"checkpoint '{ckpt}' computes softmax with exact" in err and "edgeattn qat --profile approx-cpu" in err
    assert not (tmp_path / "y").exists()


def test_qat_builds_its_model_with_the_profiles_approximations(tmp_path):
    from edgeattn.quant.train import TrainConfig, model_kwargs_for

    info = {"task": "vision", "num_classes": 10}
    prof = _profile(tmp_path, "shift", "sigmoid")
    cfg = TrainConfig(model="fmvit_t", profile=str(prof))
    assert model_kwargs_for(cfg, info) == {
        "num_classes": 10,
        "in_chans": cfg.in_chans,
        "img_size": cfg.img_size,
        "softmax": "shift",
        "gelu": "sigmoid",
    }
    explicit = TrainConfig(model="fmvit_t", profile=str(prof), model_kwargs={"gelu": "tanh"})
    assert model_kwargs_for(explicit, info)["gelu"] == "tanh"  # the run's own model_kwargs win
    assert "softmax" not in model_kwargs_for(TrainConfig(model="fmvit_t"), info)  # host-cpu: exact



def test_an_fp_checkpoint_trained_exact_is_refused_by_name_for_an_approx_run():
    """The FP checkpoint's meta leaves the default methods out: the refusal says 'exact', not '<unset>'."""
    from edgeattn.quant.train import TrainConfig, _check_fp_meta

    cfg = TrainConfig(model="fmvit_t")
    meta = {"model": "fmvit_t", "model_kwargs": {"num_classes": 10, "in_chans": 3, "img_size": 32}}
    run_kwargs = {**meta["model_kwargs"], "softmax": "ibert"}
    with pytest.raises(EdgeAttnError, match=r"model_kwargs.softmax='exact', this run has 'ibert'"):
        _check_fp_meta(meta, "fp.pt", cfg, run_kwargs, {}, warn=False)
    _check_fp_meta(meta, "fp.pt", cfg, dict(meta["model_kwargs"]), {}, warn=False)  # the same model: accepted
