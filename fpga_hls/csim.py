"""C simulation without Vitis: compile the generated test bench with g++ and the Xilinx ``ap_types`` headers.

The Apache-2.0 ``ap_types`` headers are the ones shipped inside the ``hls4ml`` wheel (found through its
package path; nothing is vendored here). :func:`run_csim` compiles ``firmware/edgeattn_top.cpp`` and
``tb/edgeattn_tb.cpp``, runs the test bench in the project folder, and writes ``csim_report.json``: bit
mismatches against the fixed-point golden model and the error of the fixed-point outputs against the float
PyTorch model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError, MissingBackendError

__all__ = ["find_ap_types", "find_compiler", "compile_testbench", "run_csim"]


def find_ap_types() -> Path:
    """The folder holding ``ap_fixed.h`` (from the hls4ml wheel), or :class:`MissingBackendError`."""
    env = os.environ.get("EDGEATTN_AP_TYPES")
    if env:  # an explicit choice is used alone, so a wrong path is reported rather than silently bypassed
        if (Path(env) / "ap_fixed.h").is_file():
            return Path(env)
        raise MissingBackendError(
            f"EDGEATTN_AP_TYPES={env} holds no ap_fixed.h (the Xilinx ap_types headers)"
        )
    try:
        from importlib.util import find_spec

        spec = find_spec("hls4ml")
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        cand = Path(loc) / "templates" / "vivado" / "ap_types"
        if (cand / "ap_fixed.h").is_file():
            return cand
    raise MissingBackendError(
        "the Xilinx ap_types headers were not found: install hls4ml (pip install 'edgeattn[hls]') "
        "or set EDGEATTN_AP_TYPES to a folder holding ap_fixed.h"
    )


def find_compiler(cxx: str | None = None) -> str:
    """Path of the C++ compiler (``cxx``, ``$CXX`` or ``g++``), or :class:`MissingBackendError`."""
    name = cxx or os.environ.get("CXX") or "g++"
    path = shutil.which(name)
    if path is None:
        raise MissingBackendError(f"C++ compiler '{name}' not found on PATH; install g++ or set CXX")
    return path


def _check_timeout(timeout: Any, where: str) -> None:
    """EdgeAttnError unless ``timeout`` (seconds) is a finite number > 0 (-1 would report "took longer than -1 s")."""
    from edgeattn.models._checks import check_positive_number

    try:
        check_positive_number(where, timeout=timeout)
    except ValueError as exc:
        raise EdgeAttnError(f"{exc} (seconds)") from None


def compile_testbench(project_dir: str | Path, *, cxx: str | None = None, timeout: float = 300.0) -> Path:
    """Compile the project's test bench; return the executable (under ``PRJ/build/``). ``timeout``: seconds > 0."""
    from edgeattn.fpga_hls.generator import as_path

    _check_timeout(timeout, "compile_testbench")
    prj = as_path(project_dir, "project_dir").resolve()  # the test bench runs with cwd=prj
    for rel in (
        "firmware/edgeattn_top.cpp",
        "tb/edgeattn_tb.cpp",
        "firmware/parameters.h",
        "tb_data/tb_input.dat",
    ):
        if not (prj / rel).is_file():
            raise EdgeAttnError(f"{prj} is not an edgeattn HLS project: {rel} is missing")
    compiler = find_compiler(cxx)
    ap_types = find_ap_types()
    build = prj / "build"
    build.mkdir(exist_ok=True)
    exe = build / "csim.exe"
    fd, tmp = tempfile.mkstemp(dir=build, prefix=".csim.", suffix=".exe")
    os.close(fd)
    cmd = [
        compiler,
        "-O3",  # -O2 leaves the 65-bit ap_private adds of the MAC accumulator out of line: 25% slower runs
        "-std=c++14",
        "-w",
        "-I",
        str(ap_types),
        str(prj / "firmware/edgeattn_top.cpp"),
        str(prj / "tb/edgeattn_tb.cpp"),
        "-o",
        tmp,
    ]
    try:
        proc = _run(cmd, timeout)
    except subprocess.TimeoutExpired:
        Path(tmp).unlink(missing_ok=True)
        raise EdgeAttnError(f"compiling {prj} took longer than {timeout:.0f} s") from None
    if proc.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:300])
        raise EdgeAttnError(f"g++ failed on {prj}: {first}", exit_code=3)
    os.replace(tmp, exe)
    return exe


