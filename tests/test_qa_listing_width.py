"""`edgeattn profiles list` and `profiles fields` into a pipe: every profile and field name appears whole, on one line
(before, rich's 80 columns cut 13 cells of the list to "apple-a…" and 10 field names to "quant.weight_per_chann…")."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from edgeattn.device_profile import describe_fields, shipped_profile_names


def _run(*args: str, columns: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if columns:
        env["COLUMNS"] = columns
    code = f"from edgeattn.cli import main; raise SystemExit(main({list(args)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _first_cells(text: str) -> list[str]:
    """The first column of each table body row (rows start with the box's vertical bar)."""
    return [m.group(1).strip() for m in re.finditer(r"^│ ([^│]*)│", text, re.M)]


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("profiles", "list"), lambda: shipped_profile_names()),
        (("profiles", "fields"), lambda: [row[0] for row in describe_fields()]),
    ],
)
def test_a_piped_listing_keeps_every_name_whole_on_one_line(args, names):
    out = _run(*args)
    assert "…" not in out
    cells = [c for c in _first_cells(out) if c]
    assert cells == list(names())  # one row per name, each whole, in order, none wrapped onto a second line


def test_columns_set_wraps_to_it_and_cuts_no_name():
    out = _run("profiles", "fields", columns="80")
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    # the name column never wraps: every field name is still one cell
    assert [c for c in _first_cells(out) if c] == [row[0] for row in describe_fields()]


def test_a_table_wider_than_the_console_is_printed_whole_and_the_width_restored():
    """print_whole_table is the one mechanism for both the listings and the profiler's tables; before, the
    profiler's version passed width= to Console.print, which rich caps at the console's width: a no-op."""
    from rich.console import Console
    from rich.table import Table

    from edgeattn.profile.report import print_whole_table

    console = Console(width=40, record=True)
    table = Table()
    for name in ("a", "b", "c"):
        table.add_column(name, no_wrap=True)
    table.add_row("8213.4711", "12345678901234", "0.217400000000")
    print_whole_table(console, table)
    text = console.export_text()
    assert "…" not in text and "8213.4711" in text and "12345678901234" in text and "0.217400000000" in text
    assert max(len(line) for line in text.splitlines()) > 40 and console.width == 40
