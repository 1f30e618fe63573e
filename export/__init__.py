"""edgeattn.export: ONNX, TensorRT, OpenVINO and Core ML writers, lint rules and the parity gate.

Entry points: :func:`export_model` and, for several targets in one run, :func:`export_all`
(``edgeattn.export.api``, the run; behind it ``sources`` (model resolution and its checks), ``inputs`` (parity
inputs, PTQ calibration data, argument checks) and ``runners`` (the per-target runners and gates)).
Modules: ``onnx_export`` (clean ONNX), ``lowering`` (dynamo graphs below opset 18),
``qdq`` (Q/DQ clean-up), ``lint`` (TensorRT rules, attention fusion), ``tensorrt_target``,
``openvino_target``, ``coreml_target``, ``mil_eval`` (numpy evaluator of saved mlprograms), ``parity``,
``report``. Heavy runtimes are imported inside functions.
"""

from __future__ import annotations

from edgeattn.export.api import DEFAULT_PROFILES, TARGETS, export_all, export_model
from edgeattn.export.report import EXIT_CODES, ExportReport, LintFailure, ParityFailure

__all__ = [
    "DEFAULT_PROFILES",
    "EXIT_CODES",
    "TARGETS",
    "ExportReport",
    "LintFailure",
    "ParityFailure",
    "export_all",
    "export_model",
]
