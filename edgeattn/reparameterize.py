"""``edgeattn.reparameterize(model, inplace=False)``: turn every block of a model into its deploy form."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the models themselves; `import edgeattn` stays light
    from torch import nn

__all__ = ["reparameterize"]


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return the deploy form of ``model``: every module with a ``reparameterize()`` method is converted.

    The walk is top-down: an outer block converts itself (merging its own branch children), then the walk
    descends into whatever children it has left (e.g. a plain container's blocks). BN folding uses the
    running statistics, so the deploy form equals the train form in eval mode. With ``inplace=False`` (the
    default) the input model is left untouched and a deep copy is converted. The training flag of the model
    is kept (QAT trains the deploy form).
    """
    target = model if inplace else copy.deepcopy(model)
    _walk(target)
    return target


def _walk(module: nn.Module) -> None:
    fn = getattr(module, "reparameterize", None)
    if callable(fn):
        fn()
    # list(): children are read after the block changed itself, and not mutated while iterating.
    for child in list(module.children()):
        _walk(child)
