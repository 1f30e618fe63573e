"""QA of the Python API of ``edgeattn.fpga_hls`` (what the CLI's typed flags never reach).

- ``estimate_model`` and ``generate_project`` leave every module of the caller's model in its own training mode;
- ``vectors`` is capped as ``edgeattn export`` caps its parity inputs (``MAX_N_INPUTS``), in the API and the CLI;
- ``LayerShape`` refuses sizes no accelerator has; ``estimate`` takes a DeviceProfile for its ``hls`` section;
- a NaN or inf weight is named and counted as non-finite, not reported as a width to widen;
- ``generate_project`` and ``run_csim`` refuse arguments of the wrong type or range in one line, before any work.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from edgeattn.export.api import MAX_N_INPUTS
from edgeattn.fpga_hls import HLSFormats, LayerShape, estimate, estimate_model, generate_project, run_csim
from edgeattn.fpga_hls import generator as gen_mod
from edgeattn.fpga_hls.csim import compile_testbench
from edgeattn.fpga_hls.extract import layer_params

from edgeattn.cli import main
from edgeattn.device_profile import load_profile
from edgeattn.errors import EdgeAttnError, ProfileError
from edgeattn.models import create_model

PROFILE = "zcu102-hls"
SHAPE = {"tokens": 17, "dim": 192, "heads": 3, "hidden": 768}


def _tiny() -> torch.nn.Module:
    return create_model("vit_tiny", img_size=32, depth=2)


def _flags(model: torch.nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def _no_work(*_a, **_k):
    raise AssertionError("the argument was not refused before the model was resolved")


# ----------------------------------------------------------------------------------------------- training flags
def _train_modes() -> list[torch.nn.Module]:
    all_train = _tiny().train()
    mixed = _tiny().train()
    mixed.blocks[0].attn.eval()  # e.g. a frozen part of a model being fine-tuned
    return [all_train, mixed]


@pytest.mark.parametrize("which", [0, 1], ids=["train", "one-submodule-eval"])
def test_estimate_model_keeps_the_training_flags(which):
    model = _train_modes()[which]
    before = _flags(model)
    estimate_model(model, PROFILE)
    assert _flags(model) == before


@pytest.mark.parametrize("which", [0, 1], ids=["train", "one-submodule-eval"])
def test_generate_project_keeps_the_training_flags(tmp_path, which):
    model = _train_modes()[which]
    before = _flags(model)
    # numbers of other types than float are bounds too (numpy's, an int)
    tolerance = {"max_abs": np.float32(0.2), "min_cosine": None}
    info = generate_project(model, PROFILE, tmp_path / "prj", vectors=1, tolerance=tolerance)
    assert _flags(model) == before
    assert (tmp_path / "prj" / "project.json").is_file() and info.gate["tolerance"]["max_abs"] == pytest.approx(0.2)


# ------------------------------------------------------------------------------------------------ vectors cap
@pytest.mark.parametrize("vectors", [MAX_N_INPUTS + 1, 10**9])
def test_vectors_is_capped_before_any_work(tmp_path, monkeypatch, vectors):
    monkeypatch.setattr(gen_mod, "_resolve_target", _no_work)
    with pytest.raises(EdgeAttnError, match=rf"^vectors must be <= {MAX_N_INPUTS} \(--vectors\), got {vectors}$"):
        generate_project(_tiny(), PROFILE, tmp_path / "prj", vectors=vectors)
    assert not (tmp_path / "prj").exists()


def test_cli_vectors_is_capped_as_the_api(tmp_path, capsys):
    prj = tmp_path / "prj"
    args = ["hls", "vit_tiny", "-o", str(prj), "--set", "img_size=32", "--set", "depth=2", "--vectors", "1000000000"]
    assert main(args) == 2
    assert f"vectors must be <= {MAX_N_INPUTS} (--vectors), got 1000000000" in capsys.readouterr().err
    assert not prj.exists()


# ------------------------------------------------------------------------------------------- LayerShape, estimate
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tokens": -5}, "tokens must be a positive integer, got -5"),
        ({"tokens": 0}, "tokens must be a positive integer, got 0"),
        ({"heads": 0}, "heads must be a positive integer, got 0"),
        ({"dim": 190}, "dim 190 must be a multiple of heads 3"),
        ({"hidden": True}, "hidden must be a positive integer, got True"),
        ({"dim": 192.0}, "dim must be a positive integer, got 192.0"),
        ({"depth": 0}, "depth must be a positive integer, got 0"),
        ({"experts": -1}, "experts must be an integer >= 0, got -1"),
        ({"experts": 4, "top_k": 5, "moe_layers": 1}, "top_k must be in 1..experts"),
        ({"experts": 4, "top_k": 2, "moe_layers": 2}, "moe_layers must be in 1..depth"),
        ({"ln_eps": float("nan")}, "ln_eps must be a finite number >= 0, got nan"),
    ],
)
def test_layer_shape_refuses_sizes_no_accelerator_has(change, message):
    with pytest.raises(EdgeAttnError, match=f"^LayerShape: {message}"):
        LayerShape(**{**SHAPE, **change})


def test_estimate_takes_a_device_profile_for_its_hls_section():
    prof = load_profile(PROFILE)
    fmt = HLSFormats.from_profile(prof.hls)
    shape = LayerShape(**SHAPE)
    assert estimate(shape, prof, fmt) == estimate(shape, prof.hls, fmt)
    with pytest.raises(ProfileError, match="not 'hls'"):
        estimate(shape, load_profile("host-cpu"), fmt)
    with pytest.raises(EdgeAttnError, match=r"hls must be a profile's hls section \(profile.hls\) or a DeviceProfile"):
        estimate(shape, PROFILE, fmt)


# ------------------------------------------------------------------------------------------- non-finite weights
@pytest.mark.parametrize(
    ("tensor", "value", "count"),
    [("blocks.0.attn.qkv.weight", math.nan, "1 NaN"), ("head.bias", math.inf, "1 inf")],
)
def test_a_non_finite_weight_is_named_and_counted(tmp_path, tensor, value, count):
    model = _tiny()
    with torch.no_grad():
        model.get_parameter(tensor).view(-1)[0] = value
    with pytest.raises(EdgeAttnError) as err:
        generate_project(model, PROFILE, tmp_path / "prj", vectors=1, layer=None)
    msg = str(err.value)
    assert "non-finite" in msg and f"{count} in 1 tensor, first: {tensor}" in msg and "widen" not in msg
    assert not (tmp_path / "prj").exists()


def test_extract_names_a_non_finite_tensor():
    block = _tiny().blocks[0]
    with torch.no_grad():
        block.mlp.fc1.weight[0, :3] = math.nan
    fmt = HLSFormats.from_profile(load_profile(PROFILE).hls)
    with pytest.raises(EdgeAttnError, match=r"^blocks\.0\.mlp\.fc1\.weight holds 3 non-finite value\(s\)"):
        layer_params(block, fmt, "blocks.0")


# -------------------------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"force": "yes"}, "force must be True or False, got 'yes' (str)"),
        ({"force": 1}, "force must be True or False, got 1 (int)"),
        ({"model_name": 3}, "model_name must be a string or None, got 3 (int)"),
        ({"check": 3}, "check must be a callable taking the project folder, or None, got 3"),
        ({"tolerance": {"max_abs": "abc"}}, "tolerance['max_abs'] must be a number, got 'abc' (str)"),
        ({"tolerance": {"max_abs": True}}, "tolerance['max_abs'] must be a number, got True (bool)"),
        ({"tolerance": {"max_abs": -0.1}}, "tolerance['max_abs'] must be a number > 0"),
        ({"tolerance": {"max_abs": math.inf}}, "tolerance['max_abs'] must be a number > 0"),
        ({"tolerance": {"min_cosine": math.nan}}, "tolerance['min_cosine'] must be in [-1, 1], got nan"),
        ({"tolerance": {"min_cosine": "0.9"}}, "tolerance['min_cosine'] must be a number, got '0.9' (str)"),
        ({"out_dir": 3}, "out_dir must be a path (str or os.PathLike), got 3 (int)"),
        ({"out_dir": None}, "out_dir must be a path (str or os.PathLike), got None (NoneType)"),
    ],
)
def test_generate_project_refuses_bad_arguments_before_any_work(tmp_path, monkeypatch, kwargs, message):
    monkeypatch.setattr(gen_mod, "_resolve_target", _no_work)
    kwargs = {"out_dir": tmp_path / "prj", **kwargs}
    with pytest.raises(EdgeAttnError) as err:
        generate_project(_tiny(), PROFILE, **kwargs)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("timeout", [-1, 0, math.nan, math.inf, "10", True])
@pytest.mark.parametrize("func", [run_csim, compile_testbench])
def test_csim_timeout_must_be_a_positive_finite_number(tmp_path, func, timeout):
    message = rf"^{func.__name__}: timeout must be a positive number, got .* \(seconds\)$"
    with pytest.raises(EdgeAttnError, match=message):
        func(tmp_path, timeout=timeout)


def test_run_csim_project_dir_must_be_a_path():
    with pytest.raises(EdgeAttnError, match=r"^project_dir must be a path \(str or os.PathLike\), got 3 \(int\)$"):
        run_csim(3)
