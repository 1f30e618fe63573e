"""Helpers (no tests here) for the blocks/models/reparam tests: random BN stats, tree checks, small models."""

from __future__ import annotations

import inspect

import torch
from torch import nn

BRANCH_ATTRS = ("branches", "scale_branch", "identity_branch")


def randomize_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters; return the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            n = mod.num_features
            with torch.no_grad():
                mod.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
                mod.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                mod.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                mod.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return model.eval()


def assert_deploy_tree(model: nn.Module) -> None:
    """No BatchNorm, no branch containers, every reparameterizable block flagged deployed."""
    for name, mod in model.named_modules():
        assert not isinstance(mod, nn.modules.batchnorm._BatchNorm), f"BatchNorm left at {name}"
        for attr in BRANCH_ATTRS:
            assert getattr(mod, attr, None) is None, f"branch container {name}.{attr} left"
        if callable(getattr(mod, "reparameterize", None)):
            assert getattr(mod, "deployed", False), f"{name} ({type(mod).__name__}) not deployed"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a|."""
    return float(((a - b).abs().max() / a.abs().max()).detach())


def small_model(name: str) -> nn.Module:
    """Registered model ``name`` at a small input (32x32, 10 classes; tiny_llama with 32 tokens)."""
    from edgeattn.models import create_model, model_entrypoint

    params = inspect.signature(model_entrypoint(name)).parameters
    kwargs: dict = {}
    if "img_size" in params:
        kwargs.update(img_size=32)
    if "num_classes" in params:
        kwargs.update(num_classes=10)
    if name == "tiny_llama":
        kwargs.update(seq_len=32)
    return create_model(name, **kwargs)
