"""Argument checks shared by the model constructors.

Model arguments reach the factories from user configs (``edgeattn qat`` ``model_kwargs``, ``edgeattn hls
--set``), so a bad value must fail up front with a ``ValueError`` naming the argument (the CLI prints it as one
line, exit 2), not as a ``ZeroDivisionError``/``TypeError`` deep inside a layer or, worse, as a model with no
layers. ``ValueError`` like the layers' own checks, not ``EdgeAttnError``: callers such as ``edgeattn hls``
add their own context (which ``--set``) to a model's ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

__all__ = ["check_positive_int", "check_positive_ints", "check_positive_number", "check_positive_numbers"]


def check_positive_int(where: str, **values: object) -> None:
    """Raise ``ValueError("{where}: {name} must be a positive integer, got ...")`` unless every value is an
    integer > 0. ``bool`` is refused (``True`` is an int to Python, never a meant layer count)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, Integral) or value <= 0:
            raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")


def check_positive_ints(where: str, name: str, values: Sequence[object]) -> None:
    """:func:`check_positive_int` for each entry of a sequence argument, named ``name[i]``."""
    check_positive_int(where, **_entries(where, name, values))


def check_positive_numbers(where: str, name: str, values: Sequence[object]) -> None:
    """:func:`check_positive_number` for each entry of a sequence argument, named ``name[i]``."""
    check_positive_number(where, **_entries(where, name, values))


def _entries(where: str, name: str, values: Sequence[object]) -> dict[str, object]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{where}: {name} must be a list, got {values!r}")
    return {f"{name}[{i}]": v for i, v in enumerate(values)}


def check_positive_number(where: str, **values: object) -> None:
    """Like :func:`check_positive_int` for finite real numbers > 0 (ratios such as ``mlp_ratio``)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, Real) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"{where}: {name} must be a positive number, got {value!r}")
