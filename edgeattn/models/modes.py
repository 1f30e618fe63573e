"""Running a model in eval mode for a moment without losing its modules' own training flags."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block; afterwards every module gets back its own training flag.

    ``model.train(was_training)`` would not do: it sets every submodule alike, so a model training with some
    BatchNorms frozen in eval would come back with them training."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
