"""``ExportReport``: what one export run produced and measured, written as ``OUT_DIR/report.json``."""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from edgeattn.atomic import write_text_atomic
from edgeattn.errors import EdgeAttnError

__all__ = [
    "EXIT_CODES",
    "ExportReport",
    "LintFailure",
    "ParityFailure",
    "backend_error",
    "cosine_count",
    "environment",
    "error_line",
    "top1_count",
    "write_report",
]

# Exit codes of `edgeattn export` (documented in docs/export.md).
EXIT_CODES = {
    0: "exported, every parity gate passed",
    2: "bad input: unknown target/profile, a profile for another target, a flag the target ignores, bad flag value",
    3: "parity gate failed (the artifact is written under a name that says so)",
    4: "a backend package is missing (the message names the pip extra)",
    5: "the target cannot run an op of the model (a TensorRT lint error writes report.json), or the exporter failed"
    " (node, op and profile named)",
    6: "the output directory exists (use --force)",
    7: "the checkpoint is unreadable or belongs to another model",
}


@dataclass
class ExportReport:
    """Everything report.json holds; ``passed`` is the AND of every parity gate that ran."""

    model: str
    target: str
    precision: str
    profile: dict[str, Any]
    out_dir: str
    # a trained model (checkpoint or in-memory module): its path, the quant config it was trained with ("float"
    # for a float one), the bits its quantizers hold, whether the profile's quant applies and, for a token-adaptive
    # model exported stripped, how far stripping moved its outputs (token_adaptive_gap). None: registry model
    checkpoint: dict[str, Any] | None = None
    # the settings this run used where a flag can override the profile (opset as written in the ONNX file,
    # exporter, batch, dynamic batch, runtime threads, OpenVINO ISA cap, noise floor on/off, input seed)
    settings: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    node_counts: dict[str, int] = field(default_factory=dict)
    qdq: dict[str, Any] | None = None
    lint: list[dict[str, Any]] = field(default_factory=list)
    attention_fusion: list[dict[str, Any]] = field(default_factory=list)
    trtexec: str | None = None
    kernels: dict[str, Any] | None = None
    coreml: dict[str, Any] | None = None
    parity: list[dict[str, Any]] = field(default_factory=list)
    parity_inputs: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    passed: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)

    def model_dump(self, mode: str = "json") -> dict[str, Any]:  # lets _common.write_json serialise it
        return self.to_dict()

    def summary(self) -> str:
        """One line per parity comparison, for the console (the figures of report.json's ``parity``)."""
        lines = []
        for p in self.parity:
            status = "ok" if p["passed"] else "FAILED"
            if p["passed"] and p.get("passed_profile_tolerance") is False:
                status = "ok (within the rounding noise floor)"
            lines.append(
                f"{p['runtime']:<28} max|err|/range {p['max_abs_rel_range']:.2e}  cos {p['cosine']:.6f}"
                f"{cosine_count(p)}  top1 {p['top1']:.3f}{top1_count(p)}  {status}"
            )
        return "\n".join(lines)


def top1_count(parity: dict[str, Any]) -> str:
    """`` (62/64 stable samples)`` when the noise floor left samples out of a comparison's ``top1``, else ``""``
    (also for reports written before the count was recorded)."""
    counted, total = parity.get("top1_samples"), parity.get("top1_of")
    if counted is None or total is None or counted >= total:
        return ""
    return f" ({counted}/{total} stable samples)"


def cosine_count(parity: dict[str, Any]) -> str:
    """`` (31/32 samples clear of noise)`` when the noise floor left near-zero samples out of a comparison's
    smallest ``cosine``, else ``""`` (also for reports written before the count was recorded)."""
    counted, total = parity.get("cosine_samples"), parity.get("cosine_of")
    if counted is None or total is None or counted >= total:
        return ""
    return f" ({counted}/{total} samples clear of noise)"


class ParityFailure(EdgeAttnError):
    """A parity gate failed; ``report`` holds the figures (report.json is already written)."""

    exit_code = 3

    def __init__(self, message: str, report: ExportReport) -> None:
        super().__init__(message)
        self.report = report


class LintFailure(ParityFailure):
    """The TensorRT lint found errors: report.json (every finding in ``lint``) is written, no artifact is
    published (exit code 5). A :class:`ParityFailure` so that callers keep and write its report the same way."""

    exit_code = 5


def error_line(exc: BaseException, limit: int = 300) -> str:
    """The telling part of a converter's or runtime's error, on one line.

    OpenVINO leads its messages with source locations (``Exception from src/...cpp:84:``, ``Check 'false'
    failed at ...``) and section headers (``Summary:``); those lines are dropped, the rest joined.
    """
    lines = []
    for raw in str(exc).splitlines():
        line = raw.strip().lstrip("-").strip()
        if not line or line.endswith(":") or line.startswith(("Exception from ", "Check '")):
            continue
        lines.append(line)
    first = next((raw.strip() for raw in str(exc).splitlines() if raw.strip()), "")
    text = " ".join(lines) or first or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def backend_error(target: str, exc: BaseException) -> EdgeAttnError:
    """``exc`` from a target's converter or runtime as ``<target>: <error_line>`` with exit code 5."""
    if isinstance(exc, EdgeAttnError):
        return exc
    return EdgeAttnError(f"{target}: {error_line(exc)}", exit_code=5)


def environment() -> dict[str, Any]:
    """Versions of Python, the runtimes and the host CPU, recorded in every report."""
    from edgeattn.hostinfo import detect_host

    host = detect_host()
    try:
        own = metadata.version("edgeattn")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        own = None
    return {
        "edgeattn": own,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": host.cpu_model,
        "has_vnni": host.has_vnni,
        "isa_flags": host.isa_flags,
        "runtimes": host.runtimes,
    }


def write_report(path: str | Path, report: ExportReport) -> Path:
    """Write ``report`` as pretty JSON atomically (temp file + rename)."""
    return write_text_atomic(path, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
