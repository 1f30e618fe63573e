"""Helpers shared by the CLI commands: console, one-line errors, JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from edgeattn.atomic import write_text_atomic

console = Console()
err_console = Console(stderr=True)


def fail(message: str, exit_code: int = 2) -> int:
    """Print one error line to stderr and return ``exit_code`` (for ``main``)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return exit_code


def write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as pretty JSON atomically (temp file + rename): never a half-written file."""
    text = json.dumps(payload, indent=2, default=_jsonable) + "\n"
    return write_text_atomic(path, text)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
