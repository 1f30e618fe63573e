"""``edgeattn.reparameterize(model, inplace=False)``: turn every block of a model into its deploy form."""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the models themselves; `import edgeattn` stays light
    from torch import nn

__all__ = ["reparameterize"]


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return the deploy form of ``model``: every module with a ``reparameterize()`` method is converted.

    The walk is top-down: an outer block converts itself (merging its own branch children), then the walk
    descends into whatever children it has left (e.g. a plain container's blocks). Then a plain ``nn.Conv1d``/
    ``nn.Conv2d``/``nn.Linear`` directly followed by a BatchNorm in an ``nn.Sequential`` (your own model's
    conv-BN-act stacks) gets the BN folded into it, the BN becoming an ``nn.Identity``; a BatchNorm left anywhere
    else is reported with a warning. BN folding uses the running statistics, so the deploy form equals the train
    form in eval mode. With ``inplace=False`` (the default) the input model is left untouched and a deep copy is
    converted. The training flag of the model is kept (QAT trains the deploy form).

    Raises ``TypeError`` if ``model`` is not an ``nn.Module``.
    """
    from torch import nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"reparameterize: argument 'model' must be a torch.nn.Module, got {type(model).__name__}")
    target = model if inplace else copy.deepcopy(model)
    _walk(target)
    _fold_sequential_bn(target)
    _warn_unfolded_bn(target)
    return target


def _walk(module: nn.Module) -> None:
    fn = getattr(module, "reparameterize", None)
    if callable(fn):
        fn()
    # list(): children are read after the block changed itself, and not mutated while iterating.
    for child in list(module.children()):
        _walk(child)


def _fold_sequential_bn(model: nn.Module) -> None:
    """Fold each BatchNorm that directly follows a plain Conv1d/Conv2d/Linear in an ``nn.Sequential`` into it.

    A layer that is registered more than once (reused elsewhere) is left alone: folding would change its other uses.
    """
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm

    from edgeattn.blocks.rep import fuse_bn, set_weight_bias

    uses: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    for seq in list(model.modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        keys = list(seq._modules)
        for first, second in zip(keys, keys[1:], strict=False):
            layer, bn = seq._modules[first], seq._modules[second]
            if type(layer) not in (nn.Conv1d, nn.Conv2d, nn.Linear) or not isinstance(bn, _BatchNorm):
                continue
            channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
            if bn.running_var is None or bn.num_features != channels or uses[id(layer)] > 1 or uses[id(bn)] > 1:
                continue
            kernel, bias = fuse_bn(layer.weight, layer.bias, bn)
            set_weight_bias(layer, kernel, bias)
            seq._modules[second] = nn.Identity()


def _warn_unfolded_bn(model: nn.Module) -> None:
    """Warn about the BatchNorm modules still in ``model``: the deploy form then keeps them as separate ops."""
    from torch.nn.modules.batchnorm import _BatchNorm

    left = [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]
    if left:
        more = ", ..." if len(left) > 3 else ""
        warnings.warn(
            f"reparameterize: {len(left)} BatchNorm module(s) not folded ({', '.join(left[:3])}{more}): only a block's "
            "own reparameterize() or a Conv1d/Conv2d/Linear directly followed by its BatchNorm in an nn.Sequential "
            "folds one",
            stacklevel=3,
        )
