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
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to a mistyped ``name`` (difflib's ratio >= 0.6), or
    ``""`` when none is close: for "unknown ..." messages, which list every choice as well."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
