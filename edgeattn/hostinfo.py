"""What the machine we run on is: CPU model, ISA flags, cores, runtime versions, and the profile it maps to."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from importlib import metadata
from numbers import Integral
from pathlib import Path

from pydantic import BaseModel, Field

from edgeattn.errors import EdgeAttnError

# ISA features that matter for int8/fp16 kernels on CPUs, as named in /proc/cpuinfo.
_INTERESTING_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp", "i8mm",
)

# the most intra-op threads any command accepts (qat, export, profile): far above any CPU's cores, and below what
# makes torch.set_num_threads overflow or a runtime start tens of thousands of threads
MAX_THREADS = 1024
MAX_SEED = 2**32 - 1  # numpy's seed range (torch's is wider): the --seed bound of qat and hls


def check_seed(seed: object) -> None:
    """Raise :class:`~edgeattn.errors.EdgeAttnError` unless ``seed`` is an integer (not a bool) in 0..MAX_SEED."""
    if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed <= MAX_SEED:
        raise EdgeAttnError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")

RUNTIME_PACKAGES = ("torch", "onnx", "onnxruntime", "openvino", "coremltools", "tensorrt", "brevitas", "hls4ml")


class HostInfo(BaseModel):
    """A snapshot of the host, recorded with every measurement.

    Its arithmetic peak is :func:`edgeattn.profile.system.peak_gmacs` (the one formula, with measured clock).
    """

    system: str
    machine: str
    cpu_model: str
    physical_cores: int | None
    logical_cores: int
    isa_flags: list[str] = Field(description="interesting ISA flags present")
    has_vnni: bool
    has_amx: bool
    runtimes: dict[str, str | None] = Field(description="installed version of each runtime package, or None")
    gpus: list[str] = Field(default_factory=list)
    is_jetson: bool = False
    matching_profile: str = Field(description="shipped profile that fits this machine best")
    recommended_weight_bits: int = Field(description="7 on x86 without VNNI (int8 pair saturation), else 8")
    recommended_kv_max_bits: int | None = Field(
        None,
        description="7 on x86 without VNNI, else None (no cap): K and V are the second operands of the attention "
        "matmuls, which those int8 kernels treat like weights",
    )


def _cpu_flags_and_model() -> tuple[set[str], str]:
    cpuinfo = Path("/proc/cpuinfo")
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("flags", "Features") and not flags:
                flags = set(value.split())
            elif key in ("model name", "Model", "Hardware") and value.strip():
                model = value.strip()
    elif platform.system() == "Darwin":
        model = _run(["sysctl", "-n", "machdep.cpu.brand_string"]) or model
        if platform.machine() == "arm64":
            flags = {"neon", "asimd", "asimddp", "i8mm"}
    return flags, model


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def cpu_clock_ghz() -> float | None:
    """Nominal max clock of the CPU in GHz, from sysfs or /proc/cpuinfo; None where it cannot be read."""
    sysfs = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if sysfs.exists():
        try:
            return int(sysfs.read_text().strip()) / 1e6
        except ValueError:
            pass
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000.0
    return None


def runtime_versions() -> dict[str, str | None]:
    """Installed version of each runtime package (None when absent), without importing them."""
    versions: dict[str, str | None] = {}
    for name in RUNTIME_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@functools.lru_cache(maxsize=1)
def detect_host() -> HostInfo:
    """Detect the host once per process."""
    flags, model = _cpu_flags_and_model()
    present = sorted(f for f in _INTERESTING_FLAGS if f in flags)
    has_vnni = bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)
    has_amx = "amx_tile" in flags
    machine = platform.machine().lower()
    gpus = [g for g in (_run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]) or "").splitlines() if g]
    is_jetson = Path("/etc/nv_tegra_release").exists()
    x86 = machine in ("x86_64", "amd64", "i686")
    if is_jetson:
        profile = "jetson-orin-trt10"
    elif platform.system() == "Darwin" and machine == "arm64":
        profile = "apple-a17-coreml"
    elif x86 and has_vnni:
        profile = "intel-vnni-openvino"
    elif x86:
        profile = "intel-avx2-openvino"
    else:
        profile = "host-cpu"
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:  # psutil is a dependency; keep detection usable without it
        physical = None
    return HostInfo(
        system=platform.system(),
        machine=platform.machine(),
        cpu_model=model,
        physical_cores=physical,
        logical_cores=os.cpu_count() or 1,
        isa_flags=present,
        has_vnni=has_vnni,
        has_amx=has_amx,
        runtimes=runtime_versions(),
        gpus=gpus,
        is_jetson=is_jetson,
        matching_profile=profile,
        recommended_weight_bits=7 if (x86 and not has_vnni) else 8,
        recommended_kv_max_bits=7 if (x86 and not has_vnni) else None,
    )
