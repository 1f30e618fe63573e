"""edgeattn.reparameterize where a notebook user's model is not a plain float registry model (QA sweep): a quantized
model, weights shared between layers or blocks, an nn.Sequential subclass with its own forward, a frozen bias-free
conv. Each case gave a silently different model before (differences measured against the train form in float64)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import edgeattn
from edgeattn.blocks.rep import RepConv
from edgeattn.models import create_model


def _random_bn(model: nn.Module) -> nn.Module:
    """BatchNorm statistics far from the identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g, dtype=m.running_mean.dtype) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=m.running_var.dtype) + 0.5)
    return model.eval()


def _deploy(model: nn.Module) -> tuple[nn.Module, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deploy = edgeattn.reparameterize(model)
    return deploy, [str(w.message) for w in caught if "reparameterize" in str(w.message)]


def test_a_quantized_model_is_refused():
    """Folding BatchNorms into brevitas layers kept weight scales fitted to the train form: absmax 2.45 under scales
    that reach 0.19, outputs off by 0.59 on a range of 0.87, without a word."""
    from edgeattn.quant import quantize_model

    q = quantize_model(create_model("fmvit_t", img_size=32, num_classes=10).eval())
    with pytest.raises(ValueError, match="holds quantized \\(brevitas\\) layers.*reparameterize the float model, then"):
        edgeattn.reparameterize(q)


def test_a_weight_shared_between_two_layers_is_not_folded_twice():
    """Two convs sharing one weight, each followed by a BatchNorm: both folds went into the one weight (0.54 off)."""
    torch.manual_seed(0)
    a, b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
    b.weight = a.weight
    model = _random_bn(nn.Sequential(a, nn.BatchNorm2d(3), b, nn.BatchNorm2d(3)).double())
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    deploy, warned = _deploy(model)
    assert torch.equal(deploy(x), model(x))
    assert any("2 BatchNorm module(s) not folded" in w for w in warned)
    # the same pair without the tie folds, and agrees to float64 rounding
    c = nn.Conv2d(3, 3, 1).double()
    untied = _random_bn(nn.Sequential(a, nn.BatchNorm2d(3), c, nn.BatchNorm2d(3)).double())
    folded, _ = _deploy(untied)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(folded(x), untied(x), rtol=0, atol=1e-12)


def test_blocks_sharing_a_branch_are_left_in_their_train_form():
    """Two RepConvs sharing their first branch: the second fold overwrote the conv the first had folded into (8.97
    off)."""
    torch.manual_seed(0)
    r1, r2 = RepConv(3, 3, 3), RepConv(3, 3, 3)
    r2.branches[0] = r1.branches[0]
    model = _random_bn(nn.Sequential(r1, r2).double())
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    deploy, warned = _deploy(model)
    assert torch.allclose(deploy(x), model(x), rtol=0, atol=1e-12)
    assert sum("shares a layer or weight" in w for w in warned) == 2
    # one block registered twice is one computation: it is folded
    twice = _random_bn(nn.Sequential(r1, r1).double())
    folded, warned = _deploy(twice)
    assert folded[0] is folded[1] and folded[0].deployed and not any("shares" in w for w in warned)
    assert torch.allclose(folded(x), twice(x), rtol=0, atol=1e-12)


def test_a_sequential_subclass_with_its_own_forward_is_not_folded_as_a_chain():
    class Parallel(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self[0](x) + self[1](x)

    torch.manual_seed(0)
    model = _random_bn(Parallel(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)).double())
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    deploy, _ = _deploy(model)
    assert torch.equal(deploy(x), model(x))  # 0.55 off when the BN was folded into the conv


def test_a_frozen_bias_free_conv_stays_frozen():
    conv = nn.Conv2d(3, 4, 1, bias=False)
    conv.weight.requires_grad_(False)
    deploy, _ = _deploy(_random_bn(nn.Sequential(conv, nn.BatchNorm2d(4))))
    assert deploy[0].bias is not None and not deploy[0].bias.requires_grad
