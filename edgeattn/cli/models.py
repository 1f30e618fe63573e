"""`edgeattn models ...`: the model registry."""

from __future__ import annotations

import typer

app = typer.Typer(help="Models in the registry.", no_args_is_help=True)
