"""Packaging: the package-dir mapping lists every package, and a wheel ships profiles and HLS sources."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAPPING = {
    "edgeattn": "edgeattn",
    "edgeattn.quant": "quant",
    "edgeattn.export": "export",
    "edgeattn.fpga_hls": "fpga_hls",
    "edgeattn.profiles": "profiles",
}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_python_floor_matches_readme_and_this_suite():
    """requires-python is honest: this suite needs tomllib (3.11), and README states the same floor."""
    from packaging.specifiers import SpecifierSet  # pytest's own dependency

    spec = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert "3.10" not in spec and "3.11" in spec
    assert "Python 3.11+" in (REPO / "README.md").read_text()


def test_brevitas_is_capped_to_the_tested_minor():
    """quant/ uses brevitas internals: the pin must stop before the next minor and admit the installed one."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    deps = [Requirement(d) for d in _pyproject()["project"]["dependencies"]]
    spec = next(r.specifier for r in deps if r.name == "brevitas")
    assert version("brevitas") in spec and "0.14.0" not in spec


def test_every_package_directory_is_listed():
    setuptools_cfg = _pyproject()["tool"]["setuptools"]
    assert setuptools_cfg["package-dir"] == MAPPING
    found = set()
    for package, folder in MAPPING.items():
        for init in (REPO / folder).rglob("__init__.py"):
            if "templates" in init.parts:
                continue
            rel = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((package, *rel)))
    assert found == set(setuptools_cfg["packages"])


def test_no_generic_top_level_modules_installed():
    import edgeattn.export
    import edgeattn.fpga_hls
    import edgeattn.quant

    assert Path(edgeattn.quant.__file__).parent == REPO / "quant"
    assert Path(edgeattn.export.__file__).parent == REPO / "export"
    assert Path(edgeattn.fpga_hls.__file__).parent == REPO / "fpga_hls"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    return next(out.glob("edgeattn-*.whl"))


def test_wheel_ships_profiles_and_mapped_packages(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for profile in (REPO / "profiles").glob("*.yaml"):
        assert f"edgeattn/profiles/{profile.name}" in names
    for package in ("quant", "export", "fpga_hls"):
        assert f"edgeattn/{package}/__init__.py" in names
    assert not any(n.startswith(("quant/", "export/", "fpga_hls/", "profiles/")) for n in names)
    templates = [p for p in (REPO / "fpga_hls" / "templates").rglob("*") if p.is_file()]
    for path in templates:
        assert f"edgeattn/fpga_hls/{path.relative_to(REPO / 'fpga_hls').as_posix()}" in names


def test_installed_wheel_loads_profiles(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    # -S: skip site so the editable install's finder cannot answer; dependencies come from site-packages.
    code = (
        "import sys; sys.path[:0] = [sys.argv[1]]; sys.path.append(sys.argv[2]);"
        "import edgeattn, edgeattn.quant;"
        "assert edgeattn.__file__.startswith(sys.argv[1]), edgeattn.__file__;"
        "from edgeattn.device_profile import load_profile; print(load_profile('zcu102-hls').hls.part)"
    )
    site = sysconfig.get_paths()["purelib"]
    result = subprocess.run(
        [sys.executable, "-S", "-c", code, str(target), site], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "xczu9eg-ffvb1156-2-e"
