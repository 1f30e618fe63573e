"""Ctrl-C ends a command with exit code 130, also where a library swallowed the KeyboardInterrupt and failed later.

brevitas imports torch._dynamo inside a bare ``except:``; a Ctrl-C landing in that import used to vanish and come
back as a misleading error ("the OpenVINO target needs the 'openvino' package", "module 'sympy' has no attribute
'printing'") or not at all.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import textwrap

import pytest
import typer

from edgeattn.cli import run_app
from edgeattn.errors import EdgeAttnError


def _app(swallow_ctrl_c: bool, then_fail: bool) -> typer.Typer:
    app = typer.Typer(add_completion=False)

    @app.command()
    def work() -> None:
        if swallow_ctrl_c:
            with contextlib.suppress(BaseException):  # what a library's bare ``except:`` does to a Ctrl-C
                signal.raise_signal(signal.SIGINT)
        if then_fail:
            raise EdgeAttnError("the OpenVINO target needs the 'openvino' package", exit_code=4)

    @app.callback()
    def _root() -> None:
        """Two commands' worth of app, so typer keeps the subcommand name."""

    return app


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler in place (a test runner's worker may ignore SIGINT), restored afterwards."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize(
    ("swallow", "fail", "code", "stderr"),
    [
        (True, True, 130, "error: interrupted"),  # the error that followed the swallowed Ctrl-C is not reported
        (False, True, 4, "error: the OpenVINO target needs the 'openvino' package"),  # without a Ctrl-C it is
        (True, False, 0, ""),  # the work finished (and was written atomically) in spite of the Ctrl-C
    ],
)
def test_an_error_after_a_swallowed_ctrl_c_is_reported_as_the_interrupt(
    python_sigint_handler, capsys, swallow, fail, code, stderr
):
    assert run_app(_app(swallow, fail), ["work"]) == code
    assert capsys.readouterr().err.strip() == stderr
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_ctrl_c_that_is_not_swallowed_exits_130(python_sigint_handler, capsys):
    app = typer.Typer(add_completion=False)

    @app.command()
    def work() -> None:
        signal.raise_signal(signal.SIGINT)

    @app.command()
    def careful() -> None:  # a command that handles its Ctrl-C says so itself: no second line
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            typer.echo("stopped; the last epoch is kept", err=True)
            raise typer.Exit(130) from None

    @app.callback()
    def _root() -> None:
        """Root."""

    assert run_app(app, ["work"]) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"  # typer alone would exit 130 saying nothing
    assert run_app(app, ["careful"]) == 130
    assert capsys.readouterr().err.strip() == "stopped; the last epoch is kept"


def test_an_ignored_sigint_stays_ignored(capsys):
    # a background job's SIGINT is SIG_IGN: run_app must not install a handler that would make it interruptible
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert run_app(_app(True, True), ["work"]) == 4
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)
    assert "needs the 'openvino' package" in capsys.readouterr().err


def test_edgeattn_quant_imports_torch_dynamo_before_brevitas():
    """Checked in a fresh interpreter by recording the order of first imports."""
    code = textwrap.dedent(
        """
        import sys
        order = []
        class Recorder:
            def find_spec(self, name, path=None, target=None):
                if name in ("torch._dynamo", "brevitas"):
                    order.append(name)
                return None
        sys.meta_path.insert(0, Recorder())
        import edgeattn.quant
        print(",".join(order))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().split(",")[:2] == ["torch._dynamo", "brevitas"], out.stdout
