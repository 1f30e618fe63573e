"""The documented path (approximations -> reparameterize -> quantize -> calibrate -> checkpoint -> export) on
models a user writes themselves, not the registry's: torch's MultiheadAttention, conv-BN stacks in nn.Sequential,
tied weights, a module registered under two names, several inputs."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from edgeattn.quant import calibrate, quantize_model
from edgeattn.quant.checkpoint import load_checkpoint, save_checkpoint
from torch import nn

from edgeattn.approx import approximations_in, gelu, set_approximations
from edgeattn.errors import EdgeAttnError
from edgeattn.reparameterize import reparameterize

torch.set_num_threads(1)


class MHANet(nn.Module):
    """A ViT block written with torch's own MultiheadAttention and GELU."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.mlp(x)


class ConvBNNet(nn.Module):
    """Conv-BN-act stacks in nn.Sequential, a Linear + BatchNorm1d head, an nn.Identity."""

    def __init__(self) -> None:
        super().__init__()
        self.input_size = (3, 8, 8)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU6(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8),
            nn.BatchNorm2d(8),
            nn.Hardswish(),
            nn.Identity(),
        )
        self.head = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.Linear(6, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (a trained model's)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model


# ------------------------------------------------------------------------------------------ approximations


def test_multihead_attention_softmax_is_reported_exact_and_warned() -> None:
    model = MHANet()
    assert approximations_in(model) == {"softmax": {"exact"}, "gelu": {"exact"}}
    with pytest.warns(UserWarning, match=r"1 module\(s\) compute softmax inside a torch function and keep the exact "
                      r"one, not 'ibert': attn \(MultiheadAttention\)"):
        counts = set_approximations(model, softmax="ibert", gelu="ibert")
    assert counts == {"softmax": 0, "gelu": 1}
    assert approximations_in(model) == {"softmax": {"exact"}, "gelu": {"ibert"}}
    x = torch.randn(2, 5, 16)
    h = x + model.attn(x, x, x, need_weights=False)[0]
    ref = h + model.mlp[2](gelu(model.mlp[0](h), "ibert"))
    torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-6)


def test_transformer_layer_functional_gelu_is_reported_exact() -> None:
    layer = nn.TransformerEncoderLayer(8, 2, 16, activation="gelu", batch_first=True)
    assert approximations_in(layer) == {"softmax": {"exact"}, "gelu": {"exact"}}
    with pytest.warns(UserWarning, match="compute gelu inside a torch function"):
        set_approximations(layer, gelu="edgemoe")


def test_module_registered_under_two_names_is_swapped_under_both() -> None:
    class TwoActs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act1 = nn.GELU()
            self.act2 = self.act1

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act2(self.act1(x))

    model = TwoActs()
    set_approximations(model, gelu="ibert")
    assert approximations_in(model) == {"softmax": set(), "gelu": {"ibert"}}
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(model(x), gelu(gelu(x, "ibert"), "ibert"), rtol=0, atol=0)
    assert not (model(x) - F.gelu(F.gelu(x))).abs().max() < 1e-6  # really not the exact GELU any more


def test_set_approximations_on_a_bare_torch_module_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot replace the model itself; pass the module that holds it"):
        set_approximations(nn.Softmax(dim=-1), softmax="ibert")


# ------------------------------------------------------------------------------------------ reparameterize


def test_reparameterize_folds_conv_and_linear_batchnorm_in_sequential() -> None:
    model = _randomize_bn(ConvBNNet()).eval()
    x = torch.randn(4, 3, 8, 8)
    ref = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every BN is folded: no warning
        deploy = reparameterize(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in deploy.modules())
    assert isinstance(model.features[1], nn.BatchNorm2d)  # the user's model is a copy, untouched
    torch.testing.assert_close(deploy(x), ref, rtol=0, atol=1e-5)
    # the folded first conv is conv(x) * s + t with s, t from the BN statistics, computed here by hand
    bn = model.features[1]
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    t = bn.bias - bn.running_mean * s
    torch.testing.assert_close(deploy.features[0].weight, model.features[0].weight * s[:, None, None, None])
    torch.testing.assert_close(deploy.features[0].bias, t)


def test_reparameterize_warns_about_batchnorm_it_cannot_fold() -> None:
    class Loose(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x))

    with pytest.warns(UserWarning, match=r"reparameterize: 1 BatchNorm module\(s\) not folded \(bn\)"):
        deploy = reparameterize(_randomize_bn(Loose()).eval())
    assert isinstance(deploy.bn, nn.BatchNorm2d)


# ------------------------------------------------------------------------------------------ quantize


def test_quantize_replaces_a_layer_registered_under_two_names() -> None:
    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(8, 8)
            self.dec = self.enc

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.dec(torch.relu(self.enc(x)))

    q = quantize_model(Reused())
    assert q.dec is q.enc and type(q.enc).__name__ == "QuantLinear"
    assert not any(type(m) is nn.Linear for m in q.modules())


