"""Helpers shared by the CLI commands: console, one-line errors, JSON output."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, ProgressColumn

from edgeattn.atomic import check_writable_folder, write_text_atomic
from edgeattn.errors import EdgeAttnError

console = Console()
err_console = Console(stderr=True)


def fail(message: str, exit_code: int = 2) -> int:
    """Print one error line to stderr and return ``exit_code`` (for ``main``)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return exit_code


def transient_progress(*columns: str | ProgressColumn) -> Progress:
    """A progress display that vanishes when it closes (rich's default columns unless ``columns`` are given).

    Off where stdout is not a terminal: there it cannot be erased, and its last refresh would leave a blank
    line in front of the table or the error that follows.
    """
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)


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


def missing_folders(folder: str | Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet (what writing into ``folder`` would create), deepest
    first."""
    folder = Path(os.path.abspath(folder))
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def check_output_path(path: Path, flag: str) -> None:
    """Raise an :class:`EdgeAttnError` unless ``path`` can be written: checked before any measuring.

    ``path`` must not be a folder, and its parent must be a folder this process may write to, or be
    creatable (its nearest existing ancestor is a writable folder): :func:`edgeattn.atomic.check_writable_folder`.
    No folder is created here.
    """
    if path.is_dir():
        raise EdgeAttnError(f"{flag} '{path}' is a directory")
    check_writable_folder(Path(os.path.abspath(path)).parent, f"{flag} '{path}'")
