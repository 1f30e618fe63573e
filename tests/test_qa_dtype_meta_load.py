"""Loading weights into models built another way: tiny_llama built on the meta device, float64 checkpoints and
float64 quantized models, and the autograd slope of the residual GELUs at 0. Each test fails on the code before
the fix (meta-built tables stayed uninitialised, float64 checkpoints loaded as float32, a float64 quantized model's
activation scales came back float32 after load_state_dict, the GELUs' slope at 0 was 0)."""

from __future__ import annotations

import math

import pytest
import torch
from edgeattn.quant import QuantConfig, quantize_model
from edgeattn.quant.checkpoint import load_checkpoint, model_state_dict, save_checkpoint

from edgeattn.approx import float_ops as fo
from edgeattn.blocks.llama import LlamaAttention, rope_tables
from edgeattn.errors import EdgeAttnError
from edgeattn.models import create_model

LLAMA = {"seq_len": 8, "dim": 16, "depth": 2, "num_heads": 2, "vocab_size": 32}
VIT = {"img_size": 32, "patch_size": 8}


def _meta_built_llama() -> torch.nn.Module:
    with torch.device("meta"):
        model = create_model("tiny_llama", **LLAMA)
    return model.to_empty(device="cpu")


def test_tiny_llama_built_on_meta_then_loaded_matches_the_model_it_was_saved_from():
    """The usual big-model recipe: build on meta, to_empty, load_state_dict. The RoPE tables and causal mask are
    not in the state dict, so they kept whatever memory to_empty gave (NaN or garbage logits)."""
    torch.manual_seed(0)
    ref = create_model("tiny_llama", **LLAMA).eval()
    model = _meta_built_llama()
    model.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        assert torch.equal(model.eval()(ids), ref(ids))


def test_reset_parameters_rebuilds_the_tables_after_to_empty():
    """FSDP's materialisation: to_empty, then reset_parameters() on every module that has it."""
    model = _meta_built_llama()
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    attn = next(m for m in model.modules() if isinstance(m, LlamaAttention))
    cos, sin = rope_tables(8, 8)
    assert torch.equal(attn.rope_cos, cos) and torch.equal(attn.rope_sin, sin)
    expected_mask = torch.triu(torch.full((8, 8), -1.0e4), diagonal=1)
    assert torch.equal(attn.causal_mask, expected_mask)


def test_tables_are_rebuilt_in_the_models_dtype_on_load():
    """A float32-built model cast with .double() carries the float32 rounding of its tables (3e-8); loading a
    state dict rebuilds them in float64 from float64 math (independent reference: math.cos of the angle)."""
    model = create_model("tiny_llama", **LLAMA).double()
    model.load_state_dict(model.state_dict())
    attn = next(m for m in model.modules() if isinstance(m, LlamaAttention))
    assert attn.rope_cos.dtype == torch.float64
    # position 7, frequency index 1 of head_dim 8: angle 7 * 10000^(-2/8)
    assert attn.rope_cos[7, 1].item() == pytest.approx(math.cos(7 * 10000 ** (-2 / 8)), abs=1e-15)
    assert attn.rope_sin[7, 5].item() == pytest.approx(math.sin(7 * 10000 ** (-2 / 8)), abs=1e-15)


@pytest.mark.parametrize("method", ["edgemoe", "edgemoe_mm", "respoly"])
def test_residual_gelus_have_slope_one_half_at_zero(method):
    """``ReLU(x) - delta(|x|)`` is smooth at 0 with slope 1/2 (delta'(0) = 1/2); relu and abs both
    differentiate to 0 there, so autograd gave 0. Reference: the float64 central difference."""
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    fo.gelu(x, method).backward()
    h = 1e-6
    step = torch.tensor([h], dtype=torch.float64)
    central = (fo.gelu(step, method) - fo.gelu(-step, method)).item() / (2 * h)
    assert x.grad.item() == pytest.approx(0.5, abs=1e-12)
    assert x.grad.item() == pytest.approx(central, abs=1e-6)


