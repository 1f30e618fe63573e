"""A usage error (unknown option, unparsable value, missing argument, unknown command) is the CLI's one error line
with exit 2, like every other error; typer drew it as usage text, a hint and a boxed panel."""

from __future__ import annotations

import pytest

from edgeattn.cli import app, run_app
from quant import train as T


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["export", "vit_tiny", "--opset", "abc"],
         "error: Invalid value for '--opset': Input should be a valid integer, unable to parse string as an integer "
         "(see 'edgeattn export -h')"),
        (["export", "vit_tiny", "--bogus"], "error: No such option: --bogus (see 'edgeattn export -h')"),
        (["export"], "error: Missing argument 'model' (see 'edgeattn export -h')"),
        (["exprt"], "error: No such command 'exprt'. Did you mean 'export'? (see 'edgeattn -h')"),
        (["--bogus"], "error: No such option: --bogus (see 'edgeattn -h')"),
        (["profiles", "shw"], "error: No such command 'shw'. Did you mean 'show'? (see 'edgeattn profiles -h')"),
        (["profiles", "show"], "error: Missing argument 'name' (see 'edgeattn profiles show -h')"),
        (["qat", "--epochs", "x"],
         "error: Invalid value for '--epochs': Input should be a valid integer, unable to parse string as an "
         "integer (see 'edgeattn qat -h')"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(capsys, argv, line):
    assert run_app(app, argv, prog_name="edgeattn") == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [line]


def test_a_group_without_its_subcommand_still_shows_its_help(capsys):
    assert run_app(app, ["profiles"], prog_name="edgeattn") == 2
    out, err = capsys.readouterr()
    assert "Usage: edgeattn profiles [OPTIONS] COMMAND" in out + err and "error:" not in out + err


def test_the_module_entry_point_reports_usage_errors_in_one_line(capsys):
    assert T.main(["--epochs", "x"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: Invalid value for '--epochs': Input should be a valid integer, unable to parse string as an integer "
        "(see 'python -m edgeattn.quant.train -h')"]