def _run(cmd: list[str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``subprocess.run`` whose whole process group dies with it.

    ``g++`` forks ``cc1plus``: on a timeout or a Ctrl-C, killing only the driver (what ``subprocess.run`` does)
    would leave the compiler running, writing into a project folder that is being removed.
    """
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _read_rows(path: Path, skip_header: bool = False) -> np.ndarray:
    with open(path, encoding="ascii") as fh:
        if skip_header:
            fh.readline()
        return np.loadtxt(fh, ndmin=2)


def run_csim(
    project_dir: str | Path, *, cxx: str | None = None, timeout: float = 300.0, write_report: bool = True
) -> dict[str, Any]:
    """Compile and run the C simulation of a generated project; return (and write) ``csim_report.json``.

    Keys: ``mismatches`` (outputs that differ from the golden model, bit for bit), ``vectors``, ``outputs``,
    ``max_abs_err_vs_float``, ``cosine_vs_float`` (vs ``reference``: the float model, or a quantized model's
    weights with float activations or its fake-quant model, as ``reference_kind`` says),
    ``golden_max_abs_err_vs_float``,
    ``approx_max_abs_err_vs_float`` (the softmax/GELU approximations' share, in float), ``vectors_source``,
    ``gate`` (the accuracy gate of project.json's tolerance on these outputs), ``compile_s``, ``run_s``,
    ``top``, ``attn_parallel``, ``estimate`` (from project.json). ``timeout``: seconds > 0 for the compile and
    for the run, each.
    """
    from edgeattn.fpga_hls.gate import gate_result, resolve_tolerance
    from edgeattn.fpga_hls.generator import as_path, compare

    _check_timeout(timeout, "run_csim")
    prj = as_path(project_dir, "project_dir").resolve()  # the test bench runs with cwd=prj
    t0 = time.perf_counter()
    exe = compile_testbench(prj, cxx=cxx, timeout=timeout)
    t1 = time.perf_counter()
    results = prj / "tb_data/csim_results.dat"
    results.unlink(missing_ok=True)
    try:
        proc = _run([str(exe)], timeout, cwd=prj)
    except subprocess.TimeoutExpired:
        raise EdgeAttnError(f"the C simulation of {prj} took longer than {timeout:.0f} s") from None
    t2 = time.perf_counter()
    summary = next((ln for ln in proc.stdout.splitlines() if ln.startswith("EDGEATTN_CSIM")), "")
    if proc.returncode not in (0, 1) or "error=" in summary or not results.is_file():
        raise EdgeAttnError(
            f"the C simulation of {prj} failed (exit {proc.returncode}): {summary or proc.stderr[:300]}"
        )

    meta = json.loads((prj / "project.json").read_text(encoding="utf-8"))
    frac = meta["formats"]["act_width"] - meta["formats"]["act_int"]
    got = _read_rows(results).astype(np.int64)
    gold = _read_rows(prj / "tb_data/tb_golden.dat").astype(np.int64)
    ref = _read_rows(prj / "tb_data/tb_float.dat")
    if got.shape != gold.shape:
        raise EdgeAttnError(f"the C simulation wrote {got.shape} outputs, the golden model has {gold.shape}")
    vs_float = compare(got * 2.0**-frac, ref)
    # the project's accuracy gate on the C simulation's outputs (a project written before the gate: the defaults)
    tol = (meta.get("gate") or {}).get("tolerance") or {}
    gate = gate_result(got * 2.0**-frac, ref, resolve_tolerance(None, tol.get("max_abs"), tol.get("min_cosine")))
    report = {
        "project": str(prj),
        "model": meta["model"],
        "top": meta["top"],
        "layer": meta["layer"],
        "attn_parallel": meta["stats"]["attn_parallel"],
        "vectors": int(got.shape[0]),
        "outputs": int(got.size),
        "mismatches": int(np.count_nonzero(got != gold)),
        # what tb_float.dat holds: "the float model" or a fake-quant one (project.json "reference")
        "reference": meta.get("reference", "the float model"),
        # "design" or "checkpoint" (the --reference option); None for a project generated before it existed
        "reference_kind": meta.get("reference_kind"),
        "max_abs_err_vs_float": vs_float["max_abs_err"],
        "cosine_vs_float": vs_float["cosine"],
        "float_max_abs": vs_float["ref_max_abs"],
        "golden_max_abs_err_vs_float": meta["golden_vs_float"]["max_abs_err"],
        "golden_cosine_vs_float": meta["golden_vs_float"]["cosine"],
        # None for a project generated before this field existed
        "approx_max_abs_err_vs_float": meta.get("approx_vs_float", {}).get("max_abs_err"),
        "score_saturated": meta["stats"]["score_saturated"],
        "vectors_source": meta.get("vectors_source"),
        "gate": gate,
        "compile_s": round(t1 - t0, 3),
        "run_s": round(t2 - t1, 3),
        "testbench_summary": summary,
        "estimate": meta["estimate"],
    }
    if write_report:
        from edgeattn.cli._common import write_json

        write_json(prj / "csim_report.json", report)
    return report
