"""Every command in the README runs, verbatim, in order, in a scratch folder (what a new user would type).

`make test` is what CI runs (a test cannot run its own suite again), and `make demo` is `edgeattn demo`
behind the virtual-environment set-up: tests/test_demo.py runs the demo itself.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
COVERED_ELSEWHERE = {"make demo": "tests/test_demo.py", "make test": ".ci/run"}


def readme_commands() -> list[str]:
    """Commands in the README's ```bash blocks, one per line, trailing comments removed."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


COMMANDS = readme_commands()


def test_readme_has_the_two_commands_and_ci_calls_the_test_one():
    assert COMMANDS[:2] == ["make demo", "make test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M)
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:.*\n\t\$\(BIN\)/edgeattn demo ", makefile, flags=re.M)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in COVERED_ELSEWHERE])
def test_readme_command_runs(command: str, workdir: Path):
    argv = shlex.split(command)
    assert argv[0] == "edgeattn", f"README command not run by this test: {command}"
    env = dict(os.environ, COLUMNS="120", OMP_NUM_THREADS="2")
    result = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=workdir, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    for token in argv:  # every output the command names exists afterwards
        if token.endswith((".json", ".png")):
            assert (workdir / token).is_file(), token


def _profile_table() -> dict[str, list[str]]:
    """The README's device profile table: ``{profile name: [target, runtime, precision, W/A bits, notes]}``."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Device profiles", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_readme_profile_table_matches_the_shipped_profiles():
    from edgeattn.device_profile import load_profile, shipped_profile_names

    rows = _profile_table()
    assert set(rows) == set(shipped_profile_names())
    for name, (targets, _runtime, precision, bits, notes) in rows.items():
        prof = load_profile(name)
        assert targets == ", ".join(prof.targets), name
        assert precision == prof.precision, name
        # host-cpu's weight bits follow the CPU it runs on
        expected = f"7 or 8 / {prof.quant.act_bits}" if name == "host-cpu" else (
            f"{prof.quant.weight_bits}/{prof.quant.act_bits}"
        )
        assert bits == expected, name
        if prof.hls is not None:  # the HLS datapath's widths, as the generated C++ takes them
            for fmt in (prof.hls.weight, prof.hls.act):
                assert f"ap_fixed<{fmt.width},{fmt.integer}>" in notes, name
