"""`edgeattn qat` (placeholder until its issue lands)."""

from __future__ import annotations

from edgeattn.errors import EdgeAttnError


def qat() -> None:
    """Not implemented yet."""
    raise EdgeAttnError("'edgeattn qat' is not implemented yet", exit_code=1)
