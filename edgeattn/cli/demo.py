"""`edgeattn demo` (placeholder until its issue lands)."""

from __future__ import annotations

from edgeattn.errors import EdgeAttnError


def demo() -> None:
    """Not implemented yet."""
    raise EdgeAttnError("'edgeattn demo' is not implemented yet", exit_code=1)