@pytest.mark.parametrize("method", ["edgemoe", "edgemoe_mm", "respoly"])
def test_residual_gelus_keep_their_values(method):
    """The slope fix changes no value: the same ReLU(x) - delta(|x|), NaN stays NaN, -inf gives 0, inf gives inf."""
    delta = fo.respoly_delta if method == "respoly" else fo.edgemoe_delta
    x = torch.cat([torch.linspace(-8, 8, 2001, dtype=torch.float64), torch.tensor([0.0, -0.0, 1e-300, -1e-300])])
    a = x.abs()
    expected = torch.relu(x) - (delta(a, fo._table_like("mm", a)) if method == "edgemoe_mm" else delta(a))
    assert torch.equal(fo.gelu(x, method), expected)
    special = fo.gelu(torch.tensor([float("nan"), -float("inf"), float("inf")]), method)
    assert math.isnan(special[0]) and special[1].item() == 0.0 and special[2].item() == math.inf


def _float64_vit(cfg: QuantConfig | None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("vit_tiny", **VIT).double()
    if cfg is None:
        return model.eval()
    model = quantize_model(model, cfg)
    model.train()
    model(torch.randn(4, 3, 32, 32, dtype=torch.float64))  # calibrate the activation scales
    return model.eval()


@pytest.mark.parametrize("cfg", [None, QuantConfig(), QuantConfig(token_adaptive=True)], ids=["float", "w8a8", "ta"])
def test_a_float64_checkpoint_loads_as_float64_and_computes_what_was_saved(tmp_path, cfg):
    """Its weights were loaded into a float32 model (rounded to 1e-7 relative) and came back float32; now the model
    is built in float64 before it is quantized, and reproduces the saved one exactly."""
    saved = _float64_vit(cfg)
    path = save_checkpoint(tmp_path / "f64.pt", saved, {"model": "vit_tiny", "model_kwargs": VIT})
    loaded, _meta = load_checkpoint(path)
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(loaded(x), saved(x))


def test_dtype_asks_for_float32_as_export_and_hls_do(tmp_path):
    saved = _float64_vit(QuantConfig())
    path = save_checkpoint(tmp_path / "f64.pt", saved, {"model": "vit_tiny", "model_kwargs": VIT})
    loaded, _meta = load_checkpoint(path, dtype=torch.float32)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():  # the same network up to float32 rounding (an 8-bit step may flip: compare loosely)
        cos = torch.nn.functional.cosine_similarity(loaded(x.float()).double().flatten(), saved(x).flatten(), dim=0)
    assert cos > 0.99

    from edgeattn.export.sources import _load_ckpt

    module, _meta = _load_ckpt(str(path))
    assert {p.dtype for p in module.parameters()} == {torch.float32}


@pytest.mark.parametrize("bad", [torch.int8, "float32", 32])
def test_dtype_must_be_a_floating_torch_dtype(tmp_path, bad):
    path = save_checkpoint(tmp_path / "m.pt", _float64_vit(None), {"model": "vit_tiny", "model_kwargs": VIT})
    with pytest.raises(EdgeAttnError, match="dtype must be a floating torch.dtype"):
        load_checkpoint(path, dtype=bad)


@pytest.mark.parametrize("cfg", [QuantConfig(), QuantConfig(token_adaptive=True)], ids=["w8a8", "ta"])
def test_a_float64_quantized_model_stays_float64_through_load_state_dict(cfg):
    """brevitas rebuilds each quantizer from its injector on load_state_dict; the injector said float32, so the
    activation scales (and a layer's input quantizer) came back float32 and the next forward was refused."""
    model = _float64_vit(cfg)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
    model.load_state_dict(model_state_dict(model))
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    with torch.no_grad():
        assert torch.equal(model(x), before)
