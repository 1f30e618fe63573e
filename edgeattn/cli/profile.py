"""`edgeattn profile` (placeholder until its issue lands)."""

from __future__ import annotations

from edgeattn.errors import EdgeAttnError


def profile() -> None:
    """Not implemented yet."""
    raise EdgeAttnError("'edgeattn profile' is not implemented yet", exit_code=1)
