"""`edgeattn export` (placeholder until its issue lands)."""

from __future__ import annotations

from edgeattn.errors import EdgeAttnError


def export() -> None:
    """Not implemented yet."""
    raise EdgeAttnError("'edgeattn export' is not implemented yet", exit_code=1)
