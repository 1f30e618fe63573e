"""Command-line plumbing shared by the benchmarks: one-line errors for bad input, output checks made before any
measuring, and the provenance record (command, host, versions, load) every JSON carries.

A benchmark's ``main`` raises :class:`BenchError` (or the project's ``EdgeAttnError``) for bad input; run it with
``sys.exit(run_cli(main))`` so that the error is one ``error: ...`` line on stderr and the exit status is 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from edgeattn.errors import EdgeAttnError


class BenchError(Exception):
    """Bad input to a benchmark (flag value, output path, earlier JSON): reported as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``<prog>: error: ...``) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` as one line to stderr and exit with status 2 (argparse's code for usage errors)."""
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def nonneg_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got '{text}'") from None
    if not value >= 0 or value == float("inf"):  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def int_list(text: str, flag: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (empty items skipped); a :class:`BenchError` naming ``flag`` otherwise."""
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise BenchError(f"{flag} takes comma-separated integers, got '{text}'") from None


def check_out(path: str | Path, flag: str, force: bool = True) -> Path:
    """``path`` as a :class:`Path`, or a :class:`BenchError` unless a file can be written there.

    ``force=False`` (a script's ``--force`` not given) also refuses an existing file, so that a quick check cannot
    replace a committed JSON; scripts that merge into the file they read first keep the default.
    Checked before any measuring, so that a bad output path fails in a second, not after the benchmark ran. The
    write itself is atomic (``edgeattn.cli._common.write_json``: temporary file + rename).
    """
    from edgeattn.cli._common import check_output_path

    out = Path(path)
    try:
        check_output_path(out, flag)
    except EdgeAttnError as exc:
        raise BenchError(str(exc)) from None
    if not force and out.exists():
        raise BenchError(f"{flag} '{out}' exists: --force replaces it (quick checks: write to /tmp)")
    return out


def description(doc: str) -> str:
    """A script's ``--help`` description: the first paragraph of its docstring, on one line."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def read_json(path: Path, flag: str) -> dict[str, Any]:
    """The JSON object in ``path`` (an earlier run's output), or a :class:`BenchError` that says why it cannot
    be used."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BenchError(f"{flag} '{path}' cannot be read as JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BenchError(f"{flag} '{path}' holds a JSON {type(payload).__name__}, not the object this writes")
    return payload


def command_line(argv: list[str] | None = None) -> str:
    """The command that reproduces this run, as typed from the repository root:
    ``python benchmarks/<script> <arguments>``."""
    argv = sys.argv if argv is None else argv
    return shlex.join(["python", f"benchmarks/{Path(argv[0]).name}", *argv[1:]])


def provenance() -> dict[str, Any]:
    """Where and when a run happened: host (CPU, ISA flags, runtime versions), Python, load average at start."""
    from edgeattn.hostinfo import detect_host

    return {
        "host": detect_host().model_dump(mode="json"),
        "python": platform.python_version(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_at_start": list(os.getloadavg()),
    }


def run_cli(main: Callable[[], int | None]) -> int:
    """Run ``main``; bad input (:class:`BenchError`, ``EdgeAttnError``) becomes one ``error:`` line and status 2,
    Ctrl-C one ``interrupted`` line and status 130. Anything else is a bug and keeps its traceback."""
    try:
        return int(main() or 0)
    except (BenchError, EdgeAttnError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
