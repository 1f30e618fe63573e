"""Swap the softmax and GELU of a whole model for hardware-friendly approximations, and read which it uses.

The registry's models hold :class:`ApproxSoftmax` / :class:`ApproxGELU` modules and take ``softmax=`` / ``gelu=``
at construction. Your own model (or a checkpoint) can be switched afterwards with :func:`set_approximations`,
which also replaces ``torch.nn.Softmax`` and ``torch.nn.GELU`` modules. A softmax called as a function inside a
``forward`` (``x.softmax(-1)``, ``F.softmax``, ``F.scaled_dot_product_attention``) is not a module and cannot be
swapped from outside: use ``edgeattn.approx.softmax(x, dim, method)`` there.
"""

from __future__ import annotations

from torch import nn

from edgeattn.approx.float_ops import GELU_METHODS, SOFTMAX_METHODS, ApproxGELU, ApproxSoftmax, _check_method


def set_approximations(model: nn.Module, softmax: str | None = None, gelu: str | None = None) -> dict[str, int]:
    """Make every softmax (``softmax`` given) and GELU (``gelu`` given) module of ``model`` use that method.

    In place. ``ApproxSoftmax``/``ApproxGELU`` modules get the new method; ``nn.Softmax(dim)`` and ``nn.GELU``
    modules are replaced by ``ApproxSoftmax(softmax, dim)`` and ``ApproxGELU(gelu)``. Returns how many modules
    now compute each: ``{"softmax": n, "gelu": m}``. Raises ``ValueError`` for an unknown method or an
    ``nn.Softmax`` without a ``dim`` (its axis depends on the input's rank).
    """
    if softmax is not None:
        _check_method(softmax, SOFTMAX_METHODS, "softmax")
    if gelu is not None:
        _check_method(gelu, GELU_METHODS, "gelu")
    counts = {"softmax": 0, "gelu": 0}
    for parent_name, parent in list(model.named_modules()):  # a list: children are replaced on the way
        for name, child in list(parent.named_children()):
            if softmax is not None and isinstance(child, ApproxSoftmax):
                child.method = softmax
                counts["softmax"] += 1
            elif softmax is not None and isinstance(child, nn.Softmax):
                if child.dim is None:
                    where = f"{parent_name}.{name}" if parent_name else name
                    raise ValueError(f"nn.Softmax '{where}' has no dim; give it one before swapping its method")
                setattr(parent, name, ApproxSoftmax(softmax, child.dim))
                counts["softmax"] += 1
            elif gelu is not None and isinstance(child, ApproxGELU):
                child.method = gelu
                counts["gelu"] += 1
            elif gelu is not None and isinstance(child, nn.GELU):
                setattr(parent, name, ApproxGELU(gelu))
                counts["gelu"] += 1
    return counts


def approximations_in(model: nn.Module) -> dict[str, set[str]]:
    """The methods the softmax and GELU modules of ``model`` compute, e.g. ``{"softmax": {"exact"},
    "gelu": {"edgemoe"}}`` (an empty set where it has none).

    ``ApproxSoftmax``/``ApproxGELU`` report their method; torch's ``nn.Softmax`` is ``exact`` and ``nn.GELU`` is
    ``exact`` (or ``tanh`` with ``approximate="tanh"``, the same formula). Functional calls are not seen.
    """
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
    return found
