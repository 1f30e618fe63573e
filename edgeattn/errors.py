"""Errors a user can cause. The CLI turns each into one line on stderr and its exit code."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EdgeAttnError(ValueError):
    """A problem with the user's input (file, flag, profile, model). ``exit_code`` is what the CLI returns."""

    exit_code: int = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ProfileError(EdgeAttnError):
    """A device profile that is missing, malformed or does not fit the request."""


class MissingBackendError(EdgeAttnError):
    """An optional runtime or tool (openvino, coremltools, tensorrt, g++, ap_types headers) is not available."""

    exit_code = 4


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for what a mistyped ``name`` most likely meant among ``choices``, or ``""``: for
    "unknown ..." messages, which list every choice as well. Case is ignored; a name that starts some choices gets
    them (``vit`` -> ``vit_tiny``; ``fmvit`` -> three), otherwise the closest by difflib's ratio (>= 0.6)."""
    by_lower = {c.lower(): c for c in choices}
    typed = str(name).lower()
    starts = [c for low, c in sorted(by_lower.items()) if low.startswith(typed) and low != typed]
    if typed in by_lower:  # the same name in another case
        starts = [by_lower[typed]]
    if not starts:
        starts = [by_lower[c] for c in difflib.get_close_matches(typed, list(by_lower), n=1, cutoff=0.6)]
    if not starts:
        return ""
    if len(starts) == 1:
        return f" (did you mean '{starts[0]}'?)"
    return f" (did you mean one of {', '.join(repr(c) for c in starts)}?)"
