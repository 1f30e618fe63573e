"""The model registry: ``@register_model``, ``create_model(name, **kwargs)``, ``list_models()``."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from edgeattn.errors import EdgeAttnError, did_you_mean

__all__ = [
    "register_model",
    "create_model",
    "list_models",
    "model_entrypoint",
    "approximation_kwargs",
    "is_language_model",
]

_F = TypeVar("_F", bound=Callable[..., nn.Module])
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: _F | None = None, *, name: str | None = None):
    """Register a model factory under ``name`` (default: the function's name).

    Usable as ``@register_model`` or ``@register_model(name="x")``. Registering a name twice is an error
    (two modules silently fighting over one name would make ``create_model`` depend on import order).
    """

    def _wrap(f: _F) -> _F:
        key = name or f.__name__
        if key in _REGISTRY and _REGISTRY[key] is not f:
            raise ValueError(f"model {key!r} is already registered (by {_REGISTRY[key].__module__})")
        _REGISTRY[key] = f
        return f

    return _wrap(fn) if fn is not None else _wrap


def list_models() -> list[str]:
    """Sorted names of every registered model."""
    _load_builtin()
    return sorted(_REGISTRY)


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The factory registered as ``name``; raises ``EdgeAttnError`` naming the valid models otherwise."""
    _load_builtin()
    if name not in _REGISTRY:
        hint = did_you_mean(name, _REGISTRY)
        raise EdgeAttnError(f"unknown model {name!r}{hint}; valid models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs`` passed to its factory (random weights).

    Raises ``EdgeAttnError`` (a ``ValueError``) for an unknown name, an argument the factory does not take
    or one the model sets itself (``mobilenetv2_ela`` fixes ``attention``); the models' own checks raise
    ``ValueError`` naming the argument for a wrong type or range (``depth=0``, ``num_heads="2"``).
    """
    fn = model_entrypoint(name)
    _check_approximation_kwargs(name, fn, kwargs)
    try:
        return fn(**kwargs)
    except TypeError as exc:
        # A keyword that does not bind (unknown, or given twice because the factory sets it itself) is a user
        # error; any other TypeError is a bug (the models check their argument types) and propagates.
        match = _BINDING_ERROR.search(str(exc))
        if match is None or match.group("arg") not in kwargs:
            raise
        arg = match.group("arg")
        if "multiple values" in match.group(0):
            raise EdgeAttnError(f"model {name!r} sets argument {arg!r} itself; leave it out") from exc
        raise EdgeAttnError(f"model {name!r} takes no argument {arg!r} ({exc})") from exc


def _check_approximation_kwargs(name: str, fn: Callable[..., nn.Module], kwargs: dict) -> None:
    """Raise ``EdgeAttnError`` naming the argument (``softmax``/``gelu``) for an unknown approximation method.

    The blocks check the method too, but their message names their own argument ('method'), not the one given.
    An argument the factory does not name is left to the binding check (``tiny_llama`` has no ``gelu``).
    """
    from edgeattn.approx import GELU_METHODS, SOFTMAX_METHODS

    params = inspect.signature(fn).parameters
    for arg, allowed in (("softmax", SOFTMAX_METHODS), ("gelu", GELU_METHODS)):
        if arg in kwargs and arg in params and kwargs[arg] not in allowed:
            raise EdgeAttnError(
                f"model {name!r}: argument {arg!r}: unknown {arg} method {kwargs[arg]!r}; allowed: {', '.join(allowed)}"
            )


def approximation_kwargs(name: str, softmax: str, gelu: str) -> dict[str, str]:
    """Factory arguments that make model ``name`` compute its softmax and GELU with these methods.

    Only methods other than ``exact`` (every model's default) and only arguments the factory names: a model
    without attention or GELU (MobileNet-V2) gets none, ``tiny_llama`` (SwiGLU) no ``gelu``.
    """
    params = inspect.signature(model_entrypoint(name)).parameters
    wanted = {"softmax": softmax, "gelu": gelu}
    return {arg: method for arg, method in wanted.items() if method != "exact" and arg in params}


def is_language_model(name: str) -> bool:
    """Whether model ``name`` is a language model (its factory takes a ``vocab_size``; vision models take
    ``num_classes``)."""
    return "vocab_size" in inspect.signature(model_entrypoint(name)).parameters


# "f() got an unexpected keyword argument 'x'" / "f() got multiple values for (keyword) argument 'x'"
_BINDING_ERROR = re.compile(
    r"(unexpected keyword argument|multiple values for (?:keyword )?argument) '(?P<arg>\w+)'"
)


def _load_builtin() -> None:
    # Importing the package registers the built-in models (each module's decorators run on import).
    import edgeattn.models  # noqa: F401
