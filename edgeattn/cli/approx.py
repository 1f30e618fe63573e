"""`edgeattn approx ...`: accuracy report of the softmax/GELU approximations (filled by the approx issue)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Hardware-friendly softmax and GELU approximations.", no_args_is_help=True)
