"""Example inputs for registered models (vision: ``input_size``; LMs: ``vocab_size``/``seq_len``)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["example_input"]


def example_input(model: nn.Module, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
    """A deterministic random input for ``model`` at its default shape.

    Language models (with ``vocab_size`` and ``seq_len`` attributes) get int64 token ids (B, seq_len);
    vision models get float32 (B, *model.input_size) from a standard normal.
    """
    gen = torch.Generator().manual_seed(seed)
    if hasattr(model, "vocab_size") and hasattr(model, "seq_len"):
        return torch.randint(0, int(model.vocab_size), (batch_size, int(model.seq_len)), generator=gen)
    if not hasattr(model, "input_size"):
        raise ValueError(f"{type(model).__name__} has no input_size (C, H, W); cannot build an example input")
    return torch.randn(batch_size, *model.input_size, generator=gen)
