"""Helpers shared by the CLI commands: console, one-line errors, JSON output."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, ProgressColumn

from edgeattn.atomic import check_writable_folder, is_within, refuse_protected, write_text_atomic
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


def check_report_path(
    path: Path,
    flag: str,
    force: bool,
    inputs: Iterable[str | Path | None] = (),
    resume: bool = False,
    output: Path | None = None,
) -> None:
    """Refuse, before any work, a report path (``--json``, ``--plot``) that would destroy something.

    The one rule of every command: :func:`check_output_path`'s checks; never a path in one of
    :func:`~edgeattn.atomic.protected_folders` (a shipped profile YAML, the environment's libraries); never the
    command's ``output`` folder or anything inside it (replaced as a whole, which would take the report with it);
    never one of the command's ``inputs`` (a file, or anything inside an input folder; ``None`` and paths that do
    not exist are skipped), with or without ``--force``; an existing file only with ``--force`` (or ``resume``: the
    same run's report, continued).
    """
    if output is not None and is_within(path, output):
        raise EdgeAttnError(f"{flag} '{path}' is inside the output folder '{output}'; write it elsewhere")
    check_output_path(path, flag)
    refuse_protected(path, flag)  # a shipped profile, a source file, the environment: not even with --force
    for given in inputs:
        if given is not None and _same_or_inside(path, Path(given)):
            raise EdgeAttnError(f"{flag} '{path}' would overwrite the input '{given}'; write it elsewhere")
    if path.exists() and not (force or resume):
        raise EdgeAttnError(f"{flag} '{path}' exists; pass --force to overwrite it")


def with_run_files(inputs: Iterable[str | Path | None]) -> list[str | Path | None]:
    """``inputs`` and, beside each ``.pt`` file among them, the files of the ``edgeattn qat`` run that wrote it
    (its metrics.json, result.json, other checkpoints): what a ``--json`` must not replace either."""
    from edgeattn.quant.train import RUN_FILES

    inputs = list(inputs)
    pts = [Path(p) for p in inputs if p is not None and Path(p).suffix == ".pt" and Path(p).is_file()]
    return inputs + [pt.parent / name for pt in pts for name in RUN_FILES]


def _same_or_inside(path: Path, source: Path) -> bool:
    """True when ``path`` is the existing file ``source`` (a link to it included) or lies inside the folder
    ``source``."""
    if not source.exists():
        return False
    if source.is_dir():
        return source.resolve() in path.resolve().parents
    if path.exists():
        return os.path.samefile(path, source)
    return path.resolve() == source.resolve()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM acts as Ctrl-C: a ``KeyboardInterrupt`` that unwinds through the staging
    contexts (which remove their temporary folders), so the command ends with exit code 130 as after Ctrl-C, as
    ``edgeattn qat`` does on SIGTERM. Python's default for SIGTERM is to die at once, leaving temp folders.

    The signal goes through the SIGINT handler in place (the CLI's, which notes the interrupt) where there is
    one; main thread only, and the old handler is restored afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def as_ctrl_c(signum: int, frame: Any) -> None:
        on_int = signal.getsignal(signal.SIGINT)
        if callable(on_int):
            on_int(signal.SIGINT, frame)
        raise KeyboardInterrupt  # SIGINT ignored (a background job) or a handler that did not raise

    old = signal.signal(signal.SIGTERM, as_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
