"""QA sweep of the quant/approx Python API: checkpoints keep softmax/GELU approximations, refused calls change
nothing, and bad input gets one clear line."""

from __future__ import annotations

import warnings

import pytest
import torch
from edgeattn.quant.checkpoint import load_checkpoint, save_checkpoint
from edgeattn.quant.config import QuantConfig
from edgeattn.quant.ptq import calibrate
from edgeattn.quant.quantize import quantize_model
from torch import nn

from edgeattn.approx import approximations_in, set_approximations
from edgeattn.errors import EdgeAttnError
from edgeattn.models import create_model

KWARGS = {"img_size": 32, "num_classes": 10}
META = {"model": "vit_tiny", "model_kwargs": KWARGS}


def _vit(**extra: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model("vit_tiny", **KWARGS, **extra).eval()


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_keeps_approximations_set_after_construction(tmp_path):
    model = _vit()
    set_approximations(model, softmax="shift", gelu="ibert")
    x = _x()
    with torch.no_grad():
        want = model(x)
        exact = _vit()(x)  # same seed, same weights, exact ops: what the old load gave back
    assert (want - exact).abs().max() > 1e-3  # the approximations matter for this check to mean anything
    path = save_checkpoint(tmp_path / "a.pt", model, dict(META))
    loaded, meta = load_checkpoint(path)
    assert meta["approximations"] == {"softmax": ["shift"], "gelu": ["ibert"]}
    assert approximations_in(loaded) == {"softmax": {"shift"}, "gelu": {"ibert"}}
    with torch.no_grad():
        assert torch.equal(loaded(x), want)


def test_quantized_checkpoint_keeps_approximations(tmp_path):
    model = _vit()
    set_approximations(model, softmax="base2")
    config = QuantConfig(weight_bits=4)
    qmodel = quantize_model(model, config)
    calibrate(qmodel, [_x()])
    path = save_checkpoint(tmp_path / "q.pt", qmodel, {**META, "quant": config})
    loaded, meta = load_checkpoint(path)
    assert meta["approximations"] == {"softmax": ["base2"], "gelu": ["exact"]}
    x = _x() * 0.5
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))


def test_given_model_with_other_methods_is_refused(tmp_path):
    model = _vit()
    set_approximations(model, softmax="shift", gelu="ibert")
    path = save_checkpoint(tmp_path / "a.pt", model, dict(META))
    with pytest.raises(EdgeAttnError, match=r"was saved with softmax 'shift', the model given computes 'base2'"):
        load_checkpoint(path, model=_vit(softmax="base2", gelu="ibert"))
    same, _ = load_checkpoint(path, model=_vit(softmax="shift", gelu="ibert"))
    x = _x()
    with torch.no_grad():
        assert torch.equal(same(x), model(x))


def test_checkpoint_from_model_kwargs_and_old_checkpoints(tmp_path):
    # the CLI's record (model_kwargs) and the new one agree: the rebuilt model computes what was saved
    model = _vit(softmax="ibert")
    path = save_checkpoint(tmp_path / "cli.pt", model, {**META, "model_kwargs": {**KWARGS, "softmax": "ibert"}})
    loaded, _ = load_checkpoint(path)
    assert approximations_in(loaded) == {"softmax": {"ibert"}, "gelu": {"exact"}}
    # an older checkpoint (no "approximations") is rebuilt from model_kwargs alone, as before
    payload = torch.load(path, weights_only=True)
    del payload["meta"]["approximations"]
    payload["meta"]["model_kwargs"] = KWARGS
    torch.save(payload, tmp_path / "old.pt")
    old, meta = load_checkpoint(tmp_path / "old.pt")
    assert "approximations" not in meta
    assert approximations_in(old) == {"softmax": {"exact"}, "gelu": {"exact"}}


def test_state_dict_mismatch_names_the_first_key(tmp_path):
    model = _vit()
    path = save_checkpoint(tmp_path / "a.pt", model, {**META, "model_kwargs": {**KWARGS, "num_classes": 7}})
    dim = model.head.weight.shape[1]
    with pytest.raises(EdgeAttnError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert f"size mismatch for 'head.weight': checkpoint (10, {dim}), model (7, {dim}) (and 1 more)" in msg
    assert "check meta's reparameterized (False), quant and model_kwargs" in msg and "\n" not in msg
    # a float model saved under a quant config: the rebuilt model has quantizer state the file lacks
    path = save_checkpoint(tmp_path / "f.pt", model, {**META, "quant": QuantConfig()})
    with pytest.raises(EdgeAttnError, match=r"does not match model 'vit_tiny': missing key '[^']+' \(and \d+ more\)"):
        load_checkpoint(path)
    # your own model given to rebuild from is the one named (the checkpoint's model was named as if it were yours)
    other = save_checkpoint(tmp_path / "o.pt", model, META)
    want = r"\(a 'vit_tiny' model\) does not match your VisionTransformer: size mismatch"
    with pytest.raises(EdgeAttnError, match=want):
        load_checkpoint(other, model=create_model("vit_tiny", img_size=32, num_classes=7))


def test_bool_bit_widths_and_a_zero_calibration_budget_are_named():
    """True was taken as 1 bit ('must be between 2 and 16 bits, got 1'); max_samples=0 read 'no calibration
    samples were given' although samples were."""
    with pytest.raises(EdgeAttnError, match=r"'weight_bits': weight_bits must be a number of bits, got True"):
        QuantConfig.parse({"weight_bits": True}, "x")
    with pytest.raises(EdgeAttnError, match=r"act_bits must be a number of bits, got False"):
        QuantConfig.parse({"overrides": {"head": {"act_bits": False}}}, "x")
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match=rf"^calibrate: max_samples must be an integer >= 1, got {bad!r}$"):
            calibrate(nn.Linear(2, 2), [torch.randn(2, 2)], max_samples=bad)


