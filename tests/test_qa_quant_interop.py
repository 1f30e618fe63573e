"""Quantized models with load_state_dict, calibrate and the checkpoint API (QA sweep of quantized-model interop).

brevitas rebuilds each quantizer from its injector on every load_state_dict and keeps a step counter that decides
whether statistics are collected; these tests pin down what edgeattn makes of that. Each fails on the code before
the sweep."""

from __future__ import annotations

import pytest
import torch
from edgeattn.quant import QuantConfig, calibrate, quantize_model
from edgeattn.quant.adaptive import strip_token_adaptive
from edgeattn.quant.checkpoint import load_checkpoint, model_state_dict, save_checkpoint
from edgeattn.quant.quantize import held_bits
from torch import nn

from edgeattn.models import create_model

VIT = {"img_size": 32, "patch_size": 8, "depth": 1}
META = {"model": "vit_tiny", "model_kwargs": VIT}


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return create_model("vit_tiny", **VIT).eval()


def _batch(scale: float = 1.0, seed: int = 1) -> list[torch.Tensor]:
    return [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * scale]


def _calibrated(cfg: QuantConfig | None = None) -> nn.Module:
    model = quantize_model(_vit(), cfg or QuantConfig())
    calibrate(model, _batch())
    return model


def _input_scale(model: nn.Module) -> float:
    return model.patch_embed.input_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl.value.item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("cfg", [QuantConfig(), QuantConfig(token_adaptive=True)], ids=["w8a8", "ta"])
def test_a_cast_quantized_model_keeps_its_dtype_through_load_state_dict(cfg, dtype):
    """Quantized in float32, cast, then loaded (its own state dict): every quantizer came back float32 and the next
    forward was refused ('Mlp expects a float32 input') or failed inside torch."""
    model = _calibrated(cfg).to(dtype)
    x = torch.randn(2, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        before = model(x)
    model.load_state_dict(model_state_dict(model))
    assert {t.dtype for t in model.state_dict().values() if t.is_floating_point()} == {dtype}
    with torch.no_grad():
        assert torch.equal(model(x), before)


@pytest.mark.parametrize("assign", [False, True])
def test_a_quantized_model_built_on_meta_loads_the_reference_weights(assign):
    """meta -> quantize_model -> to_empty -> load_state_dict: the rebuilt quantizers stayed on meta ('Tensor on
    device meta is not on the expected device cpu')."""
    ref = _calibrated()
    with torch.device("meta"):
        model = quantize_model(create_model("vit_tiny", **VIT), QuantConfig())
    if not assign:
        model = model.to_empty(device="cpu")
    model.load_state_dict(model_state_dict(ref), assign=assign)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


@pytest.mark.parametrize("preset", ["generic", "fpga"])
def test_calibrate_measures_afresh_in_memory_and_after_a_load(tmp_path, preset):
    """A second calibration was a no-op in memory; after load_checkpoint it averaged the new range with 31 copies
    of a stale buffer and multiplied the old scale by that (generic: 6.31 where a fresh calibration gives 18.77).
    Reference: a fresh model calibrated on the second data."""
    cfg = QuantConfig(preset=preset)
    fresh = quantize_model(_vit(), cfg)
    calibrate(fresh, _batch(5.0, seed=2))
    again = _calibrated(cfg)
    path = save_checkpoint(tmp_path / "a.pt", again, META)
    assert _input_scale(again) != pytest.approx(_input_scale(fresh), rel=0.1)  # the two data sets differ
    calibrate(again, _batch(5.0, seed=2))
    loaded, _meta = load_checkpoint(path)
    calibrate(loaded, _batch(5.0, seed=2))
    assert _input_scale(again) == _input_scale(fresh)
    assert _input_scale(loaded) == _input_scale(fresh)


def test_an_uncalibrated_checkpoint_loads_uncalibrated(tmp_path):
    """Its placeholder scales (1.0) were saved and loaded as measured ones, so a later calibration multiplied them
    (q_quant: 0.977 where a fresh calibration gives 0.277)."""
    path = save_checkpoint(tmp_path / "u.pt", quantize_model(_vit(), QuantConfig()), META)
    loaded, meta = load_checkpoint(path)
    assert meta["uncalibrated"]  # recorded at save time
    calibrate(loaded, _batch())
    reference = _calibrated()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))


def test_a_frozen_quantized_model_stays_frozen_through_load_state_dict():
    """The rebuilt quantizers' scales were new, trainable Parameters."""
    model = _calibrated().requires_grad_(False)
    model.load_state_dict(model_state_dict(model))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == []


def test_a_stripped_token_adaptive_model_round_trips_through_a_checkpoint(tmp_path):
    """strip_token_adaptive kept quant_config.token_adaptive, so the checkpoint rebuilt a token-adaptive model that
    missed 28 keys ('missing key blocks.0.attn.in_quant.high...')."""
    model = strip_token_adaptive(_calibrated(QuantConfig(token_adaptive=True)))
    assert model.quant_config.token_adaptive is False
    loaded, _meta = load_checkpoint(save_checkpoint(tmp_path / "s.pt", model, META))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_held_bits_counts_token_adaptive_k_and_v_as_kv():
    """The quantizers are k_quant.high/.low, so K/V were counted as activations: {'activation': [4, 7, 8], 'kv': []}."""
    model = quantize_model(_vit(), QuantConfig(token_adaptive=True, kv_max_bits=7))
    assert held_bits(model) == {"weight": [8], "activation": [4, 8], "kv": [4, 7]}


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_a_token_adaptive_model_traces():
    """jit.trace died in an INTERNAL ASSERT: no aten::scatter overload for a Python bool source."""
    model = _calibrated(QuantConfig(token_adaptive=True))
    x = torch.randn(2, 3, 32, 32)
    traced = torch.jit.trace(model, (x,), check_trace=False)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


def test_a_compiled_models_checkpoint_loads(tmp_path):
    """torch.compile's wrapper saved '_orig_mod.'-prefixed keys: 'missing key cls_token (and 35 more)'."""
    model = _calibrated()
    loaded, _meta = load_checkpoint(save_checkpoint(tmp_path / "c.pt", torch.compile(model, backend="eager"), META))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_calibrate_names_a_batch_in_another_dtype():
    """A user's model got brevitas's 'Input type (double) and bias type (float) should be the same'."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    expected = r"^calibrate: a batch is torch.float64 but the model computes in torch.float32"
    with pytest.raises(ValueError, match=expected):
        calibrate(quantize_model(net), [torch.randn(2, 3, 8, 8, dtype=torch.float64)])


def test_load_checkpoint_takes_a_model_built_on_meta(tmp_path):
    """The meta copy loaded nothing (a strict load into meta tensors is a no-op) and failed at its first forward."""
    model = _calibrated()
    path = save_checkpoint(tmp_path / "m.pt", model, META)
    with torch.device("meta"):
        skeleton = create_model("vit_tiny", **VIT)
    loaded, _meta = load_checkpoint(path, model=skeleton)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
