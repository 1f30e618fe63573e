"""edgeattn.quant and edgeattn.approx as a notebook calls them (QA sweep of the Python API): models off the CPU or
in float64 keep working through the approximations and quantize_model, a quantized model's checkpoint can be read
back, and bad arguments to the losses, the token-adaptive helpers and the approximations are refused in one clear
line instead of giving a number for the wrong thing."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from edgeattn.quant import QuantConfig, calibrate, quantize_model
from edgeattn.quant.adaptive import TokenController, low_importance_mask, received_attention
from edgeattn.quant.checkpoint import load_checkpoint, save_checkpoint
from edgeattn.quant.losses import Probe, attention_kl, distribution_loss, kd_loss
from torch import nn

from edgeattn.approx import set_approximations
from edgeattn.approx.float_ops import ApproxSoftmax, gelu, softmax
from edgeattn.approx.onnx_lowering import export_onnx
from edgeattn.models import create_model

TINY = {"img_size": 16, "depth": 1}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------------------------------------ devices and dtypes
@pytest.mark.parametrize("method", ["edgemoe", "edgemoe_mm"])
def test_table_gelu_follows_its_input_to_another_device(method):
    """The lookup table was a CPU tensor moved to the input's dtype only: a model with gelu='edgemoe' failed on any
    other device ('Tensor on device meta is not on the expected device cpu'; the same on a GPU)."""
    assert gelu(torch.zeros(3, 5, device="meta"), method).device.type == "meta"
    with torch.device("meta"):
        model = create_model("vit_tiny", gelu=method, **TINY)
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 1000)
    x = torch.linspace(-6, 6, 97, dtype=torch.float64)  # and on the CPU it still is the formula: 1e-3 of GELU
    assert torch.allclose(gelu(x, method), torch.nn.functional.gelu(x), atol=2e-3)


def test_quantize_model_builds_its_quantizers_in_the_models_dtype_and_device():
    """Activation quantizers were float32 on the CPU whatever the model: a float64 model failed its first forward
    ('Mlp expects a float32 input'), a GPU model would have come out half on the CPU."""
    torch.manual_seed(0)
    m32 = create_model("vit_tiny", **TINY).eval()
    m64 = create_model("vit_tiny", **TINY).eval()
    m64.load_state_dict(m32.state_dict())
    m64 = m64.double()
    x = torch.randn(8, 3, 16, 16, dtype=torch.float64)
    for config in (QuantConfig(), QuantConfig(token_adaptive=True)):
        q64, q32 = quantize_model(m64, config), quantize_model(m32, config)
        floats = [t for t in (*q64.parameters(), *q64.buffers()) if t.is_floating_point()]
        assert {t.dtype for t in floats} == {torch.float64}
        calibrate(q64, [x]), calibrate(q32, [x.float()])
        with torch.no_grad():
            y64, y32 = q64(x), q32(x.float())
        assert y64.dtype == torch.float64
        cos = torch.nn.functional.cosine_similarity(y64.flatten(), y32.double().flatten(), dim=0)
        assert cos > 0.999, float(cos)  # the same quantized network, evaluated in two precisions
    with torch.device("meta"):
        meta = create_model("vit_tiny", **TINY)
    q = quantize_model(meta)
    assert {t.device.type for t in (*q.parameters(), *q.buffers())} == {"meta"}


# ----------------------------------------------------------------------------------------------- checkpoints
def test_a_quantized_models_checkpoint_records_its_config_without_being_told(tmp_path):
    """save_checkpoint recorded quant=None for a quantized model whose meta left 'quant' out, and load_checkpoint
    then refused it ('unexpected key patch_embed.input_quant...')."""
    torch.manual_seed(0)
    kwargs = {"img_size": 16, "depth": 1, "num_classes": 10}
    q = quantize_model(create_model("vit_tiny", **kwargs), QuantConfig(weight_bits=4))
    x = torch.randn(4, 3, 16, 16)
    calibrate(q, [x])
    path = save_checkpoint(tmp_path / "q.pt", q, {"model": "vit_tiny", "model_kwargs": kwargs})
    back, meta = load_checkpoint(path)
    assert meta["quant"]["weight_bits"] == 4
    with torch.no_grad():
        assert torch.equal(back(x), q(x))


# ---------------------------------------------------------------------------------------------- token-adaptive
def test_token_ratio_one_is_refused_where_it_is_set():
    """ratio 1.0 passed validation and then crashed inside brevitas at calibration (the high-bit quantizer saw no
    token: 'kthvalue(): Expected reduction dim 0 to have non-zero size')."""
    from edgeattn.quant.train import TrainConfig
    from pydantic import ValidationError

    with pytest.raises((ValueError, ValidationError), match="token_ratio"):
        QuantConfig(token_adaptive=True, token_ratio=1.0)
    with pytest.raises((ValueError, ValidationError), match="token_ratio"):
        TrainConfig(token_ratio=1.0)
    assert QuantConfig(token_adaptive=True, token_ratio=0.99).token_ratio == 0.99


@pytest.mark.parametrize("importance", ["auto", "frist", "bogus"])
def test_an_importance_other_than_first_or_mean_is_refused(importance):
    """Anything but 'first' was scored as 'mean', 'auto' (QuantConfig's default) and typos included."""
    attn = torch.softmax(torch.randn(1, 2, 5, 5), dim=-1)
    with pytest.raises(ValueError, match="importance must be 'first' or 'mean'"):
        received_attention(attn, importance)
    with pytest.raises(ValueError, match="importance must be 'first' or 'mean'"):
        TokenController(0.5, importance)
    first = received_attention(attn, "first")
    assert torch.allclose(first, attn[:, :, 0, :].sum(dim=1))


def test_low_importance_mask_marks_floor_of_ratio_times_tokens():
    """int(0.29 * 100) is 28 in floating point; the docstring promises floor(0.29 * 100) = 29."""
    score = torch.arange(100.0).reshape(1, 100)
    for ratio, want in ((0.29, 29), (0.57, 57), (0.5, 50), (0.0, 0), (0.999, 99)):
        mask = low_importance_mask(score, ratio)
        assert int(mask.sum()) == want and bool(mask[0, :want].all())


# ------------------------------------------------------------------------------------------------------ losses
def test_losses_refuse_student_and_teacher_of_different_shapes():
    """A teacher of batch 1 was broadcast against a student of batch 2: distribution_loss gave 1.0777 for a pair
    whose matched value is 0.0573."""
    torch.manual_seed(0)
    s = torch.randn(2, 3, 4, 5)
    t = s + 0.5 * torch.randn(2, 3, 4, 5)  # a teacher the student resembles (mean cosine well above the log's floor)
    with pytest.raises(ValueError, match=r"distribution_loss: student \[2, 3, 4, 5\] and teacher \[1, 3, 4, 5\]"):
        distribution_loss([s], [t[:1]])
    with pytest.raises(ValueError, match="attention_kl: student"):
        attention_kl([s.softmax(-1)[:1]], [t.softmax(-1)])
    with pytest.raises(ValueError, match="kd_loss: student"):
        kd_loss(torch.randn(4, 10), torch.randn(1, 10), None)
    # the matched pair: -log of the mean row cosine, recomputed in float64
    s64, t64 = s.double(), t.double()
    cos = (s64 * t64).sum(-1) / (s64.norm(dim=-1) * t64.norm(dim=-1))
    assert float(distribution_loss([s], [t], row_floor=0.0)) == pytest.approx(-math.log(float(cos.mean())), rel=1e-5)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"temperature": 0.0}, "temperature must be a finite number > 0"),
    ({"temperature": -2.0}, "temperature must be a finite number > 0"),
    ({"alpha": 2.0}, r"alpha must be in \[0, 1\]"),
])
def test_kd_loss_refuses_settings_that_give_nan_or_a_negative_loss(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kd_loss(torch.randn(4, 10), torch.randn(4, 10), torch.zeros(4, dtype=torch.long), **kwargs)


def test_probe_refuses_a_string_of_suffixes():
    """Probe(model, 'logits') watched the modules named 'l', 'o', 'g', ... and recorded nothing."""
    with pytest.raises(ValueError, match="suffixes must be a list of module names"):
        Probe(nn.Linear(2, 2), "logits")


# ------------------------------------------------------------------------------------------------------ approx
def test_swapped_in_modules_keep_the_models_training_flag():
    """set_approximations put a training-mode ApproxGELU into an eval model."""
    model = nn.Sequential(nn.Linear(2, 2), nn.GELU(), nn.Softmax(dim=-1)).eval()
    set_approximations(model, softmax="base2", gelu="edgemoe")
    assert [m.training for m in model] == [False, False, False]
    model.train()
    set_approximations(model, gelu="tanh")
    assert all(m.training for m in model)


def test_softmax_names_a_bad_dim_and_takes_a_scalar_as_torch_does():
    x = torch.randn(3, 10)
    with pytest.raises(IndexError, match=r"softmax: dim must be an integer in \[-2, 1\] for a 2-D input, got 5"):
        softmax(x, dim=5)
    assert float(softmax(torch.tensor(3.0), dim=0, method="base2")) == 1.0 == float(torch.softmax(torch.tensor(3.0), 0))
    with pytest.raises(TypeError, match="ApproxSoftmax: dim must be an integer"):
        ApproxSoftmax("base2", dim="x")
    ref = np.exp(x.double().numpy() - x.double().numpy().max(-1, keepdims=True))
    assert np.allclose(softmax(x.double(), dim=-1).numpy(), ref / ref.sum(-1, keepdims=True), atol=1e-15)


def test_export_onnx_refuses_an_opset_it_could_not_write(tmp_path):
    """torch's exporter fell back to opset 18 for opset=7 (logging a traceback) and export_onnx returned the path
    of an opset-18 file as if it were opset 7."""
    import onnx

    with pytest.raises(ValueError, match="could not write opset 7"):
        export_onnx("gelu", "exact", tmp_path / "g7.onnx", opset=7)
    assert not (tmp_path / "g7.onnx").exists()
    written = export_onnx("gelu", "exact", tmp_path / "g17.onnx", opset=17)
    assert {o.version for o in onnx.load(written).opset_import if o.domain in ("", "ai.onnx")} == {17}


def test_a_class_or_a_non_module_is_named_as_such(tmp_path):
    """set_approximations/approximations_in on a non-module raised AttributeError; load_checkpoint(model=MyNet)
    (the class) failed with 'Module.modules() missing 1 required positional argument'; save_checkpoint(meta=None)
    with 'argument of type NoneType is not iterable'."""
    from edgeattn.approx import approximations_in
    from edgeattn.errors import EdgeAttnError

    with pytest.raises(TypeError, match="set_approximations takes an nn.Module, got the class Linear; pass an"):
        set_approximations(nn.Linear, gelu="tanh")
    with pytest.raises(TypeError, match="approximations_in takes an nn.Module, got str"):
        approximations_in("vit_tiny")
    with pytest.raises(ValueError, match="save_checkpoint: meta must be a dict"):
        save_checkpoint(tmp_path / "m.pt", nn.Linear(2, 2), None)
    assert not (tmp_path / "m.pt").exists()
    kwargs = {"img_size": 16, "depth": 1}
    path = save_checkpoint(tmp_path / "v.pt", create_model("vit_tiny", **kwargs), {"model": "vit_tiny",
                                                                                   "model_kwargs": kwargs})
    with pytest.raises(EdgeAttnError, match="load_checkpoint: model must be an nn.Module instance, got the class"):
        load_checkpoint(path, model=nn.Linear)


def test_kd_loss_takes_soft_labels():
    """Probability targets (mixup, label smoothing) failed: 'Expected input batch_size (4) to match target batch_size
    (40)'. Checked against the cross-entropy written out, and one-hot probabilities against the class indices."""
    torch.manual_seed(0)
    s, t = torch.randn(4, 10, dtype=torch.float64), torch.randn(4, 10, dtype=torch.float64)
    probs = torch.softmax(torch.randn(4, 10, dtype=torch.float64), dim=-1)
    ce = -(probs * torch.log_softmax(s, dim=-1)).sum(-1).mean()
    kd = kd_loss(s, t, None, temperature=2.0)
    assert float(kd_loss(s, t, probs, alpha=0.3)) == pytest.approx(float(0.7 * ce + 0.3 * kd), rel=1e-12)
    labels = torch.tensor([1, 0, 9, 4])
    one_hot = torch.nn.functional.one_hot(labels, 10).double()
    assert float(kd_loss(s, t, one_hot)) == pytest.approx(float(kd_loss(s, t, labels)), rel=1e-12)
    with pytest.raises(ValueError, match="kd_loss target: student"):
        kd_loss(s, t, probs[:2])
