"""Usage errors as the CLI's one error line.

Typer draws a click usage error (an unknown option, a value it cannot parse, a missing argument) as the usage
text, a hint and a boxed panel: five or more lines in a different shape from every other error this CLI prints.
The classes here turn it into :class:`edgeattn.errors.EdgeAttnError` (exit 2), which :func:`edgeattn.cli.run_app`
prints as ``error: No such option: --bogus (see 'edgeattn export -h')``. The help screen typer shows for a group
called without a subcommand is left alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from typer.core import TyperCommand, TyperGroup

from edgeattn.errors import EdgeAttnError

try:  # typer >= 0.20 carries its own copy of click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer runs on the click package
    from click.exceptions import NoArgsIsHelpError, UsageError


@contextmanager
def usage_errors_as_one_line() -> Iterator[None]:
    """Re-raise a click ``UsageError`` as an ``EdgeAttnError`` whose message ends with where help is."""
    try:
        yield
    except NoArgsIsHelpError:
        raise
    except UsageError as exc:
        ctx = exc.ctx
        hint = ""
        if ctx is not None and ctx.help_option_names:
            hint = f" (see '{ctx.command_path} {ctx.help_option_names[0]}')"
        raise EdgeAttnError(f"{exc.format_message().rstrip('.')}{hint}", exit_code=exc.exit_code) from None


class _OneLineUsage:
    """Mixin for typer's command classes: parsing (``make_context``) and running (``invoke``, which parses every
    subcommand) report usage errors as one line."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        with usage_errors_as_one_line():
            return super().make_context(info_name, args, parent=parent, **extra)  # type: ignore[misc]

    def invoke(self, ctx: Any) -> Any:
        with usage_errors_as_one_line():
            return super().invoke(ctx)  # type: ignore[misc]


class OneLineUsageGroup(_OneLineUsage, TyperGroup):
    """A typer group (``typer.Typer(cls=...)``) whose usage errors, its subcommands' included, are one line."""


class OneLineUsageCommand(_OneLineUsage, TyperCommand):
    """A typer command (``app.command(cls=...)``) whose usage errors are one line."""
