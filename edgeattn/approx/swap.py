"""Swap the softmax and GELU of a whole model for hardware-friendly approximations, and read which it uses.

The registry's models hold :class:`ApproxSoftmax` / :class:`ApproxGELU` modules and take ``softmax=`` / ``gelu=``
at construction. Your own model (or a checkpoint) can be switched afterwards with :func:`set_approximations`,
which also replaces ``torch.nn.Softmax`` and ``torch.nn.GELU`` modules. A softmax called as a function inside a
``forward`` (``x.softmax(-1)``, ``F.softmax``, ``F.scaled_dot_product_attention``) is not a module and cannot be
swapped from outside: use ``edgeattn.approx.softmax(x, dim, method)`` there. Neither can torch's
``nn.MultiheadAttention`` (and the ``nn.Transformer*`` layers built on it), whose softmax runs inside one torch
function: :func:`set_approximations` warns about it and :func:`approximations_in` reports it as ``exact``.
"""


from __future__ import annotations

import warnings

import torch.nn.functional as F
from torch import nn

from edgeattn.approx.float_ops import GELU_METHODS, SOFTMAX_METHODS, ApproxGELU, ApproxSoftmax


def _fused_exact(module: nn.Module) -> tuple[str, ...]:
    """The ops (``"softmax"``, ``"gelu"``) a torch module computes exactly inside its own forward, where no
    submodule can be swapped."""
    if isinstance(module, nn.MultiheadAttention):
        return ("softmax",)
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)) and module.activation is F.gelu:
        return ("gelu",)  # activation="gelu" is the function; a GELU module given as activation is a child
    return ()


def _check_module(model: object, where: str) -> None:
    """``TypeError`` unless ``model`` is a module instance (a class, e.g. ``MyNet`` for ``MyNet()``, is named so)."""
    if not isinstance(model, nn.Module):
        what = f"the class {model.__name__}; pass an instance" if isinstance(model, type) else type(model).__name__
        raise TypeError(f"{where} takes an nn.Module, got {what}")


def set_approximations(model: nn.Module, softmax: str | None = None, gelu: str | None = None) -> dict[str, int]:
    """Make every softmax (``softmax`` given) and GELU (``gelu`` given) module of ``model`` use that method.

    In place. ``ApproxSoftmax``/``ApproxGELU`` modules get the new method; ``nn.Softmax(dim)`` and ``nn.GELU``
    modules are replaced by ``ApproxSoftmax(softmax, dim)`` and ``ApproxGELU(gelu)``. Returns how many modules
    now compute each: ``{"softmax": n, "gelu": m}``. Raises ``ValueError`` for an unknown method or an
    ``nn.Softmax`` without a ``dim`` (its axis depends on the input's rank), ``TypeError`` for a non-module.
    """
    _check_module(model, "set_approximations")
    for arg, method, allowed in (("softmax", softmax, SOFTMAX_METHODS), ("gelu", gelu, GELU_METHODS)):
        if method is not None and method not in allowed:
            raise ValueError(
                f"set_approximations: argument '{arg}': unknown {arg} method {method!r}; allowed: {', '.join(allowed)}"
            )
    if (softmax is not None and type(model) is nn.Softmax) or (gelu is not None and type(model) is nn.GELU):
        raise ValueError(
            f"set_approximations replaces the {type(model).__name__} modules inside a model and cannot replace the "
            "model itself; pass the module that holds it"
        )
    # every check comes before the first change: a refused call leaves the model as it was
    swaps = _planned_swaps(model, softmax, gelu)
    counts = {"softmax": 0, "gelu": 0}
    if softmax is not None and isinstance(model, ApproxSoftmax):
        model.method, counts["softmax"] = softmax, 1
    if gelu is not None and isinstance(model, ApproxGELU):
        model.method, counts["gelu"] = gelu, 1
    replaced: dict[int, nn.Module] = {}  # one replacement per module: one registered twice stays shared
    for parent, name, child, op in swaps:
        if isinstance(child, (ApproxSoftmax, ApproxGELU)):
            child.method = softmax if op == "softmax" else gelu
        else:
            if id(child) not in replaced:
                new = ApproxSoftmax(softmax, child.dim) if op == "softmax" else ApproxGELU(gelu)
                replaced[id(child)] = new.train(child.training)
            setattr(parent, name, replaced[id(child)])
        counts[op] += 1
    _warn_fused(model, {"softmax": softmax, "gelu": gelu})
    return counts


def _planned_swaps(
    model: nn.Module, softmax: str | None, gelu: str | None
) -> list[tuple[nn.Module, str, nn.Module, str]]:
    """``(parent, name, child, op)`` for every softmax/GELU child :func:`set_approximations` changes, found
    without changing anything; an ``nn.Softmax`` without ``dim`` raises ``ValueError`` here."""
    swaps = []
    for parent_name, parent in model.named_modules():
        # _modules, not named_children(): a module registered under two names is replaced under both
        for name, child in parent._modules.items():
            if softmax is not None and isinstance(child, nn.Softmax) and child.dim is None:
                where = f"{parent_name}.{name}" if parent_name else name
                raise ValueError(f"nn.Softmax '{where}' has no dim; give it one before swapping its method")
            if softmax is not None and isinstance(child, (ApproxSoftmax, nn.Softmax)):
                swaps.append((parent, name, child, "softmax"))
            elif gelu is not None and isinstance(child, (ApproxGELU, nn.GELU)):
                swaps.append((parent, name, child, "gelu"))
    return swaps


def _warn_fused(model: nn.Module, wanted: dict[str, str | None]) -> None:
    """Warn once per op about torch modules that keep computing it exactly although another method was asked."""
    for op, method in wanted.items():
        if method is None or method == "exact":
            continue
        stuck = [f"{n or '(model)'} ({type(m).__name__})" for n, m in model.named_modules() if op in _fused_exact(m)]
        if stuck:
            more = ", ..." if len(stuck) > 3 else ""
            warnings.warn(
                f"set_approximations: {len(stuck)} module(s) compute {op} inside a torch function and keep the exact "
                f"one, not '{method}': {', '.join(stuck[:3])}{more}; write that attention with nn.Linear layers and "
                f"edgeattn.approx's ApproxSoftmax / ApproxGELU to swap it",
                stacklevel=3,
            )


def approximations_in(model: nn.Module) -> dict[str, set[str]]:
    """The methods the softmax and GELU modules of ``model`` compute, e.g. ``{"softmax": {"exact"},
    "gelu": {"edgemoe"}}`` (an empty set where it has none).

    ``ApproxSoftmax``/``ApproxGELU`` report their method; torch's ``nn.Softmax`` is ``exact`` and ``nn.GELU`` is
    ``exact`` (or ``tanh`` with ``approximate="tanh"``, the same formula), and so is the softmax of
    ``nn.MultiheadAttention`` (the GELU of an ``nn.Transformer*Layer`` with ``activation="gelu"``). Functional
    calls are not seen.
    """
    _check_module(model, "approximations_in")
    found: dict[str, set[str]] = {"softmax": set(), "gelu": set()}
    for module in model.modules():
        if isinstance(module, ApproxSoftmax):
            found["softmax"].add(module.method)
        elif isinstance(module, nn.Softmax):
            found["softmax"].add("exact")
        elif isinstance(module, ApproxGELU):
            found["gelu"].add(module.method)
        elif isinstance(module, nn.GELU):
            found["gelu"].add("tanh" if module.approximate == "tanh" else "exact")
        for op in _fused_exact(module):
            found[op].add("exact")
    return found
