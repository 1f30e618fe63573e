"""The machine a measurement ran on, and its arithmetic peak for a precision.

Built on :func:`edgeattn.hostinfo.detect_host`; this module adds the clock's source, memory figures and a
peak that states its own arithmetic (FMA units x SIMD lanes x MACs per lane x cores x clock).
"""

from __future__ import annotations

import functools
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from edgeattn.hostinfo import HostInfo, cpu_clock_ghz, detect_host
from edgeattn.profile.schema import SystemRecord


def clock_source() -> str:
    """Where :func:`edgeattn.hostinfo.cpu_clock_ghz` read the clock from."""
    if Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").exists():
        return "sysfs cpuinfo_max_freq (nominal max)"
    if Path("/proc/cpuinfo").exists():
        return "/proc/cpuinfo 'cpu MHz' (current clock; no cpufreq in this VM/container)"
    return "unknown"


# A chain of dependent integer adds retires one add per cycle on every x86-64 and ARMv8 core, so
# adds per second is the clock the core actually runs at (turbo included), which the nominal
# clock in /proc/cpuinfo of a VM does not tell. Many ~1 ms bursts, best one kept: a neighbour
# sharing the core slows some bursts, rarely all of them.
_CLOCK_C = r"""
#include <stdio.h>
#include <stdint.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#if defined(__x86_64__)
#define A "add $1,%0\n\t"
#elif defined(__aarch64__)
#define A "add %0,%0,#1\n\t"
#endif
#define A10 A A A A A A A A A A
int main(void){
  uint64_t x=0; const long iters=40000; double best=0;
  for(int rep=0;rep<60;rep++){
    double t0=now();
    for(long i=0;i<iters;i++){ __asm__ volatile(A10 A10 A10 A10 A10 A10 A10 A10 A10 A10 : "+r"(x)); }
    double ghz=iters*100.0/(now()-t0)/1e9; if(ghz>best) best=ghz;
  }
  printf("%.4f\n", best + (double)(x & 0));
  return 0;
}
"""


@functools.lru_cache(maxsize=1)
def measured_clock_ghz() -> float | None:
    """The clock one core actually runs at, timed with a dependent-add chain (needs a C compiler).

    Returns None where no compiler is found or the CPU is neither x86-64 nor aarch64.
    """
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None or platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        return None
    with tempfile.TemporaryDirectory(prefix="edgeattn-clock-") as tmp:
        src, exe = Path(tmp) / "clock.c", Path(tmp) / "clock"
        src.write_text(_CLOCK_C)
        try:
            subprocess.run([cc, "-O1", "-o", str(exe), str(src)], check=True, capture_output=True, timeout=30)
            out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=30).stdout
            return float(out.strip())
        except (OSError, subprocess.SubprocessError, ValueError):
            return None


def peak_clock_ghz() -> tuple[float | None, str]:
    """The clock used for peaks: measured when possible (turbo), else the nominal one; and its source."""
    measured = measured_clock_ghz()
    nominal = cpu_clock_ghz()
    if measured and (nominal is None or measured >= nominal):
        return measured, "measured (dependent-add chain, 1 add/cycle)"
    # below nominal means the timing core was shared (or throttled): the nominal clock is the better peak
    return nominal, clock_source() + (f"; measured {measured:.2f} GHz was lower" if measured else "")


def system_record(host: HostInfo | None = None) -> SystemRecord:
    """A :class:`SystemRecord` of this process's host."""
    host = host or detect_host()
    return SystemRecord(
        cpu_model=host.cpu_model,
        isa_flags=host.isa_flags,
        physical_cores=host.physical_cores,
        logical_cores=host.logical_cores,
        clock_ghz=peak_clock_ghz()[0],
        clock_source=peak_clock_ghz()[1],
        nominal_clock_ghz=cpu_clock_ghz(),
        system=host.system,
        machine=host.machine,
        gpus=host.gpus,
        runtimes=host.runtimes,
        python=sys.version.split()[0],
        hostname=socket.gethostname(),
        load_average=load_average(),
    )


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return []


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024


def current_rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / (1024 * 1024)


def peak_gmacs(
    precision: str, threads: int | None = None, host: HostInfo | None = None
) -> tuple[float | None, str]:
    """Arithmetic peak in GMAC/s for ``precision`` on the cores used, with the formula spelt out.

    Lanes are 32-bit SIMD lanes (16 with AVX-512, 8 with AVX2, 4 with NEON/SSE); two FMA pipes per core.
    MACs per 32-bit lane per instruction: fp32 1; bf16 2 with AVX512_BF16 (vdpbf16ps), else 1; fp16 2 with
    AVX512_FP16 (or on ARM), else 1 (computed in fp32); int8 4 with VNNI (vpdpbusd) or ARM dot product, else 2
    (vpmaddubsw + vpmaddwd: two instructions for four MACs). ``threads`` limits the cores counted.
    """
    host = host or detect_host()
    clock, source = peak_clock_ghz()
    if clock is None:
        return None, "clock unknown"
    flags = set(host.isa_flags)
    arm = host.machine.lower() in ("arm64", "aarch64")
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    per_lane = {
        "fp32": 1,
        "bf16": 2 if "avx512_bf16" in flags else 1,
        "fp16": 2 if ("avx512_fp16" in flags or arm) else 1,
        "int8": 4 if (host.has_vnni or "asimddp" in flags) else 2,
    }.get(precision, 1)
    cores = host.physical_cores or host.logical_cores
    if threads:
        cores = min(cores, threads)
    fma = 2
    peak = fma * lanes * per_lane * cores * clock
    formula = (
        f"{fma} FMA x {lanes} lanes x {per_lane} MAC/lane ({precision}) x {cores} cores x {clock:.3f} GHz"
        f" = {peak:.1f} GMAC/s (clock {source})"
    )
    return peak, formula


def mixed_peak_gmacs(
    macs_by_precision: dict[str, int], threads: int | None = None, host: HostInfo | None = None
) -> tuple[float | None, str, str]:
    """The peak for MACs that ran in several precisions: ``(peak, formula, precision label)``.

    Every MAC at its own precision's peak takes ``sum_p(MACs_p / peak_p)`` seconds, so the peak of the whole
    is ``sum_p MACs_p / sum_p(MACs_p / peak_p)``, the MAC-weighted harmonic mean. One precision: that
    precision's :func:`peak_gmacs`. The label is the precision, or ``mixed`` when there are several.
    """
    used = {p: m for p, m in macs_by_precision.items() if m > 0}
    if not used:
        raise ValueError("no MACs to weight the peak by")
    host = host or detect_host()
    peaks = {p: peak_gmacs(p, threads, host) for p in sorted(used, key=lambda p: -used[p])}
    if len(peaks) == 1:
        (precision, (peak, formula)), = peaks.items()
        return peak, formula, precision
    if any(peak is None for peak, _ in peaks.values()):
        return None, "clock unknown", "mixed"
    total = sum(used.values())
    peak = total / sum(used[p] / pk for p, (pk, _) in peaks.items())
    terms = " + ".join(f"{used[p] / total:.3f}/{pk:.1f}" for p, (pk, _) in peaks.items())
    parts = "; ".join(f"{p}: {formula}" for p, (_, formula) in peaks.items())
    formula = f"MAC-weighted: 1 / ({terms}) = {peak:.1f} GMAC/s (MAC share/peak per precision; {parts})"
    return peak, formula, "mixed"
