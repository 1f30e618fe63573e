"""The ``edgeattn`` command line (typer + rich).

Each subcommand lives in its own module here and imports heavy libraries (torch, runtimes) inside its
function body, so ``edgeattn --help`` stays fast. Errors a user can cause are raised as
:class:`edgeattn.errors.EdgeAttnError` (or ``ValueError``) and end as one line on stderr with the
error's exit code; so does an ``OSError`` about a path (exit 2). Anything else is a bug and keeps its traceback.
Ctrl-C ends with exit code 130, also where a library swallowed it and failed afterwards. A usage error (unknown
option, unparsable value, missing argument) is one line too, with exit 2 (:mod:`edgeattn.cli._usage`).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

from edgeattn import __version__
from edgeattn.cli import approx, demo, export, hls, models, profile, profiles, qat
from edgeattn.cli._common import fail
from edgeattn.cli._usage import OneLineUsageGroup

app = typer.Typer(
    name="edgeattn",
    cls=OneLineUsageGroup,
    help="Take attention models from PyTorch to edge hardware: approximate, quantize, export, profile, HLS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgeattn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """edgeattn: hardware-aware deployment of attention models."""


app.add_typer(profiles.app, name="profiles")
app.add_typer(models.app, name="models")
app.add_typer(approx.app, name="approx")
app.command("qat")(qat.qat)
app.command("export")(export.export)
app.command("profile")(profile.profile)
app.command("hls")(hls.hls)
app.command("demo")(demo.demo)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app, turning user errors into one line and an exit code."""
    return run_app(app, argv)


def run_app(typer_app: typer.Typer, argv: list[str] | None = None, prog_name: str | None = None) -> int:
    """Run ``typer_app`` on ``argv`` (default: ``sys.argv[1:]``) with the CLI's error handling: a user error is one
    line on stderr and its exit code (``python -m edgeattn.quant.train`` runs the qat command through this too)."""
    from edgeattn.errors import EdgeAttnError

    with _noting_interrupts() as interrupted:
        try:
            typer_app(args=argv, standalone_mode=True, prog_name=prog_name)
        except SystemExit as exc:
            code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
            if _unhandled_interrupt(exc):  # typer turned a Ctrl-C no command caught into a silent exit 130
                return fail("interrupted", 130)
            return 130 if interrupted and code != 0 else code
        except KeyboardInterrupt:
            return fail("interrupted", 130)
        except (EdgeAttnError, ValueError, OSError) as exc:
            if isinstance(exc, EdgeAttnError) and exc.exit_code == 130:  # the command's own word on the interrupt
                return fail(str(exc), 130)
            if interrupted:  # an error that followed a Ctrl-C a library swallowed: report the Ctrl-C
                return fail("interrupted", 130)
            if isinstance(exc, EdgeAttnError):
                return fail(str(exc), exc.exit_code)
            if isinstance(exc, ValueError):  # library-level input validation (e.g. unknown approx method)
                return fail(str(exc), 2)
            # A file or folder the user named that cannot be read or written (not a folder, read-only, disk
            # full): one line, as for other bad input. An OSError naming no path is a bug and keeps its traceback.
            if exc.filename is None and exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a write() names no file
                return fail(f"cannot write the output: {os.strerror(exc.errno)} (the artifacts are not published)", 2)
            if exc.filename is None:
                raise
            return fail(_os_error_line(exc), 2)
    return 0


def _unhandled_interrupt(exc: SystemExit) -> bool:
    """True when ``exc`` is typer's ``Exit(130)`` raised *from* a ``KeyboardInterrupt`` that reached it: the command
    did not handle the Ctrl-C (a command that does says so itself and raises its own ``typer.Exit(130)``)."""
    exit_ = exc.__context__
    return isinstance(exit_, typer.Exit) and isinstance(exit_.__cause__, KeyboardInterrupt)


@contextmanager
def _noting_interrupts() -> Iterator[list[bool]]:
    """Note each Ctrl-C (SIGINT) while a command runs, then raise ``KeyboardInterrupt`` as Python's own handler does.

    Some libraries swallow a ``KeyboardInterrupt`` that lands while they import (OpenVINO, sympy under torch.onnx),
    then fail later with a misleading error ("needs the 'openvino' package"); the note lets :func:`run_app` report
    the interrupt instead. Installed only where Python's default handler is in place (not where SIGINT is ignored,
    as in a background job, or handled by someone else) and restored afterwards.
    """
    seen: list[bool] = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield seen
        return

    def note_and_raise(signum: int, frame: Any) -> None:
        seen.append(True)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, note_and_raise)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _os_error_line(exc: OSError) -> str:
    """``exc`` as one line naming its path(s): ``cannot use 'out/x.json': Not a directory``."""
    names = f"'{exc.filename}'" + (f" -> '{exc.filename2}'" if exc.filename2 is not None else "")
    return f"cannot use {names}: {exc.strerror or exc}"


if __name__ == "__main__":
    sys.exit(main())
