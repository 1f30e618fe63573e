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

    A block holding a module or parameter that is also used outside it (weights tied to another layer) is left as it
    is, with a warning: folding would change the other use too.

    Raises ``TypeError`` if ``model`` is not an ``nn.Module``, ``ValueError`` if it holds quantized (brevitas)
    layers: their weight scales were fitted to the train form, so reparameterize first, then quantize.
    """
    from torch import nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"reparameterize: argument 'model' must be a torch.nn.Module, got {type(model).__name__}")
    quantized = [name or type(model).__name__ for name, m in model.named_modules()
                 if type(m).__module__.startswith("brevitas.")]  # fmt: skip
    if quantized:
        raise ValueError(
            f"reparameterize: the model holds quantized (brevitas) layers, e.g. '{quantized[0]}': folding would keep "
            "weight scales fitted to the train form; reparameterize the float model, then quantize its deploy form"
        )
    target = model if inplace else copy.deepcopy(model)
    _walk(target, _SharedWith(target))
    _fold_sequential_bn(target)
    _warn_unfolded_bn(target)
    return target


class _SharedWith:
    """How many times each module and parameter of a model is registered in it, to tell which a block shares with
    the rest of the model (a module registered twice as the *same* block is one computation: folding it is fine)."""

    def __init__(self, model: nn.Module) -> None:
        self.total = _counts(model)

    def outside(self, block: nn.Module) -> bool:
        """Whether a module or parameter inside ``block`` is also used outside it."""
        inside = _counts(block)
        return any(self.total.get(key, 0) > n * self.total.get(id(block), 1) for key, n in inside.items()
                   if key != id(block))  # fmt: skip


def _counts(model: nn.Module) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    return counts


def _walk(module: nn.Module, shared: _SharedWith, name: str = "") -> None:
    fn = getattr(module, "reparameterize", None)
    if callable(fn):
        if shared.outside(module):
            warnings.warn(
                f"reparameterize: '{name or type(module).__name__}' shares a layer or weight with another part of "
                "the model and is left in its train form: folding it would change the other use too",
                stacklevel=3,
            )
            return
        fn()
    # list(): children are read after the block changed itself, and not mutated while iterating.
    for child_name, child in list(module.named_children()):
        _walk(child, shared, f"{name}.{child_name}" if name else child_name)


def _fold_sequential_bn(model: nn.Module) -> None:
    """Fold each BatchNorm that directly follows a plain Conv1d/Conv2d/Linear in an ``nn.Sequential`` into it.

    A layer that is registered more than once (reused elsewhere), or whose weight another layer shares, is left alone:
    folding would change its other uses. So is an ``nn.Sequential`` subclass with its own ``forward``.
    """
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm

    from edgeattn.blocks.rep import fuse_bn, set_weight_bias

    uses = _counts(model)  # modules and parameters
    for seq in list(model.modules()):
        # a subclass with its own forward may not run its children as a chain
        if not isinstance(seq, nn.Sequential) or type(seq).forward is not nn.Sequential.forward:
            continue
        keys = list(seq._modules)
        for first, second in zip(keys, keys[1:], strict=False):
            layer, bn = seq._modules[first], seq._modules[second]
            if type(layer) not in (nn.Conv1d, nn.Conv2d, nn.Linear) or not isinstance(bn, _BatchNorm):
                continue
            channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
            if bn.running_var is None or bn.num_features != channels or uses[id(layer)] > 1 or uses[id(bn)] > 1:
                continue
            if any(uses[id(p)] > 1 for p in (*layer.parameters(), *bn.parameters())):  # a weight tied elsewhere
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