# ----------------------------------------------------------------------------------------- set_approximations
def test_refused_set_approximations_leaves_the_model_unchanged():
    model = nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=-1), nn.GELU(), nn.Softmax())
    before = [type(m) for m in model]
    with pytest.raises(ValueError, match="nn.Softmax '3' has no dim"):
        set_approximations(model, softmax="shift", gelu="ibert")
    assert [type(m) for m in model] == before
    with pytest.raises(ValueError, match=r"^set_approximations: argument 'softmax': unknown softmax method 'nope'"):
        set_approximations(model, softmax="nope")
    with pytest.raises(ValueError, match=r"argument 'gelu': unknown gelu method 'erf'"):
        set_approximations(model, gelu="erf")
    model[3].dim = -1
    assert set_approximations(model, softmax="shift") == {"softmax": 2, "gelu": 0}
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    # shift = base-2 softmax: 2^(x*log2(e)) in fixed point; the float64 exact softmax differs by < 5e-2
    got = model[1](x.float()).double()
    assert torch.allclose(got, torch.softmax(x, -1), atol=5e-2)


# ------------------------------------------------------------------------------------------- calibrate / PTQ
def test_calibrate_restores_training_flag_when_a_batch_fails():
    qmodel = quantize_model(nn.Sequential(nn.Linear(4, 4)))
    qmodel.train()

    def batches():
        yield torch.randn(2, 4)
        raise RuntimeError("loader broke")

    with pytest.raises(RuntimeError, match="loader broke"):
        calibrate(qmodel, batches())
    assert qmodel.training and all(m.training for m in qmodel.modules())


# -------------------------------------------------------------------------------------------- quantize_model
class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vol = nn.Conv3d(1, 2, 1)
        self.up = nn.ConvTranspose2d(2, 2, 2)
        self.skip = nn.ConvTranspose2d(2, 2, 2)
        self.rnn = nn.LSTM(4, 4)
        self.embed = nn.Embedding(8, 4)
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


def test_unsupported_weighted_layers_warn_once():
    with pytest.warns(UserWarning) as record:
        q = quantize_model(_Mixed(), QuantConfig(float_layers=("skip",)))
    msgs = [str(r.message) for r in record if "no quantized version" in str(r.message)]
    assert msgs == [
        "quantize_model: 3 layer(s) with weights have no quantized version and stay float: vol (Conv3d), "
        "up (ConvTranspose2d), rnn (LSTM); only nn.Linear, nn.Conv1d and nn.Conv2d are quantized (list the others "
        "in float_layers to silence this)"
    ]
    assert type(q.fc).__name__ == "QuantLinear"


@pytest.mark.parametrize("token_adaptive", [False, True])
def test_registry_language_model_quantizes_without_warning(token_adaptive):
    model = create_model("tiny_llama", vocab_size=32, seq_len=8)  # its Embedding stays float by design
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_model(model, QuantConfig(token_adaptive=token_adaptive))


def test_token_adaptive_without_attention_warns():
    with pytest.warns(UserWarning, match=r"no edgeattn attention block .* every token runs at act_bits \(6\)"):
        quantize_model(nn.Sequential(nn.Linear(4, 4)), QuantConfig(token_adaptive=True, act_bits=6))


def test_bad_arguments_get_one_line():
    with pytest.raises(EdgeAttnError, match=r"^'w4a8' is a bit setting, not a device profile: pass "
                       r"QuantConfig\(\)\.with_bits\('w4a8'\)"):  # fmt: skip
        quantize_model(nn.Linear(2, 2), "w4a8")
    with pytest.raises(EdgeAttnError, match=r"^bits 8: expected a string, 'profile' or wNaM"):
        QuantConfig().with_bits(8)  # type: ignore[arg-type]
    with pytest.raises(EdgeAttnError, match=r"^quantize_model takes an nn.Module, got str 'vit_tiny'.*create_model"):
        quantize_model("vit_tiny")  # type: ignore[arg-type]
    assert QuantConfig().with_bits("w4a8").weight_bits == 4


def test_qat_refuses_an_fp_checkpoint_whose_approximations_were_set_after_construction(tmp_path):
    """An API-saved FP model with softmax swapped to 'shift' used to load as exact; now it loads as 'shift', so a
    run that builds exact softmax must refuse it rather than fine-tune weights fitted to other arithmetic."""
    from _tiny_runs import TINY, tiny_cfg
    from edgeattn.quant.train import TrainConfig, run

    model = create_model("vit_tiny", img_size=16, in_chans=1, num_classes=10, **TINY).eval()
    set_approximations(model, softmax="shift")
    kwargs = {"img_size": 16, "in_chans": 1, "num_classes": 10, **TINY}
    fp = save_checkpoint(tmp_path / "fp.pt", model, {"model": "vit_tiny", "model_kwargs": kwargs})
    cfg = TrainConfig.parse(tiny_cfg(tmp_path / "run", fp_checkpoint=str(fp)), "test")
    with pytest.raises(EdgeAttnError, match=r"computes softmax shift, this run builds 'exact'"):
        run(cfg, progress=False)
    assert not (tmp_path / "run" / "model.pt").exists()
