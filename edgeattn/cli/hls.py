"""`edgeattn hls` (placeholder until its issue lands)."""

from __future__ import annotations

from edgeattn.errors import EdgeAttnError


def hls() -> None:
    """Not implemented yet."""
    raise EdgeAttnError("'edgeattn hls' is not implemented yet", exit_code=1)