def test_quantize_keeps_tied_weights_tied_and_leaves_the_model_alone() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8, bias=False)
            self.b = nn.Linear(8, 8, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)))

    model = Tied()
    before = model.a.weight.detach().clone()
    q = quantize_model(model)
    assert q.a.weight is q.b.weight and q.a.weight is not model.a.weight
    calibrate(q, [torch.randn(16, 8)])
    q.train()
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    q(torch.randn(4, 8)).pow(2).sum().backward()
    opt.step()
    torch.testing.assert_close(q.a.weight, q.b.weight, rtol=0, atol=0)
    assert not torch.equal(q.a.weight, before)  # it trained ...
    assert torch.equal(model.a.weight, before)  # ... the copy, not the user's model


def test_quantize_warns_about_multihead_attention_and_unmatched_patterns() -> None:
    with pytest.warns(UserWarning) as record:
        q = quantize_model(MHANet(), {"float_layers": ["mpl.*"]})
    messages = [str(w.message) for w in record]
    assert any("1 nn.MultiheadAttention module(s) stay float, projections and attention included (attn)" in m
               for m in messages)
    assert "quantize_model: float_layers pattern 'mpl.*' matches no module of the model" in messages
    assert type(q.mlp[0]).__name__ == "QuantLinear"  # the typo left it quantized, as the warning says


def test_calibrate_takes_dict_batches_for_a_model_with_two_inputs() -> None:
    class TwoIn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    model = TwoIn().eval()
    q = quantize_model(model)
    batch = {"x": torch.randn(64, 8), "y": torch.randn(64, 8)}
    assert calibrate(q, [batch], max_samples=48) == 48
    with torch.no_grad():
        err = (q(**batch) - model(**batch)).abs().max().item()
        scale = model(**batch).abs().max().item()
    assert 0 < err < 0.05 * scale  # fake-quantized: close to the float model, not equal
    with pytest.raises(TypeError, match="calibrate: each batch must be a tensor, an \\(x, y\\) tuple or a dict"):
        calibrate(q, ["not a tensor"])
    with pytest.raises(ValueError, match=r"differ in batch size: \[3, 4\]"):
        calibrate(q, [{"x": torch.randn(4, 8), "y": torch.randn(3, 8)}])


# ------------------------------------------------------------------------------------------ checkpoint + export


def test_checkpoint_of_a_user_model_round_trips(tmp_path) -> None:
    model = _randomize_bn(ConvBNNet()).eval()
    q = quantize_model(reparameterize(model), "host-cpu")
    calibrate(q, [torch.randn(32, 3, 8, 8)])
    path = save_checkpoint(tmp_path / "q.pt", q, {"model": "ConvBNNet", "model_kwargs": {},
                                                  "quant": q.quant_config, "reparameterized": True})
    hint = r"for your own model pass it: load_checkpoint\(path, model=MyModel\(\)\)"
    with pytest.raises(EdgeAttnError, match=hint):
        load_checkpoint(path)
    fresh = ConvBNNet()
    loaded, meta = load_checkpoint(path, model=fresh)
    assert meta["model"] == "ConvBNNet" and isinstance(fresh.features[1], nn.BatchNorm2d)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), q(x), rtol=0, atol=0)


def test_user_conv_bn_model_exports_and_matches_onnx_runtime(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from edgeattn.export import export_model

    model = _randomize_bn(ConvBNNet()).eval()
    q = quantize_model(reparameterize(model), "host-cpu")
    calibrate(q, [torch.randn(64, 3, 8, 8)])
    report = export_model(copy.deepcopy(q), "onnx", "host-cpu", tmp_path / "out", n_inputs=4)
    assert report.passed
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(report.artifacts["onnx"], opts, providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 8, 8)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, q(x).numpy(), atol=1e-5, rtol=0)
        # and the integer model stays near the float one (the BNs really are folded into quantized convs)
        assert np.abs(got - model(x).numpy()).max() < 0.1 * np.abs(model(x).numpy()).max()
    ops = {n.op_type for n in __import__("onnx").load(report.artifacts["onnx"]).graph.node}
    assert "BatchNormalization" not in ops and "QuantizeLinear" in ops


def test_quantizing_a_quantized_model_is_refused() -> None:
    """A second quantize_model (or ptq) would find nothing float to swap and silently keep the first bits."""
    from edgeattn.quant import QuantConfig

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    q8 = quantize_model(model)
    with pytest.raises(EdgeAttnError, match=r"already quantized \(2 brevitas layer\(s\), e.g. '0'\)"):
        quantize_model(q8, QuantConfig(weight_bits=4))
    assert quantize_model(model, QuantConfig(weight_bits=4))[0].weight_quant.bit_width() == 4  # the float one works


def test_quant_config_built_in_python_fails_in_one_line() -> None:
    from edgeattn.quant import QuantConfig

    for kwargs, message in (
        ({"weight_bits": 1}, "QuantConfig: 'weight_bits': weight_bits must be between 2 and 16 bits, got 1"),
        ({"wieght_bits": 4}, "QuantConfig: unknown key 'wieght_bits'"),
        ({"overrides": {"head": {"act_bits": 40}}}, "QuantConfig: 'overrides.head.act_bits': act_bits must be"),
    ):
        with pytest.raises(EdgeAttnError) as err:
            QuantConfig(**kwargs)
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
    with pytest.raises(EdgeAttnError, match=r"^my.yaml: 'weight_bits'"):  # parse() still names its source
        QuantConfig.parse({"weight_bits": 1}, "my.yaml")
