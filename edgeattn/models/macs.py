"""Multiply-accumulate counting with torch's own FLOP counter (``torch.utils.flop_counter``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgeattn.models.modes import eval_mode

__all__ = ["count_macs", "count_params"]


def count_macs(model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    """MACs of one forward pass of ``model`` on ``example_input``.

    torch's FlopCounterMode counts matmul/linear/conv/attention FLOPs as 2 per multiply-accumulate, so MACs
    are its total divided by 2. Elementwise ops (norms, activations, softmax) are not counted, as is usual
    for published MAC figures. Runs in eval mode under ``no_grad`` and restores every module's training flag
    (a model in training with some BatchNorms frozen in eval keeps them so).
    """
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return int(counter.get_total_flops()) // 2


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())
